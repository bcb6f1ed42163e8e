"""The fast attention paths (impl="fast", the default) against the reference modules and
against finite differences: outputs, input gradients and parameter gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnres.attention import CBAM, EfficientChannelAttention, SqueezeExcite
from attnres.attention.fused import (
    gate_product,
    gated_channel_pool,
    sum_c_weighted,
    sum_hw_weighted,
)

SHAPES = [(2, 16, 8, 8), (1, 16, 1, 1), (1, 32, 5, 7)]
CBAM_OPTIONS = [
    {},
    {"kernel_size": 3},
    {"mlp_bias": True},
    {"pool_types": ("avg",)},
    {"pool_types": ("max",)},
    {"pool_types": ("avg", "max", "lp", "lse")},
    {"spatial_norm": "batch"},
    {"order": "parallel"},
    {"order": "spatial-first"},
    {"channel": False},
    {"spatial": False},
    {"mlp_bias": True, "spatial_norm": "batch", "kernel_size": 3, "order": "parallel"},
]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest expected magnitude."""
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual - expected).abs().max() / scale)


def make_pair(cls, channels: int, **kw):
    torch.manual_seed(0)
    ref = cls(channels, impl="reference", **kw)
    fast = cls(channels, impl="fast", **kw)
    fast.load_state_dict(ref.state_dict())
    # non-trivial norm statistics, so that train and eval differ
    for m in (ref, fast):
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.fill_(0.1)
                mod.running_var.fill_(2.0)
    return ref, fast


def run(module, x, grad, identity=None):
    """Output and gradients (input, identity, every parameter) of one step."""
    x = x.detach().clone().requires_grad_(True)
    ident = None if identity is None else identity.detach().clone().requires_grad_(True)
    out = module(x) if ident is None else module.forward_add(x, ident)
    out.backward(grad)
    grads = {"x": x.grad}
    if ident is not None:
        grads["identity"] = ident.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return out.detach(), grads


def assert_same(ref, fast, x, identity=None, train=True):
    ref.train(train)
    fast.train(train)
    torch.manual_seed(1)
    out_shape = x.shape
    grad = torch.randn(out_shape).to(memory_format=torch.channels_last
                                     if x.is_contiguous(memory_format=torch.channels_last)
                                     and not x.is_contiguous() else torch.contiguous_format)
    ref_out, ref_grads = run(ref, x, grad, identity)
    fast_out, fast_grads = run(fast, x, grad, identity)
    assert fast_out.shape == ref_out.shape
    assert rel_err(fast_out, ref_out) <= 1e-5
    assert ref_grads.keys() == fast_grads.keys()
    for name, g in ref_grads.items():
        assert fast_grads[name] is not None, name
        assert rel_err(fast_grads[name], g) <= 1e-5, name
    # eval-mode inference (no autograd) takes the in-place path
    with torch.no_grad():
        if identity is None:
            assert rel_err(fast(x), ref(x)) <= 1e-5
        else:
            assert rel_err(fast.forward_add(x, identity), ref.forward_add(x, identity)) <= 1e-5
    for buf_ref, buf_fast in zip(ref.buffers(), fast.buffers(), strict=True):
        assert torch.allclose(buf_ref.float(), buf_fast.float())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("options", CBAM_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_cbam_fast_equals_reference(shape, channels_last, options):
    torch.manual_seed(2)
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ref, fast = make_pair(CBAM, shape[1], **options)
    assert_same(ref, fast, x)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("options", [{}, {"order": "parallel"}, {"spatial": False},
                                     {"channel": False}, {"order": "spatial-first"}])
def test_cbam_forward_add_equals_reference(shape, channels_last, options):
    torch.manual_seed(3)
    x, identity = torch.randn(shape), torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        identity = identity.to(memory_format=torch.channels_last)
    ref, fast = make_pair(CBAM, shape[1], **options)
    assert_same(ref, fast, x, identity)
    # forward_add is relu(attn(x) + identity), computed here from the module's own forward
    with torch.no_grad():
        expected = torch.relu(ref(x) + identity)
        assert rel_err(fast.forward_add(x, identity), expected) <= 1e-5


def test_cbam_eval_mode_with_autograd():
    # Grad-CAM style: eval mode, gradients on; batch norm uses its running statistics
    ref, fast = make_pair(CBAM, 16, spatial_norm="batch", mlp_bias=True)
    assert_same(ref, fast, torch.randn(2, 16, 6, 6), train=False)


def test_cbam_max_ties_share_the_gradient():
    # After a ReLU many values tie; amax shares the gradient equally among tied maxima and
    # the fast path must do the same.
    torch.manual_seed(4)
    x = torch.randint(-2, 3, (2, 8, 5, 5)).float().relu()
    ref, fast = make_pair(CBAM, 8)
    with torch.no_grad():  # gates of exactly 1 keep the ties after the channel gate
        for m in (ref, fast):
            m.channel_gate.fc2.weight.zero_()
    assert_same(ref, fast, x)


@pytest.mark.parametrize("cls", [SqueezeExcite, EfficientChannelAttention])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_se_eca_fast_equals_reference(cls, shape, channels_last):
    torch.manual_seed(5)
    x, identity = torch.randn(shape), torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ref, fast = make_pair(cls, shape[1])
    assert_same(ref, fast, x)
    assert_same(ref, fast, x, identity)


def test_cbam_fast_matches_paper_formulas():
    """CBAM (channel-first) written out from eq. 2 and 3 of the paper with plain functions."""
    torch.manual_seed(6)
    cbam = CBAM(16, reduction=4, kernel_size=7)
    x = torch.randn(2, 16, 6, 6)
    w1, w2 = cbam.channel_gate.fc1.weight, cbam.channel_gate.fc2.weight
    conv = cbam.spatial_gate.conv

    def mlp(v):
        return F.relu(v @ w1.T) @ w2.T

    with torch.no_grad():
        mc = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
        f1 = mc * x
        desc = torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)
        ms = torch.sigmoid(F.conv2d(desc, conv.weight, conv.bias, padding=3))
        expected = ms * f1
        assert rel_err(cbam(x), expected) <= 1e-5


def test_gate_values_reach_monitor_hooks():
    """The gate modules are still called, and their outputs are the gate values."""
    torch.manual_seed(7)
    cbam = CBAM(16, reduction=4)
    seen = {}
    cbam.channel_gate.register_forward_hook(lambda m, a, out: seen.__setitem__("c", out))
    cbam.spatial_gate.register_forward_hook(lambda m, a, out: seen.__setitem__("s", out))
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    for grad_on in (True, False):
        seen.clear()
        with torch.set_grad_enabled(grad_on):
            out = cbam(x)
        gc, gs = seen["c"], seen["s"]
        assert gc.shape == (2, 16, 1, 1) and gs.shape == (2, 1, 6, 6)
        assert 0 <= gc.min() and gc.max() <= 1 and 0 <= gs.min() and gs.max() <= 1
        assert rel_err(out.detach(), (x * gc * gs).detach()) <= 1e-5
    # the residual-folded call goes through __call__, so hooks on the module itself run too
    calls = []
    cbam.register_forward_hook(lambda m, a, out: calls.append(out.shape))
    identity = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        folded = cbam.forward_add(x, identity)
        assert rel_err(folded, torch.relu(cbam(x) + identity)) <= 1e-5
    assert calls and calls[0] == (2, 16, 6, 6)


def saved_full_maps(fn, x):
    """Distinct storages of full-size (numel >= x.numel()) tensors saved for backward."""
    storages = set()

    def pack(t):
        if t.numel() >= x.numel():
            storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return len(storages)


def test_fast_cbam_keeps_only_the_input_for_backward():
    torch.manual_seed(8)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    ref, fast = make_pair(CBAM, 16)
    assert saved_full_maps(ref, x) >= 2  # x and x * gc (the eager product also keeps more)
    assert saved_full_maps(fast, x) == 1  # x only
    identity = torch.randn(2, 16, 8, 8)
    # with the residual folded in: x and the block output (kept anyway by the next layer)
    assert saved_full_maps(lambda t: fast.forward_add(t, identity), x) == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_functions_gradcheck(channels_last):
    torch.manual_seed(9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 5, 3, 4, dtype=torch.double).to(memory_format=fmt).requires_grad_()
    gc = torch.rand(2, 5, 1, 1, dtype=torch.double, requires_grad=True)
    gs = torch.rand(2, 1, 3, 4, dtype=torch.double, requires_grad=True)
    identity = torch.randn(2, 5, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(gate_product, (x, gc, gs, None))
    assert torch.autograd.gradcheck(gate_product, (x, gc, None, None))
    assert torch.autograd.gradcheck(gate_product, (x, None, gs, None))
    assert torch.autograd.gradcheck(gate_product, (x, gc, gs, identity))
    assert torch.autograd.gradcheck(gated_channel_pool, (x, gc))


def test_weighted_sums_match_elementwise():
    torch.manual_seed(10)
    t = torch.randn(3, 6, 4, 5)
    w_hw, w_c = torch.randn(3, 1, 4, 5), torch.randn(3, 6, 1, 1)
    for tt in (t, t.to(memory_format=torch.channels_last)):
        assert rel_err(sum_hw_weighted(tt, w_hw), (t * w_hw).sum((2, 3), keepdim=True)) < 1e-5
        assert rel_err(sum_c_weighted(tt, w_c), (t * w_c).sum(1, keepdim=True)) < 1e-5


def test_bad_impl_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        CBAM(8, impl="turbo")
    with pytest.raises(ValueError, match="impl"):
        SqueezeExcite(8, impl="cuda")


def test_state_dict_keys_do_not_depend_on_impl():
    for cls, kw in [(CBAM, {"mlp_bias": True, "spatial_norm": "batch"}), (SqueezeExcite, {}),
                    (EfficientChannelAttention, {})]:
        assert (list(cls(32, impl="fast", **kw).state_dict())
                == list(cls(32, impl="reference", **kw).state_dict()))
    assert "channel_gate.fc1.weight" in CBAM(32).state_dict()
    assert "spatial_gate.conv.weight" in CBAM(32).state_dict()
    assert "gate.fc1.weight" in SqueezeExcite(32).state_dict()
    assert "gate.conv.weight" in EfficientChannelAttention(32).state_dict()


def test_copy_keeps_impl():
    assert copy.deepcopy(CBAM(8, impl="reference")).impl == "reference"


# -- bf16 and channels_last, under autocast as training runs them -----------------------

GATES = ["se", "eca", "cbam", "bam"]
BF16_SHAPES = [(2, 16, 8, 8), (1, 16, 1, 1), (1, 32, 5, 7), (2, 64, 4, 4)]


def autocast_step(module, x0, grad, autocast=True):
    """Output and gradients (input, every parameter) of one step, as float64."""
    x = x0.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    out.backward(grad.to(out.dtype))
    grads = {"out": out.detach(), "x": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return {k: v.double() for k, v in grads.items()}


@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize("shape", BF16_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_fast_matches_reference_in_bf16_autocast(name, shape, channels_last, x_dtype):
    """bf16 tolerance: outputs and input gradients of the two paths agree within 3 % of the
    largest reference value (a few bf16 roundings), and every output and gradient of the
    fast path is at most twice as far from a float64 computation as the reference path's,
    plus 2 % (scales: the tensor's largest float64 value, at least 5 % of the largest
    parameter gradient: some gradients are zero in exact arithmetic, such as those of a
    weight followed by batch norm over one channel, and are rounding noise in bf16)."""
    from attnres.attention import create_attention

    torch.manual_seed(11)
    ref = create_attention(name, shape[1], impl="reference")
    fast = create_attention(name, shape[1], impl="fast")
    fast.load_state_dict(ref.state_dict())
    exact = copy.deepcopy(ref).double()
    x = torch.randn(shape).to(x_dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape).to(x_dtype)
    truth = autocast_step(exact, x.double(), grad.double(), autocast=False)
    got_ref, got_fast = autocast_step(ref, x, grad), autocast_step(fast, x, grad)
    assert got_fast.keys() == truth.keys()
    for key in ("out", "x"):
        assert rel_err(got_fast[key], got_ref[key]) <= 0.03, key
    param_scale = max(float(v.abs().max()) for k, v in truth.items() if k not in ("out", "x"))
    for key, exact_value in truth.items():
        scale = float(exact_value.abs().max())
        if key not in ("out", "x"):
            scale = max(scale, 0.05 * param_scale)
        err_ref = float((got_ref[key] - exact_value).abs().max()) / max(scale, 1e-30)
        err_fast = float((got_fast[key] - exact_value).abs().max()) / max(scale, 1e-30)
        assert err_fast <= 2 * err_ref + 0.02, (key, err_fast, err_ref)


class FullSizeOutputs(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op, dtype, channels_last?) of every new 4-D tensor (not a view or an
    in-place result) with >= `numel` elements that an op makes."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(t, torch.Tensor) and t.dim() == 4 and t.numel() >= self.numel
                    and t.untyped_storage().data_ptr() not in inputs):
                self.seen.append((str(func), t.dtype,
                                  t.is_contiguous(memory_format=torch.channels_last)))
        return out


@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (2, 64, 6, 6)])
def test_bf16_channels_last_stays_bf16_channels_last(name, shape):
    """No full-size map is upcast to fp32 and none leaves channels_last (no hidden layout
    conversion), in forward and backward, under autocast with a bf16 channels_last input."""
    from attnres.attention import create_attention

    torch.manual_seed(12)
    module = create_attention(name, shape[1]).to(memory_format=torch.channels_last)
    x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    mode = FullSizeOutputs(x.numel())
    with mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        out.backward(grad)
    assert mode.seen, "no full-size op was seen"
    assert [s for s in mode.seen if s[1] != torch.bfloat16] == []
    assert [s for s in mode.seen if not s[2]] == []
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.dtype == torch.bfloat16
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", GATES)
def test_fast_inference_matches_reference_in_bf16(name):
    from attnres.attention import create_attention

    torch.manual_seed(13)
    for shape in [(1, 256, 14, 14), (16, 32, 8, 8)]:  # plain conv / depthwise spatial conv
        ref = create_attention(name, shape[1], impl="reference").eval()
        fast = create_attention(name, shape[1], impl="fast").eval()
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = fast(x), ref(x)
        assert a.dtype == torch.bfloat16 and a.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(a.float(), b.float()) <= 0.03


@pytest.mark.parametrize("channels, kernel, dilation", [(2, 7, 1), (1, 3, 4), (2, 3, 2)])
def test_thin_conv_gradcheck(channels, kernel, dilation):
    from attnres.attention.cbam import thin_conv2d

    torch.manual_seed(14)
    conv = torch.nn.Conv2d(channels, 1, kernel, padding=dilation * (kernel - 1) // 2,
                           dilation=dilation).double()
    x = torch.randn(3, channels, 6, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: thin_conv2d(
        x, _conv_with(conv, w, b)), (x, conv.weight.detach().requires_grad_(),
                                     conv.bias.detach().requires_grad_()))
    with torch.no_grad():  # and the forward equals the module's own
        assert rel_err(thin_conv2d(x, conv), conv(x)) <= 1e-12


def _conv_with(conv, weight, bias):
    """A functional copy of `conv` whose weight and bias are the given tensors."""
    clone = copy.copy(conv)
    clone._parameters = dict(conv._parameters)
    clone._parameters["weight"], clone._parameters["bias"] = weight, bias
    return clone
