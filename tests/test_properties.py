"""Property-based tests over every attention module (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attnres.attention import (
    SKConv, SplitAttnConv2d, create_attention, iter_gates, list_attention)

MAX_ELEMENTS = 1 << 19  # keeps each example small enough for 2 CPU cores

shapes = st.tuples(st.integers(1, 4), st.integers(1, 2048), st.integers(1, 64),
                   st.integers(1, 64))


def run_checked(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Forward `x`, returning the gate values every gate module (as the registry names
    them) produced."""
    gates: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: gates.append(out.detach()))
               for _, _, m, _ in iter_gates(module)]
    try:
        with torch.no_grad():
            y = module(x)
    finally:
        for h in handles:
            h.remove()
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    return gates


@pytest.mark.parametrize("name", list_attention())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, training=st.booleans(), channels_last=st.booleans(),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_gates_keep_shape_finite_and_bounded(name, shape, training, channels_last,
                                             scale) -> None:
    b, c, h, w = shape
    assume(b * c * h * w <= MAX_ELEMENTS)
    torch.manual_seed(0)
    module = create_attention(name, c).train(training)
    x = torch.randn(b, c, h, w) * scale
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gates = run_checked(module, x)
    assert gates, f"{name}: no gate module ran"
    for g in gates:
        assert torch.isfinite(g).all()
        assert g.min() >= 0 and g.max() <= 1


@pytest.mark.parametrize("kind", ["sk", "splat"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]), mult=st.integers(1, 16),
       hw=st.tuples(st.integers(1, 32), st.integers(1, 32)), training=st.booleans(),
       channels_last=st.booleans())
def test_attention_convs_shape_and_weights(kind, b, groups, mult, hw, training,
                                           channels_last) -> None:
    c = groups * mult * 2
    torch.manual_seed(0)
    module = (SKConv(c, c, groups=groups) if kind == "sk"
              else SplitAttnConv2d(c, c, groups=groups)).train(training)
    x = torch.randn(b, c, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = module(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        feats = (torch.stack([br(x) for br in module.branches], 1) if kind == "sk"
                 else module.act0(module.bn0(module.conv(x))).view(b, 2, c, *hw))
        weights = (module.branch_weights(feats) if kind == "sk"
                   else module.split_weights(feats))
    assert weights.min() >= 0 and weights.max() <= 1
    torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)))
