"""insert_attention: identity insertion keeps a trained network's outputs, the edited model
stays an ordinary module, and mistakes fail at insertion time."""

from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import torch
import torchvision
from torch import nn

from attnres.attention import CBAM, SqueezeExcite, attention_spec, iter_attention, list_attention
from attnres.models import build_model, insert_attention
from attnres.models.insert import IdentityInit

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny models: threads only contend on the shared CI cores


def trained_looking(model: nn.Module) -> nn.Module:
    """Random weights with non-trivial BN statistics and affines, as after training."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def small_cnn() -> nn.Module:
    return trained_looking(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)))


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("arch,at", [
    ("resnet18", ["layer1:before", "layer4:after", "layer2.1:after"]),
    ("resnet50", ["layer1:before", "layer3.5:after", "layer4:after"]),
    ("mobilenet_v2", ["features.3:after", "features.7:before"]),
])
def test_identity_insertion_keeps_outputs(arch, at) -> None:
    model = trained_looking(getattr(torchvision.models, arch)())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    stats = buffers(model)
    keys = model.state_dict()
    insert_attention(model, "cbam", at)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() <= 1e-6
    # the probe forward ran in eval mode: BN running statistics are untouched
    for name, value in stats.items():
        assert torch.equal(model.get_buffer(name), value), name
    # original keys unchanged, new keys only for the gates
    new = model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in keys.items())
    assert all("attn_before" in k or "attn_after" in k for k in set(new) - set(keys))
    assert len(set(new) - set(keys)) > 0


@pytest.mark.parametrize("attention", list_attention())
def test_every_attention_inserts_as_an_exact_identity_and_then_acts(attention) -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    insert_attention(model, attention, ["0:after", "3:before", "3:after"], init="identity")
    found = list(iter_attention(model))
    assert [path for path, _, _ in found] == ["0.attn_after.attn", "3.0.attn_before.attn",
                                              "3.2.attn_after.attn"]
    assert all(spec is attention_spec(attention) for _, _, spec in found)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # s = 0: exactly
        for wrapper in (model[0].attn_after, model[3][0].attn_before, model[3][2].attn_after):
            wrapper.scale.fill_(1.0)  # s = 1: the plain gate
        assert (model(x) - before).abs().max() > 1e-4


def test_channels_are_inferred_and_sequentials_resolve_to_their_ends() -> None:
    model = torchvision.models.mobilenet_v2()
    insert_attention(model, "se", ["features.3:after", "features:before"], init="default")
    # InvertedResidual 3 outputs 24 channels; the network's input has 3
    assert isinstance(model.features[3].attn_after, SqueezeExcite)
    assert model.features[3].attn_after.gate.fc1.in_features == 24
    assert model.features[0][0].attn_before.gate.fc1.in_features == 3
    assert len(model.features) == 19  # the Sequential did not gain a layer

    resnet = torchvision.models.resnet18()
    insert_attention(resnet, "cbam", ["layer1:before", "layer4:after"])
    assert isinstance(resnet.layer1[0].attn_before, IdentityInit)
    assert isinstance(resnet.layer1[0].attn_before.attn, CBAM)
    assert resnet.layer1[0].attn_before.attn.channel_gate.fc1.in_features == 64
    assert resnet.layer4[1].attn_after.attn.channel_gate.fc1.in_features == 512
    assert len(resnet.layer1) == 2 and len(resnet.layer4) == 2


def test_default_init_changes_outputs_and_identity_init_trains() -> None:
    x = torch.randn(2, 3, 32, 32)
    plain = small_cnn()
    with torch.no_grad():
        reference = plain(x)

    default = insert_attention(copy.deepcopy(plain), "se", "3:after", init="default")
    with torch.no_grad():
        assert (default(x) - reference).abs().max() > 1e-3  # the gate is really applied

    model = insert_attention(copy.deepcopy(plain), "se", "3:after", reduction=2).train()
    assert model[3][2].attn_after.attn.gate.fc1.out_features == 8  # kwargs reach the gate
    wrapper = model[3][2].attn_after  # resolved to the last module of the inner Sequential
    model(x).square().sum().backward()
    assert wrapper.scale.grad is not None and wrapper.scale.grad.abs() > 0
    assert all(p.grad is not None for p in wrapper.attn.parameters())
    # once the scale moves off zero the gate's own parameters learn
    with torch.no_grad():
        wrapper.scale.fill_(0.5)
    model.zero_grad()
    model(x).square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in wrapper.attn.parameters())
    # y = x + s * (attn(x) - x), checked by hand at s = 0.5
    feature = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(wrapper(feature), 0.5 * feature + 0.5 * wrapper.attn(feature))


def test_training_flags_are_restored_after_the_probe() -> None:
    model = small_cnn().train()
    model[1].eval()  # a mixed state must survive too
    insert_attention(model, "eca", "3:after")
    assert model.training and not model[1].training and model[3].training


def test_state_dict_round_trip_and_deepcopy() -> None:
    x = torch.randn(1, 3, 64, 64)
    model = trained_looking(torchvision.models.resnet18())
    insert_attention(model, "cbam", ["layer2:after", "layer3.0.bn2:after"], init="default")
    with torch.no_grad():
        expected = model(x)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = insert_attention(torchvision.models.resnet18(), "cbam",
                             ["layer2:after", "layer3.0.bn2:after"], init="default")
    other.load_state_dict(torch.load(buffer, weights_only=True))  # strict
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), expected)

    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), expected)
        twin.layer2[1].attn_after.channel_gate.fc1.weight.zero_()  # the copy is independent
        torch.testing.assert_close(model(x), expected)


def test_edited_model_pickles_and_keeps_its_outputs() -> None:
    """The generated classes (BasicBlockWithAttention, ...) pickle as "the subclass of
    <original class>", so torch.save(model) / pickle work and load as the same class."""
    x = torch.randn(1, 3, 64, 64)
    model = trained_looking(torchvision.models.resnet18())
    insert_attention(model, "cbam", ["layer2:after", "layer3.0.bn2:after"], init="default")
    with torch.no_grad():
        expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    again = pickle.loads(pickle.dumps(model))
    for other in (loaded, again):
        assert type(other.layer2[1]) is type(model.layer2[1])
        assert type(other.layer2[1]).__name__ == "BasicBlockWithAttention"
        with torch.no_grad():
            torch.testing.assert_close(other.eval()(x), expected, rtol=0, atol=0)
    assert loaded.model_info == model.model_info  # the insertion record travels too


def test_torch_export() -> None:
    model = small_cnn()
    insert_attention(model, "cbam", ["0:after", "3:before"], init="default")
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_torch_compile() -> None:
    model = small_cnn()
    insert_attention(model, "se", ["3:after"], init="default")
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # no C compiler needed
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter
def test_onnx_export(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = small_cnn()
    insert_attention(model, "cbam", ["0:after"], init="identity")
    with torch.no_grad():
        model[0].attn_after.scale.fill_(0.7)  # so the gate contributes to the output
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])  # 4x faster
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_out), model(x), rtol=1e-4, atol=1e-5)


def test_build_model_records_insertions_and_rebuilds() -> None:
    model = build_model("resnet20", attention="se")
    insert_attention(model, "eca", "layer3:after")
    args = json.loads(json.dumps(model.build_args))
    assert args["insertions"] == [{"attention": "eca", "at": ["layer3:after"],
                                   "init": "identity", "kwargs": {}}]
    again = build_model(**args)
    again.load_state_dict(model.state_dict())  # strict: the inserted gate is there too
    assert again.build_args["insertions"] == args["insertions"]


@pytest.mark.parametrize("call,match", [
    ({"attention": "cbma", "at": "layer1:before"}, r"did you mean 'cbam'.*allowed: bam, cbam"),
    ({"attention": "se", "at": "layr1:before"}, r"unknown module path 'layr1'; closest: layer1"),
    ({"attention": "se", "at": "layer1.0.bn9:after"}, r"closest: layer1\.0\.bn2, layer1\.0\.bn1"),
    ({"attention": "se", "at": "layer1"}, r"'PATH:before' or 'PATH:after'"),
    ({"attention": "se", "at": "layer1:inside"}, r"'PATH:before' or 'PATH:after'"),
    ({"attention": "se", "at": "fc:after"}, r"output of 'fc' is \(1, 1000\), not a 4-D"),
    ({"attention": "se", "at": "avgpool:after", "init": "zeros"}, r"init='zeros'.*identity"),
    ({"attention": "se", "at": ["layer1:before", "layer1.0:before"]}, r"already has attention"),
    ({"attention": "se", "at": []}, r"at is empty"),
    ({"attention": "se", "at": ["layer1:before", "layer2:after"], "reduction": 0},
     r"reduction=0"),
])
def test_bad_insertions_raise_value_error(call, match) -> None:
    model = torchvision.models.resnet18()
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=match):
        insert_attention(model, **call)
    assert set(model.state_dict()) == keys  # nothing was half-inserted


def test_inserting_twice_into_the_same_slot_fails() -> None:
    model = small_cnn()
    insert_attention(model, "se", "3:after")
    with pytest.raises(ValueError, match="already has attention after"):
        insert_attention(model, "eca", "3:after")
    insert_attention(model, "eca", "3:before")  # the other side is still free
    assert isinstance(model[3][0].attn_before, IdentityInit)
