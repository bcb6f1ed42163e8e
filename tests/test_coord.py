"""Coordinate attention ("coord"): the paper's formulas, timm's CoordAttn with the same
weights, and everything the registry promises a new module (placements, identity
insertion, monitor, explain, export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnres.attention.monitor import AttentionMonitor
from attnres.attention import (
    CoordinateAttention, attention_spec, create_attention, iter_attention, iter_gates)
from attnres.models import build_model, insert_attention, list_placements

torch.set_num_threads(1)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affines, and conv weights large enough that the gates
    spread out (a default-initialised coord gate sits close to 0.5 everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(3)
    return module


def coord_model(seed: int = 0, num_classes: int = 10) -> nn.Module:
    """resnet20 with coord in every block: gates spread out (`randomize`), BN statistics of
    the backbone taken from random images so that activations keep a realistic scale."""
    torch.manual_seed(seed)
    model = build_model("resnet20", attention="coord", num_classes=num_classes)
    for _, module, _ in iter_attention(model):
        randomize(module, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 32, 32))
    return model.eval()


def by_paper(m: CoordinateAttention, x: torch.Tensor, train: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 4-9 of Hou et al. 2021 with plain tensor ops on `m`'s weights:
    (y, g^h (B, C, H), g^w (B, C, W)). BN with batch statistics when `train`."""
    h = x.shape[2]
    z = torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2)  # [z^h; z^w]: (B, C, H + W)
    conv, bn = m.encode.conv, m.encode.norm
    t = torch.einsum("oc,bcl->bol", conv.weight[:, :, 0, 0], z) + conv.bias[:, None]
    if train:
        mean, var = t.mean(dim=(0, 2)), t.var(dim=(0, 2), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    t = (t - mean[:, None]) / torch.sqrt(var[:, None] + bn.eps) * bn.weight[:, None] \
        + bn.bias[:, None]
    f = t * torch.clamp(t + 3, 0, 6) / 6  # h_swish
    f_h, f_w = f[:, :, :h], f[:, :, h:]
    wh, bh = m.row_gate.conv.weight[:, :, 0, 0], m.row_gate.conv.bias
    ww, bw = m.column_gate.conv.weight[:, :, 0, 0], m.column_gate.conv.bias
    g_h = torch.sigmoid(torch.einsum("cm,bml->bcl", wh, f_h) + bh[:, None])
    g_w = torch.sigmoid(torch.einsum("cm,bml->bcl", ww, f_w) + bw[:, None])
    return x * g_h[:, :, :, None] * g_w[:, :, None, :], g_h, g_w


@pytest.mark.parametrize("channels,hidden", [(16, 8), (64, 8), (512, 16), (1024, 32)])
def test_hidden_width_and_parameters_follow_the_authors_code(channels, hidden) -> None:
    m = create_attention("coord", channels)
    assert m.encode.conv.out_channels == hidden  # mip = max(8, C // 32)
    # three biased 1x1 convs (C -> mip, mip -> C twice) and BN(mip)
    expected = (channels * hidden + hidden) + 2 * (hidden * channels + channels) + 2 * hidden
    assert sum(p.numel() for p in m.parameters()) == expected
    assert attention_spec("coord").defaults == {"reduction": 32, "min_hidden": 8,
                                                "bias": True}


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("shape", [(2, 32, 7, 5), (3, 16, 1, 6), (1, 24, 4, 4)])
def test_matches_the_paper_and_gates_are_what_the_registry_names(shape, train) -> None:
    torch.manual_seed(0)
    m = randomize(CoordinateAttention(shape[1], reduction=4)).train(train)
    x = torch.randn(shape)
    seen = {}
    handles = [gate.register_forward_hook(lambda mod, a, o, k=kind: seen.__setitem__(k, o))
               for _, _, gate, kind in iter_gates(m)]
    with torch.no_grad():
        y = m(x)
        expected, g_h, g_w = by_paper(m, x, train)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert set(seen) == {"row", "column"}
    torch.testing.assert_close(seen["row"], g_h[:, :, :, None], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["column"], g_w[:, :, None, :], rtol=1e-5, atol=1e-6)
    assert 0.05 < float(torch.cat([g_h.flatten(), g_w.flatten()]).std())  # gates spread


def test_equals_timm_coord_attn_with_the_same_weights() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    spec = attention_spec("coord")
    ours = randomize(CoordinateAttention(48))  # mip = 8
    theirs = timm_layers.create_attn(spec.timm_name, 48, rd_channels=8, bias=True,
                                     act_layer=nn.Hardswish, norm_layer=nn.BatchNorm2d,
                                     gate_layer="sigmoid")
    assert type(theirs).__name__ == "CoordAttn"
    rename = {"conv1": "encode.conv", "bn1": "encode.norm", "conv_h": "row_gate.conv",
              "conv_w": "column_gate.conv"}
    state = {}
    for key, value in ours.state_dict().items():
        theirs_key = next(t + key[len(o):] for t, o in rename.items() if key.startswith(o))
        state[theirs_key] = value
    theirs.load_state_dict(state)  # strict: the same parameters and buffers
    x = torch.randn(4, 48, 6, 9)
    with torch.no_grad():
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
        ours.train(), theirs.train()  # batch statistics, and the same running updates
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.encode.norm.running_mean, theirs.bn1.running_mean)
    torch.testing.assert_close(ours.encode.norm.running_var, theirs.bn1.running_var)


@pytest.mark.parametrize("size", [1, 3])
def test_batch_one_and_small_maps_train(size) -> None:
    m = CoordinateAttention(32).train()
    x = torch.randn(1, 32, size, size, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_bad_options_and_inputs() -> None:
    with pytest.raises(ValueError, match="reduction=0"):
        CoordinateAttention(16, reduction=0)
    with pytest.raises(ValueError, match="min_hidden=0"):
        CoordinateAttention(16, min_hidden=0)
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\).*\(2, 8, 4, 4\)"):
        CoordinateAttention(16)(torch.randn(2, 8, 4, 4))


def test_every_placement_trains_and_the_monitor_sees_its_gates() -> None:
    for placement in list_placements():
        model = build_model("resnet20", attention="coord", placement=placement,
                            num_classes=5).train()
        found = list(iter_attention(model))
        assert found and all(isinstance(m, CoordinateAttention) for _, m, _ in found)
        with AttentionMonitor(model) as monitor:
            out = model(torch.randn(1, 3, 32, 32))
        out.square().sum().backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "attn" in n)
        summary = monitor.summary()
        assert set(summary) == {path for path, _, _ in found}, placement
        for stats in summary.values():
            assert 0 <= stats["row_min"] <= stats["row_mean"] <= stats["row_max"] <= 1
            assert 0 <= stats["column_min"] <= stats["column_max"] <= 1
            assert "channel_mean" not in stats and "spatial_mean" not in stats


def test_monitor_statistics_equal_the_paper_gates() -> None:
    torch.manual_seed(1)
    m = randomize(CoordinateAttention(16, reduction=2)).eval()
    x = torch.randn(3, 16, 5, 4)
    with AttentionMonitor(m) as monitor, torch.no_grad():
        m(x)
        _, g_h, g_w = by_paper(m, x)
    stats = monitor.summary()["CoordinateAttention"]
    for kind, g in (("row", g_h), ("column", g_w)):
        values = g.double().numpy()
        assert stats[f"{kind}_mean"] == pytest.approx(values.mean(), abs=1e-6)
        assert stats[f"{kind}_std"] == pytest.approx(values.std(), abs=1e-6)
        p = values / values.sum(axis=2, keepdims=True)  # each (b, c) vector over H (W)
        entropy = (-(p * np.log(p)).sum(axis=2) / np.log(values.shape[2])).mean()
        assert stats[f"{kind}_entropy"] == pytest.approx(entropy, abs=1e-6)


def test_find_saturation_reads_row_and_column_gates() -> None:
    from attnres.attention.monitor import find_saturation

    m = randomize(CoordinateAttention(16, reduction=2)).eval()
    x = torch.randn(2, 16, 6, 6)
    with AttentionMonitor(m) as monitor, torch.no_grad():
        m(x)
    assert find_saturation(monitor.summary()) == []  # spread-out gates
    with torch.no_grad():
        m.row_gate.conv.weight.zero_()  # every row alike
        m.column_gate.conv.bias.fill_(50.0)  # stuck open
    with AttentionMonitor(m) as monitor, torch.no_grad():
        m(x)
    warnings = find_saturation(monitor.summary())
    assert len(warnings) == 3, warnings  # a gate stuck at 1 is also flat
    assert warnings[0].startswith("CoordinateAttention: column attention saturated")
    assert "above 0.95 (100.0%)" in warnings[0]
    assert warnings[1].startswith("CoordinateAttention: row attention is flat")
    assert warnings[2].startswith("CoordinateAttention: column attention is flat")


def test_identity_insertion_keeps_outputs_exactly() -> None:
    model = build_model("resnet20")
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))  # BN statistics of some data
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    insert_attention(model, "coord", ["layer1:before", "layer2.1:after", "layer3:after"],
                     init="identity")
    wrapper = model.layer3[2].attn_after
    assert isinstance(wrapper.attn, CoordinateAttention) and wrapper.attn.channels == 64
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        wrapper.scale.fill_(0.5)  # the gate is really there
        assert (model(x) - before).abs().max() > 1e-4


@pytest.mark.slow
def test_explain_draws_the_row_times_column_map(tmp_path) -> None:
    from attnres.analysis.explain import explain

    model = coord_model(seed=3, num_classes=4)
    model.preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                           "classes": None}
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    seen = []
    handle = model.layer3[2].attn.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    result = explain([model], [image], out=tmp_path, device="cpu")
    handle.remove()
    (record,) = result["results"]
    assert record["attention"]["module"] == "layer3.2.attn"
    assert record["attention"]["map_size"] == [4, 4]
    with torch.no_grad():  # the map: mean over channels of g^h * g^w on the module's input
        _, g_h, g_w = by_paper(model.layer3[2].attn, seen[0])
    expected = (g_h[:, :, :, None] * g_w[:, :, None, :]).mean(dim=1)[0]
    assert record["attention"]["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert record["attention"]["max"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert (tmp_path / "image0__model0__attn.png").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from attnres.export import export_onnx

    model = coord_model(seed=4)
    path = tmp_path / "coord.onnx"
    export_onnx(model, path, image_size=32, exporter="torchscript", verify=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 32, 32), (3, 3, 40, 24)]:  # dynamic batch, H != W
        x = torch.randn(shape)
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_export_program_with_dynamic_shapes(tmp_path) -> None:
    from attnres.export import export_pt2

    model = coord_model(seed=4)
    export_pt2(model, tmp_path / "coord.pt2", image_size=32, verify=False)
    program = torch.export.load(str(tmp_path / "coord.pt2")).module()
    for shape in [(1, 3, 32, 32), (2, 3, 40, 24)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)


def test_fx_trace_and_torch_export_of_the_module() -> None:
    m = randomize(CoordinateAttention(16)).eval()
    x = torch.randn(2, 16, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(m)(x), m(x))
        torch.testing.assert_close(torch.export.export(m, (x,)).module()(x), m(x))


@pytest.mark.slow
def test_int8_keeps_coord_in_fp32() -> None:
    from attnres.export import quantize_int8

    images = torch.randn(64, 3, 32, 32)
    model = coord_model(seed=4)
    q = quantize_int8(model, images.split(32))
    assert set(q.fp32_modules) == {p for p, _, _ in iter_attention(model)}
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).norm() / ref.norm() < 0.1  # 8-bit noise, not a different function
