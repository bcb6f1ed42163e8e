"""Which mean/std a run normalises with: the pretrained weights' own (torchvision weights'
transforms, an attnres checkpoint's preprocessing, the CBAM/BAM authors' ImageNet
statistics), else the training data's; and a run from a weights file that carries them
trains, validates and stores its checkpoints with them. Nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision

import attnres
from attnres.training.normalisation import normalisation_for
from tiny_run import run_tiny, tiny_dataset


@pytest.fixture()
def data(tiny_data):
    return tiny_dataset(str(tiny_data))


def test_no_pretrained_weights_use_the_training_data(data):
    norm = normalisation_for(None, data)
    assert (norm["mean"], norm["std"]) == (list(data.mean), list(data.std))
    assert norm["source"] == "from the training data"


@pytest.mark.parametrize(("name", "arch", "weights"), [
    ("IMAGENET1K_V2", "resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    ("DEFAULT", "resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    ("ResNet34_Weights.IMAGENET1K_V1", None, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
])
def test_torchvision_weights_bring_their_transforms_statistics(data, name, arch, weights):
    norm = normalisation_for(name, data, arch=arch)
    assert norm["mean"] == pytest.approx(list(weights.transforms().mean))
    assert norm["std"] == pytest.approx(list(weights.transforms().std))
    assert norm["mean"] != pytest.approx(list(data.mean))
    assert norm["source"] == f"from pretrained weights {weights}"


def test_a_torchvision_weights_file_is_recognised_by_its_name(data, tmp_path):
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    file = tmp_path / weights.url.rsplit("/", 1)[1]  # as torch.hub caches it
    file.write_bytes(b"not read")
    norm = normalisation_for(str(file), data, arch="resnet50")
    assert norm["std"] == pytest.approx(list(weights.transforms().std))
    assert str(weights) in norm["source"] and str(file) in norm["source"]


def test_the_cbam_authors_checkpoint_brings_their_imagenet_statistics(data, tmp_path):
    from reference_cbam_authors import AuthorsResNet, authors_checkpoint

    file = tmp_path / "RESNET18_CBAM.pth"
    torch.save(authors_checkpoint(AuthorsResNet(18)), file)
    norm = normalisation_for(str(file), data, arch="resnet18")
    # the authors' train_imagenet.py: Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, ...])
    assert norm["mean"] == [0.485, 0.456, 0.406] and norm["std"] == [0.229, 0.224, 0.225]
    assert "authors' ImageNet statistics" in norm["source"]


def test_an_attnres_checkpoint_brings_its_preprocessing(data, tmp_path):
    file = tmp_path / "run-best.pt"
    torch.save({"model": {"w": torch.zeros(1)},
                "preprocessing": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}, file)
    norm = normalisation_for(str(file), data)
    assert (norm["mean"], norm["std"]) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert norm["source"] == f"from pretrained weights {str(file)!r} (the preprocessing it stores)"


def test_a_plain_state_dict_file_keeps_the_data_statistics(data, tmp_path):
    file = tmp_path / "weights.pth"
    torch.save(attnres.build_model("resnet20").state_dict(), file)
    norm = normalisation_for(str(file), data, arch="resnet20")
    assert (norm["mean"], norm["std"]) == (list(data.mean), list(data.std))
    assert "carries no normalisation" in norm["source"]


@pytest.mark.slow
def test_a_run_from_weights_with_statistics_trains_and_validates_with_them(tiny_data,
                                                                         tmp_path):
    from attnres.checkpoint import load_checkpoint
    from attnres.evaluation import evaluate

    stats = {"mean": [0.25, 0.3, 0.35], "std": [0.5, 0.45, 0.4]}
    weights = tmp_path / "pretrained.pt"
    source = attnres.build_model("resnet20", attention="cbam", num_classes=10)
    torch.save({"model": source.state_dict(), "preprocessing": stats}, weights)
    out = tmp_path / "run"
    summary = run_tiny(tiny_data, out, epochs=1, pretrained=str(weights))

    expected = f"from pretrained weights {str(weights)!r} (the preprocessing it stores)"
    assert summary["normalisation"] == expected
    assert json.loads((out / "summary.json").read_text())["normalisation"] == expected
    prep = load_checkpoint(out / "last.pt")["preprocessing"]
    assert (prep["mean"], prep["std"], prep["normalisation"]) == \
        (stats["mean"], stats["std"], expected)
    # validation normalised the images with these statistics, not the data's own
    data = tiny_dataset(str(tiny_data))
    model = attnres.load_model(out / "last.pt")
    ours = evaluate(model, dataclasses.replace(data, mean=tuple(stats["mean"]),
                                               std=tuple(stats["std"])))
    theirs = evaluate(model, data)
    assert summary["last_val_top1"] == pytest.approx(ours["top1"], abs=1e-9)
    assert ours["loss"] != pytest.approx(theirs["loss"], rel=1e-6)  # barely trained: close
