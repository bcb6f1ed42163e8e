"""`attnres.save_model` / `load_model` of saved-model folders (model.safetensors +
model.json): attnres, torchvision and timm networks with attention added or inserted rebuild
offline with identical weights and outputs; damaged or mismatched files give one-line
errors naming the file and the first bad keys."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

import attnres
from attnres.models import get_model_info


def _randomise_gates(model: torch.nn.Module) -> None:
    # identity-initialised gates hide a lost attention weight: make every tensor distinct
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


def _roundtrip(model: torch.nn.Module, tmp_path, size: int = 32) -> torch.nn.Module:
    _randomise_gates(model)
    model.eval()
    folder = attnres.save_model(model, tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    loaded = attnres.load_model(folder)
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    return loaded


def test_attnres_model_roundtrip(tmp_path):
    model = attnres.build_model("resnet20", attention="cbam", num_classes=10)
    loaded = _roundtrip(model, tmp_path)
    assert get_model_info(loaded).to_dict() == get_model_info(model).to_dict()
    # the file alone suffices: also reachable through model.safetensors / model.json
    for name in ("model.safetensors", "model.json"):
        assert torch.equal(attnres.load_model(tmp_path / "saved" / name).fc.weight,
                           model.fc.weight)


def test_torchvision_resnet_with_added_attention(tmp_path):
    model = torchvision.models.resnet18(num_classes=7)
    attnres.add_attention(model, "cbam", placement="block", init="identity")
    loaded = _roundtrip(model, tmp_path)
    recipe = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert recipe["model_info"]["architecture"] == "resnet18"
    assert loaded.fc.out_features == 7


@pytest.mark.slow
def test_timm_resnet_with_added_attention(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    attnres.add_attention(model, "cbam", placement="block")
    loaded = _roundtrip(model, tmp_path)
    assert type(loaded) is type(model)
    assert loaded.preprocessing["mean"] == pytest.approx(list(timm.data.IMAGENET_DEFAULT_MEAN))


def test_inserted_attention_roundtrip(tmp_path):
    model = attnres.build_model("resnet20", num_classes=10)
    before = set(model.state_dict())
    attnres.insert_attention(model, "se", at=["layer2.0:after", "layer3.1.conv2:after"])
    loaded = _roundtrip(model, tmp_path)
    assert set(loaded.state_dict()) - before  # the inserted gates came back with weights


def test_shared_tensors_are_saved(tmp_path):
    model = attnres.build_model("resnet20", num_classes=10)
    model.register_buffer("alias", model.fc.weight.data)  # shares storage with fc.weight
    folder = attnres.save_model(model, tmp_path / "shared")
    from attnres.model_files import read_weights

    state = read_weights(folder / "model.safetensors")
    assert torch.equal(state["alias"], state["fc.weight"])


def test_mismatched_weights_name_file_and_keys(tmp_path):
    model = attnres.build_model("resnet20", attention="cbam", num_classes=10)
    folder = attnres.save_model(model, tmp_path / "saved")
    other = attnres.build_model("resnet20", num_classes=10)  # no attention: keys missing
    import safetensors.torch

    (folder / "model.safetensors").write_bytes(safetensors.torch.save(other.state_dict()))
    with pytest.raises(ValueError) as err:
        attnres.load_model(folder)
    message = str(err.value)
    assert "\n" not in message and "model.safetensors" in message and "missing" in message
    missing = [k for k in model.state_dict() if k not in other.state_dict()]
    assert missing[0] in message


def test_corrupt_files_give_one_line_errors(tmp_path):
    model = attnres.build_model("resnet20", num_classes=10)
    folder = attnres.save_model(model, tmp_path / "saved")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors") as err:
        attnres.load_model(folder)
    assert "\n" not in str(err.value)
    attnres.save_model(model, folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json"):
        attnres.load_model(folder)


def test_unrebuildable_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot record how to rebuild"):
        attnres.save_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "x")
    assert not (tmp_path / "x").exists()
