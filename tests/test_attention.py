"""Attention modules against the papers' formulas, computed independently with functional ops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnres.attention import (
    BAM, CBAM, SKConv, SplitAttnConv2d, SqueezeExcite, attention_spec, create_attention,
    iter_gates, list_attention)
from attnres.attention.registry import GATE_SHAPES
from attnres.attention.eca import EfficientChannelAttention, eca_kernel_size

torch.manual_seed(0)


def randomize_norms(module: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN matters."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def bn_eval(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def test_registry_names_and_errors() -> None:
    names = list_attention()
    assert names == sorted(names) and {"bam", "cbam", "coord", "eca", "se"} <= set(names)
    assert all(attention_spec(n).kind == "gate" for n in names)
    convs = list_attention("conv")
    assert {"sk", "splat"} <= set(convs) and not set(convs) & set(names)
    assert sorted(names + convs) == list_attention(None)
    with pytest.raises(ValueError, match=r"'cbma'.*did you mean 'cbam'.*allowed: bam, cbam"):
        create_attention("cbma", 8)
    with pytest.raises(ValueError, match="channels=0"):
        create_attention("se", 0)


def test_convolution_replacements_are_reached_by_name_through_the_registry() -> None:
    """SKConv and SplitAttnConv2d (the README's module table) are registered as convolution
    replacements: their class names and registry names find them, and create_attention,
    which makes gates, says how to build them instead of listing only the gates."""
    for cls in (SKConv, SplitAttnConv2d):
        spec = attention_spec(cls.__name__)
        assert spec.cls is cls and spec.kind == "conv" and spec.name in list_attention("conv")
        assert attention_spec(spec.name) is spec
        with pytest.raises(ValueError) as info:
            create_attention(cls.__name__, 64)
        message = str(info.value)
        assert "replaces a convolution" in message and f"{cls.__name__}(in_channels" in message
        assert "\n" not in message
        # the architectures it names are exactly the models that contain this module
        import attnres

        users = [arch for arch in attnres.list_models() if arch in ("skresnet50", "resnest50")
                 and any(isinstance(m, cls) for m in attnres.build_model(arch).modules())]
        assert list(spec.architectures) == users and f"({', '.join(users)})" in message
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in list_attention("conv"):
        cls = attention_spec(name).cls.__name__
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{cls}` |"))
        assert f"`{name}`" in row, row  # the table names how to reach it by name


def test_se_matches_formula() -> None:
    x = torch.randn(2, 32, 5, 6)
    m = SqueezeExcite(32).eval()
    fc1, fc2 = m.gate.fc1, m.gate.fc2
    assert fc1.out_features == 2 and fc1.bias is not None  # r = 16, biased FCs (paper)
    s = F.adaptive_avg_pool2d(x, 1).flatten(1)
    g = torch.sigmoid(F.linear(F.relu(F.linear(s, fc1.weight, fc1.bias)), fc2.weight, fc2.bias))
    torch.testing.assert_close(m(x), x * g[:, :, None, None])


def reference_channel_gate(x, fc1, fc2, pools):
    h, w = x.shape[2:]
    descriptors = {
        "avg": F.adaptive_avg_pool2d(x, 1).flatten(1),
        "max": F.adaptive_max_pool2d(x, 1).flatten(1),
        "lp": F.lp_pool2d(x, 2, (h, w)).flatten(1),
        "lse": (lambda f: f.max(2).values + (f - f.max(2, keepdim=True).values).exp().sum(2).log())(
            x.flatten(2)),
    }
    logits = sum(F.linear(F.relu(F.linear(descriptors[p], fc1.weight, fc1.bias)), fc2.weight,
                          fc2.bias) for p in pools)
    return torch.sigmoid(logits)[:, :, None, None]


def reference_spatial_gate(x, conv, norm):
    pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)  # paper
    y = F.conv2d(pooled, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2)
    if isinstance(norm, torch.nn.BatchNorm2d):
        y = bn_eval(y, norm)
    return torch.sigmoid(y)


@pytest.mark.parametrize("pools", [("avg", "max"), ("avg",), ("max",), ("avg", "max", "lp", "lse")])
@pytest.mark.parametrize("order", ["channel-first", "spatial-first", "parallel"])
@pytest.mark.parametrize("kernel_size,spatial_norm,mlp_bias", [(7, None, False), (3, "batch", True)])
def test_cbam_matches_paper(pools, order, kernel_size, spatial_norm, mlp_bias) -> None:
    x = torch.randn(2, 48, 7, 5)
    m = CBAM(48, pool_types=pools, order=order, kernel_size=kernel_size,
             spatial_norm=spatial_norm, mlp_bias=mlp_bias)
    randomize_norms(m)
    m.eval()
    cg, sg = m.channel_gate, m.spatial_gate
    assert cg.fc1.out_features == 3 and (cg.fc1.bias is not None) == mlp_bias
    assert sg.conv.kernel_size == (kernel_size, kernel_size)
    assert (sg.conv.bias is None) == (spatial_norm == "batch")

    def mc(t):
        return reference_channel_gate(t, cg.fc1, cg.fc2, pools)

    def ms(t):
        return reference_spatial_gate(t, sg.conv, sg.norm)

    if order == "channel-first":
        y = x * mc(x)
        expected = y * ms(y)
    elif order == "spatial-first":
        y = x * ms(x)
        expected = y * mc(y)
    else:
        expected = x * mc(x) * ms(x)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


def test_cbam_channel_only_and_spatial_only() -> None:
    x = torch.randn(2, 16, 4, 4)
    c = CBAM(16, spatial=False).eval()
    torch.testing.assert_close(c(x), x * reference_channel_gate(
        x, c.channel_gate.fc1, c.channel_gate.fc2, ("avg", "max")))
    s = CBAM(16, channel=False).eval()
    torch.testing.assert_close(s(x), x * reference_spatial_gate(x, s.spatial_gate.conv, None))
    assert sum(p.numel() for p in s.parameters()) == 2 * 49 + 1
    with pytest.raises(ValueError, match="no gate"):
        CBAM(16, channel=False, spatial=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pool_types=("avg", "median")), "pool_types"),
    (dict(kernel_size=4), "kernel_size=4"),
    (dict(order="sideways"), "order='sideways'"),
    (dict(spatial_norm="group"), "spatial_norm='group'"),
    (dict(reduction=0), "reduction=0"),
])
def test_cbam_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        CBAM(16, **kwargs)


@pytest.mark.parametrize("channels", [1, 3, 15, 16, 17])
def test_hidden_width_at_least_one(channels) -> None:
    for name in ("se", "cbam", "bam"):
        m = create_attention(name, channels)
        widths = [mod.out_features for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        assert min(widths) >= 1 and min(widths) == max(1, channels // 16)


def test_eca_kernel_size_from_paper() -> None:
    # psi(C) = |log2(C)/gamma + b/gamma|_odd with gamma=2, b=1, worked by hand.
    for c, k in {64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7, 16: 3}.items():
        assert eca_kernel_size(c) == k, c


def test_eca_matches_formula() -> None:
    x = torch.randn(2, 256, 4, 3)
    m = EfficientChannelAttention(256).eval()
    w = m.gate.conv.weight.view(-1)
    k = w.numel()
    assert k == 5
    s = x.mean((2, 3))
    padded = F.pad(s, ((k - 1) // 2, (k - 1) // 2))
    logits = torch.stack([(padded[:, c:c + k] * w).sum(1) for c in range(256)], 1)
    torch.testing.assert_close(m(x), x * torch.sigmoid(logits)[:, :, None, None])


def test_bam_matches_paper_sum_not_product() -> None:
    x = torch.randn(2, 64, 9, 9)
    m = BAM(64)
    randomize_norms(m)
    m.eval()
    g = m.gate
    lin1, lin2 = g.channel_mlp[0], g.channel_mlp[2]
    mc = F.linear(F.relu(F.linear(x.mean((2, 3)), lin1.weight, lin1.bias)), lin2.weight, lin2.bias)
    mc = bn_eval(mc[:, :, None, None], g.channel_norm)
    t = x
    for i, block in enumerate(g.spatial):
        conv, bn = block[0], block[1]
        if i > 0:  # the two 3x3 convs are dilated by 4 (paper: d = 4)
            assert conv.dilation == (4, 4) and conv.kernel_size == (3, 3)
        t = F.relu(bn_eval(F.conv2d(t, conv.weight, None, padding=conv.padding,
                                    dilation=conv.dilation), bn))
    assert t.shape[1] == 4  # r = 16
    ms = bn_eval(F.conv2d(t, g.spatial_out.weight), g.spatial_norm)
    torch.testing.assert_close(m(x), x * (1 + torch.sigmoid(mc + ms)), rtol=1e-5, atol=1e-5)


def test_skconv_matches_paper() -> None:
    x = torch.randn(2, 64, 8, 8)
    m = SKConv(64, 64, stride=2, branches=2, groups=32)
    randomize_norms(m)
    m.eval()
    feats = []
    for i, branch in enumerate(m.branches):
        conv, bn = branch[0], branch[1]
        assert conv.dilation == (i + 1, i + 1) and conv.groups == 32
        feats.append(F.relu(bn_eval(F.conv2d(x, conv.weight, None, 2, i + 1, i + 1, 32), bn)))
    s = sum(feats).mean((2, 3), keepdim=True)
    assert m.fuse[0].out_channels == 32  # d = max(C / r, L) = max(4, 32)
    z = F.relu(bn_eval(F.conv2d(s, m.fuse[0].weight), m.fuse[1]))
    logits = F.conv2d(z, m.select.weight, m.select.bias).view(2, 2, 64)
    a = logits.softmax(1)
    expected = sum(a[:, i, :, None, None] * feats[i] for i in range(2))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("radix,groups", [(2, 1), (2, 2), (4, 2), (1, 1)])
def test_split_attention_matches_resnest(radix, groups) -> None:
    c = 32
    x = torch.randn(2, c, 6, 6)
    m = SplitAttnConv2d(c, c, radix=radix, groups=groups)
    randomize_norms(m)
    m.eval()
    y = F.relu(bn_eval(F.conv2d(x, m.conv.weight, None, 1, 1, 1, groups * radix), m.bn0))
    splits = torch.chunk(y, radix, dim=1)  # split r = r-th block of C channels
    gap = sum(splits).mean((2, 3), keepdim=True)
    z = F.relu(bn_eval(F.conv2d(gap, m.fc1.weight, m.fc1.bias, groups=groups), m.bn1))
    logits = F.conv2d(z, m.fc2.weight, m.fc2.bias, groups=groups).flatten(1)
    cg = c // groups
    expected = torch.zeros_like(splits[0])
    for g in range(groups):
        # fc2's output for group g holds radix chunks of cg logits, one per split
        block = logits[:, g * radix * cg:(g + 1) * radix * cg].view(2, radix, cg)
        weights = torch.sigmoid(block) if radix == 1 else block.softmax(1)
        for r in range(radix):
            sl = slice(g * cg, (g + 1) * cg)
            expected[:, sl] += weights[:, r, :, None, None] * splits[r][:, sl]
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def all_modules(channels: int):
    for name in list_attention():
        yield name, create_attention(name, channels), channels
    yield "sk", SKConv(channels, channels, groups=8), channels
    yield "splat", SplitAttnConv2d(channels, channels), channels


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [1, 3])
def test_train_mode_small_batches_and_1x1_maps(batch, size) -> None:
    for name, m, c in all_modules(32):
        m.train()
        x = torch.randn(batch, c, size, size, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape, name
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all(), name
        for pname, p in m.named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"


def test_safe_batchnorm_keeps_running_stats_on_single_values() -> None:
    m = create_attention("cbam", 8, spatial_norm="batch").train()
    bn = m.spatial_gate.norm
    before = bn.running_mean.clone()
    m(torch.randn(1, 8, 1, 1))
    torch.testing.assert_close(bn.running_mean, before)
    m(torch.randn(2, 8, 3, 3))
    assert not torch.equal(bn.running_mean, before)
    assert math.isclose(bn.momentum, 0.01)


# --------------------------------------------------------------------------- shape errors

WRONG_INPUTS = {"wrong channels": (2, 24, 8, 8), "3-D": (16, 8, 8), "5-D": (2, 16, 8, 8, 1)}
MODULES = {
    **{name: (lambda name=name: create_attention(name, 16)) for name in list_attention()},
    "cbam spatial-only": lambda: create_attention("cbam", 16, channel=False),
    "SKConv": lambda: SKConv(16, 16, groups=4),
    "SplitAttnConv2d": lambda: SplitAttnConv2d(16, 16),
}


@pytest.mark.parametrize("wrong", WRONG_INPUTS)
@pytest.mark.parametrize("name", MODULES)
def test_wrong_input_names_module_and_both_shapes(name: str, wrong: str) -> None:
    module = MODULES[name]()
    shape = WRONG_INPUTS[wrong]
    with pytest.raises(ValueError) as info:
        module(torch.randn(shape))
    message = str(info.value)
    assert f"(B, 16, H, W)" in message and str(tuple(shape)) in message
    assert type(module).__name__ in message


def test_shape_error_names_the_path_in_the_model() -> None:
    from attnres.models import build_model, insert_attention

    model = build_model("resnet20", attention="cbam")
    with pytest.raises(ValueError, match=r"layer3\.2\.attn \(CBAM\) was built for "
                                         r"\(B, 64, H, W\) but got .*\(1, 32, 8, 8\)"):
        model.layer3[2].attn(torch.randn(1, 32, 8, 8))
    # inserted modules, also under identity init (the gate sits one level deeper)
    inserted = insert_attention(build_model("resnet20"), "se", at="layer2:after")
    with pytest.raises(ValueError, match=r"layer2\.2\.attn_after\.attn \(SqueezeExcite\)"):
        inserted.layer2[2].attn_after(torch.randn(1, 16, 8, 8))
    # and the model itself still runs: the checks pass on the shapes it produces
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", list_attention())
def test_fast_modules_trace_with_torch_fx(name: str) -> None:
    """The checks and the fast paths step aside under symbolic tracing (FX quantization)."""
    module = create_attention(name, 16).eval()
    folds = getattr(module, "folds_residual", False)  # optional `identity` argument
    graph = torch.fx.symbolic_trace(module, concrete_args={"identity": None} if folds else None)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(graph(x), module(x))


def expected_gate_shape(kind: str, b: int, c: int, h: int, w: int) -> tuple[int, ...]:
    """GATE_SHAPES' text, e.g. "(B, C, H, 1)", read with the input's sizes."""
    sizes = {"B": b, "C": c, "H": h, "W": w, "1": 1}
    return tuple(sizes[d.strip()] for d in GATE_SHAPES[kind].strip("()").split(","))


@pytest.mark.parametrize("name", list_attention())
def test_registered_gates_run_with_their_shapes_and_values(name: str) -> None:
    """Every gate sub-module the registry names exists, runs once per forward and returns
    values in [0, 1] of the shape its gate kind promises."""
    module = create_attention(name, 32).eval()
    spec = attention_spec(name)
    gates = list(iter_gates(module))
    assert [(path, kind) for _, path, _, kind in gates] == list(spec.gates.items())
    seen: dict[str, list[torch.Tensor]] = {path: [] for _, path, _, _ in gates}
    for _, path, gate, _ in gates:
        gate.register_forward_hook(lambda m, a, out, p=path: seen[p].append(out))
    x = torch.randn(2, 32, 7, 5)
    with torch.no_grad():
        assert module(x).shape == x.shape
    for _, path, _, kind in gates:
        (out,) = seen[path]
        assert tuple(out.shape) == expected_gate_shape(kind, 2, 32, 7, 5), (path, kind)
        assert 0 <= out.min() and out.max() <= 1
