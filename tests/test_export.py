"""Export: BN folding, ONNX (both exporters), torch.export programs, int8 and the CLI.

References are independent of the exporters: the eval-mode PyTorch model the file came
from, BN written out as its formula in float64, and top-1 counted here by hand.
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnres.attention import AttentionSpec, SKConv, registry
from attnres.cli import main
from attnres.data import ImageData, ImageSet
from attnres.export import (
    export_model,
    export_onnx,
    export_pt2,
    find_bn_pairs,
    fold_bn,
    fuse,
    load_int8,
    onnx_op_types,
    prepare_for_inference,
    quantize_int8,
    save_int8,
)
from attnres.models import build_model

ATTENTION = ["se", "eca", "cbam", "bam"]
ARCHS = ["resnet20", "resnet18"]  # CIFAR-shaped and ImageNet-shaped


def batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def model_for(arch: str, attention: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {"spatial_norm": "batch"} if attention == "cbam" else None  # spatial conv + BN
    return randomise_bn(build_model(arch, attention=attention, num_classes=10,
                                    attention_kwargs=kwargs), seed)


def calibrated(arch: str, attention: str, images: torch.Tensor) -> nn.Module:
    """A model whose BN statistics come from `images` (activations of realistic scale)."""
    torch.manual_seed(0)
    model = build_model(arch, attention=attention, num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for chunk in images.split(32):
            model(chunk)
    return model.eval()


# ----------------------------------------------------------------------------- BN folding

def test_fold_bn_equals_the_formula_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=True)
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(6)))[0]
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    y = F.conv2d(x, conv.weight.double(), conv.bias.double(), padding=2, dilation=2, groups=2)
    per = (lambda t: t.double().view(1, -1, 1, 1))
    expected = (y - per(bn.running_mean)) / torch.sqrt(per(bn.running_var) + bn.eps) \
        * per(bn.weight) + per(bn.bias)
    assert torch.allclose(fold_bn(conv, bn).double()(x), expected, atol=1e-5)

    linear, bn1d = nn.Linear(5, 3, bias=False), nn.BatchNorm1d(3)
    randomise_bn(nn.Sequential(bn1d))
    z = torch.randn(4, 5)
    expected = (z @ linear.weight.T - bn1d.running_mean) / torch.sqrt(bn1d.running_var + 1e-5) \
        * bn1d.weight + bn1d.bias
    assert torch.allclose(fold_bn(linear, bn1d)(z), expected, atol=1e-5)


@pytest.mark.parametrize(("arch", "attention"),
                         [("resnet20", a) for a in ATTENTION] + [("resnet18", "cbam")])
def test_fuse_folds_every_bn_and_keeps_outputs(arch, attention):
    model = model_for(arch, attention)
    fused = fuse(model)
    assert batchnorms(fused) == []  # stem, blocks, downsample, CBAM spatial BN, BAM branches
    assert len(batchnorms(model)) == len(find_bn_pairs(model)) > 0  # original untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_fuse_reaches_inside_selective_kernel_convs():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(SKConv(16, 16, groups=4, min_hidden=8)))
    fused = fuse(model)
    assert batchnorms(fused) == []  # each branch's BN and the fuse layer's BN
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() <= 1e-5


def test_fuse_searches_inside_modules_fx_cannot_trace():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            if x.sum() > 0:  # data-dependent: torch.fx refuses
                x = x * 2
            return self.head(x)

    model = randomise_bn(Untraceable())
    with pytest.warns(UserWarning, match="cannot trace"):
        fused = fuse(model)
    assert batchnorms(fused) == []
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() <= 1e-5


def test_prepare_for_inference_replaces_adaptive_pooling_and_keeps_attributes():
    model = model_for("resnet18", "cbam")
    model.preprocessing = {"image_size": 32}
    prepared = prepare_for_inference(model)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in prepared.modules())
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)  # a copy was changed
    assert prepared.preprocessing == {"image_size": 32}
    assert prepared.build_args == model.build_args


# ----------------------------------------------------------------------------- ONNX

def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def check_onnx_graph(path, attention: str) -> None:
    ops = onnx_op_types(path)
    assert not [op for op in ops if "Adaptive" in op or "::" in op or op == "ATen"], ops
    assert "ReduceMean" in ops  # head pooling and the attention's average pooling
    if attention == "cbam":
        assert "ReduceMax" in ops


@pytest.mark.parametrize("arch", [ARCHS[0], pytest.param(ARCHS[1], marks=pytest.mark.slow)])
@pytest.mark.parametrize("attention", ATTENTION)
def test_onnx_torchscript_exporter_dynamic_shapes(tmp_path, arch, attention):
    pytest.importorskip("onnx")
    model = model_for(arch, attention)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, image_size=32, exporter="torchscript", verify=False)
    check_onnx_graph(path, attention)
    x = torch.randn(3, 3, 48, 48)  # exported at 2x3x32x32
    with torch.no_grad():
        ref = model(x)
    assert (run_onnx(path, x) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.slow
def test_onnx_dynamo_exporter_with_metadata_and_report(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = model_for("resnet20", "cbam")
    model.preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32}
    path = tmp_path / "m.onnx"
    report = export_onnx(model, path, exporter="dynamo")
    check_onnx_graph(path, "cbam")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["preprocessing"]) == model.preprocessing
    for shape in [(1, 3, 48, 48), (4, 3, 40, 24)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert (run_onnx(path, x) - model(x)).abs().max() <= 1e-4
    assert report["verified"] and report["max_abs_diff"] <= 1e-4
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    proto = onnx.load(str(path))
    assert input_dims(proto) == ["batch", 3, "height", "width"]
    assert output_dims(proto) == ["batch", 10]
    leftovers = {d.dim_param for v in proto.graph.value_info
                 for d in v.type.tensor_type.shape.dim if re.search(r"\bs\d+\b", d.dim_param)}
    assert not leftovers  # torch.export's symbols are renamed inside expressions too


def input_dims(proto) -> list:
    return [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


def output_dims(proto) -> list:
    return [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]


def test_onnx_dynamic_dims_are_named_batch_height_width(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from attnres.export.onnx import name_dynamic_dims

    # the shapes the dynamo exporter writes: torch.export's symbols and expressions of them
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["logits"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["s77", 3, "s53", "s0"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["s77", 3, "s53", "s0"])],
        value_info=[helper.make_tensor_value_info(
            "mid", TensorProto.FLOAT, ["s77", 3, "(((s53 - 1)//2)) + 1", "((s0 + 1)//2)"])])
    proto = helper.make_model(graph)
    name_dynamic_dims(proto)
    assert input_dims(proto) == output_dims(proto) == ["batch", 3, "height", "width"]
    mid = [d.dim_param or d.dim_value for d in proto.graph.value_info[0].type.tensor_type.shape.dim]
    assert mid == ["batch", 3, "(((height - 1)//2)) + 1", "((width + 1)//2)"]

    model = model_for(ARCHS[0], "se")  # the torchscript exporter, end to end
    path = tmp_path / "m.onnx"
    export_onnx(model, path, image_size=16, exporter="torchscript", verify=False)
    assert input_dims(onnx.load(str(path))) == ["batch", 3, "height", "width"]
    export_onnx(model, path, image_size=16, exporter="torchscript", verify=False, dynamic=False)
    assert input_dims(onnx.load(str(path))) == [2, 3, 16, 16]


# ----------------------------------------------------------------------------- pt2

@pytest.mark.slow
@pytest.mark.parametrize(("arch", "attention", "shapes"), [
    ("resnet20", "cbam", [(1, 3, 48, 48), (3, 3, 33, 17), (2, 3, 32, 32)]),  # odd: pad shortcut
    ("resnet18", "bam", [(1, 3, 48, 48), (2, 3, 96, 72)])])
def test_pt2_program_with_dynamic_batch_and_size(tmp_path, arch, attention, shapes):
    model = model_for(arch, attention)
    path = tmp_path / "m.pt2"
    report = export_pt2(model, path, image_size=32, verify=False)
    # resnet18 at 32x32 ends in 1x1 maps, which torch.export would pin: example at 64
    assert report["example_size"] == (32 if arch == "resnet20" else 64)
    program = torch.export.load(str(path)).module()
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = model(x)
            assert (program(x) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def usual_mode() -> int:
    """What `open()` gives a new file: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(4, 10))).eval()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_files_are_written_whole_with_the_usual_permissions(tmp_path, fmt):
    out = tmp_path / "new" / f"m.{fmt}"
    if fmt == "onnx":
        pytest.importorskip("onnx")
        report = export_onnx(small_net(), out, image_size=8, exporter="torchscript")
    else:
        report = export_pt2(small_net(), out, image_size=8)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind
    assert stat.S_IMODE(out.stat().st_mode) == usual_mode()
    assert report["size_bytes"] == out.stat().st_size
    if report.get("verified"):
        assert report["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="is a folder"):
        (export_onnx if fmt == "onnx" else export_pt2)(small_net(), tmp_path, image_size=8)


# ----------------------------------------------------------------------------- int8

@pytest.mark.slow
def test_int8_quantizes_convs_keeps_gates_fp32_and_round_trips(tmp_path):
    images = torch.randn(96, 3, 32, 32)
    model = calibrated("resnet20", "cbam", images)
    q = quantize_int8(model, images.split(32))
    kinds = {name: type(m).__module__ for name, m in q.named_modules()}
    assert any("quantized" in kinds[n] for n in kinds if n.startswith("layer1.0.conv"))
    assert not any("quantized" in k for n, k in kinds.items() if ".attn" in n)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).norm() / ref.norm() < 0.1  # 8-bit noise, not a different function
    save_int8(q, tmp_path / "q.pt")
    assert stat.S_IMODE((tmp_path / "q.pt").stat().st_mode) == usual_mode()
    with torch.no_grad():
        assert torch.equal(load_int8(tmp_path / "q.pt")(x), out)


class ToyGate(nn.Module):
    """A gate no exporter has heard of: `(B, C, H, W) -> (B, C, H, W)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


def test_int8_keeps_every_registered_attention_module_fp32(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), ToyGate(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    images = torch.randn(32, 3, 8, 8)

    def quantized_convs(q: nn.Module) -> list[str]:
        return sorted(n for n, m in q.named_modules() if "quantized" in type(m).__module__
                      and "Conv" in type(m).__name__)

    unregistered = quantize_int8(model, images)
    assert unregistered.fp32_modules == [] and "2.conv" in quantized_convs(unregistered)
    monkeypatch.setitem(registry._REGISTRY, "toy", AttentionSpec("toy", ToyGate))
    q = quantize_int8(model, images)
    assert q.fp32_modules == ["2"]  # read from the registry, not from a list in export
    assert quantized_convs(q) == ["0"] and type(q.get_submodule("2.conv")) is nn.Conv2d


def tiny_data(n_train: int = 64, n_val: int = 40, seed: int = 0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSet:
        return ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (n,), generator=gen))

    return ImageData(split(n_train), split(n_val), [str(i) for i in range(10)],
                     (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 16, "small", "tiny")


@pytest.mark.slow
def test_export_model_int8_reports_top1_counted_independently(tmp_path):
    data = tiny_data()
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    normalise = (lambda images: (images.float() / 255 - mean) / std)
    model = calibrated("resnet20", "se", normalise(data.train.images))
    report = export_model(model, "int8", tmp_path / "q.pt", data=data, batch_size=16,
                          exporter="torchscript")  # the faster exporter for the ORT row
    with torch.no_grad():
        fp32_pred = model(normalise(data.val.images)).argmax(1)
    expected = 100 * (fp32_pred == data.val.labels).float().mean().item()  # percent
    rows = report["compare"]
    assert rows["pytorch-fp32"]["top1"] == pytest.approx(expected)
    assert {"pytorch-int8", "pytorch-fp32"} <= set(rows)
    assert all(r["latency_ms"] > 0 and r["images_per_s"] > 0 for r in rows.values())
    if "onnxruntime-fp32" in rows:
        assert rows["onnxruntime-fp32"]["top1"] == pytest.approx(expected)
    with torch.no_grad():
        int8_pred = load_int8(tmp_path / "q.pt")(normalise(data.val.images)).argmax(1)
    assert rows["pytorch-int8"]["top1"] == pytest.approx(
        100 * (int8_pred == data.val.labels).float().mean().item())


# ----------------------------------------------------------------------------- CLI

def write_checkpoint(path, model: nn.Module) -> None:
    torch.save({"model": model.state_dict(), "build_args": model.build_args,
                "preprocessing": {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                                  "classes": [str(i) for i in range(10)]}}, path)


def test_cli_export_and_errors(tmp_path, capsys):
    model = model_for("resnet20", "eca")
    ckpt = tmp_path / "best.pt"
    write_checkpoint(ckpt, model)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--exporter",
                 "torchscript", "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert (run_onnx(out, x) - model(x)).abs().max() <= 1e-4

    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--format", "int8",
                 "--out", str(tmp_path / "q.pt")]) == 2
    assert "needs data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(ckpt), "--format", "tflite", "--out", "x"])
