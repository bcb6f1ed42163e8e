"""Training on streamed data (docs/SCALE.md): which loader a run uses and records, the checks
of a resumed run (same loader, same data), evaluation of a streamed run, the ImageNet recipe,
and `attnres ablate --recipe`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnres.ablation.run as ablation_run
from attnres.checkpoint import load_checkpoint, load_model
from attnres.cli import main
from attnres.data import IMAGENET_MEAN, IMAGENET_STD, list_source, make_photo_folder
from attnres.training import RECIPES, TrainConfig, train, validate_config
from attnres.training.data_setup import memory_fingerprint
from attnres.training.recipe import LR_REFERENCE_BATCH, make_scheduler

sys.path.insert(0, os.path.dirname(__file__))
from test_train import cli_config  # noqa: E402
from tiny_run import run_tiny, tiny_dataset  # noqa: E402

# torchvision's reference ResNet recipe as docs/SCALE.md writes it, typed out again here
IMAGENET_RESNET = dict(arch="resnet50", image_size=224, epochs=90, batch_size=256, lr=0.1,
                       momentum=0.9, nesterov=False, weight_decay=1e-4, label_smoothing=0.1,
                       schedule="step", step_milestones=[30 / 90, 60 / 90, 80 / 90],
                       step_gamma=0.1, warmup_epochs=5.0, loader="stream", workers=8,
                       mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], amp="bf16",
                       channels_last=True)


def make_folder(root: Path, side: int = 12, per_class: int = 8) -> Path:
    """3 classes of noisy colours, `per_class` PNGs of side x side px each."""
    rng = np.random.default_rng(1)
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (side, side, 3)), 0, 255)
            path = root / f"class{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def stream_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(arch="resnet20", data=str(data), loader="stream", workers=0, val_split=6,
                  epochs=1, batch_size=6, lr=0.05, warmup_epochs=0.5, out=str(out),
                  cache_dir=str(out.parent / "cache"), quiet=True, tensorboard=False)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory) -> Path:
    """One epoch of ResNet-20 on a streamed folder of 24 crops of 80-120 px of three real
    photographs, at 72 px (ImageNet transforms: RandomResizedCrop for training, Resize(82) +
    CenterCrop(72) for validation)."""
    root = tmp_path_factory.mktemp("streamed")
    data = make_photo_folder(root / "images", per_class=8, crop=(80, 120),
                             photos=("astronaut", "chelsea", "coffee"))
    train(stream_config(data, root / "run", image_size=72))
    return root / "run"


def test_streamed_run_records_its_loader_and_data(streamed_run):
    config = json.loads((streamed_run / "config.json").read_text())
    summary = json.loads((streamed_run / "summary.json").read_text())
    ckpt = load_checkpoint(streamed_run / "last.pt")
    listing = list_source(config["data"], cache_dir=config["cache_dir"])
    assert config["loader"] == summary["config"]["loader"] == ckpt["config"]["loader"] \
        == "stream"
    for record in (summary["data"], ckpt["data"]):
        assert record["loader"] == "stream"
        assert record["fingerprint"] == listing.fingerprint
        assert (record["n_train"], record["n_val"]) == (18, 6)
        assert record["stats"] == "estimated from 18 training images"
    assert ckpt["metrics"][0]["train_images"] == 18


def test_streamed_validation_equals_an_independent_computation(streamed_run):
    """val top-1 and loss of the run = the model's on the validation images read with PIL
    and given to torchvision's functional resize (shorter side 82) and centre crop (72),
    the reference the streaming loader follows, normalised with the run's statistics;
    `attnres eval` streams the same way."""
    from torchvision.transforms.v2 import functional as TF

    from attnres.data import stratified_split
    from attnres.evaluation import evaluate_checkpoint

    config = json.loads((streamed_run / "config.json").read_text())
    summary = json.loads((streamed_run / "summary.json").read_text())
    model = load_model(streamed_run / "last.pt")
    listing = list_source(config["data"], cache_dir=config["cache_dir"])
    labels = torch.from_numpy(listing.train.labels)
    _, val_idx = stratified_split(labels, 6, 0)
    images = []
    for i in val_idx.tolist():
        with Image.open(Path(config["data"]) / listing.train.name(i)) as im:
            pixels = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        images.append(TF.center_crop(TF.resize(pixels, 82, antialias=True), 72).float())
    mean = torch.tensor(model.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing["std"]).view(1, 3, 1, 1)
    x = (torch.stack(images) / 255 - mean) / std
    with torch.no_grad():
        logits = model(x)
    top1 = 100 * (logits.argmax(1) == labels[val_idx]).double().mean().item()
    row = load_checkpoint(streamed_run / "last.pt")["metrics"][0]
    assert summary["last_val_top1"] == row["val_top1"] == pytest.approx(top1, abs=1e-9)
    loss = torch.nn.functional.cross_entropy(logits, labels[val_idx]).item()
    assert row["val_loss"] == pytest.approx(loss, rel=1e-5)  # a crop 1 px off: 2e-4

    result = evaluate_checkpoint(streamed_run / "last.pt", out=streamed_run / "eval", workers=0)
    assert result["loader"] == "stream" and result["n"] == 6
    assert result["top1"] == pytest.approx(summary["last_val_top1"], abs=1e-9)
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)


def test_memory_run_records_its_loader_and_a_fingerprint_of_the_pixels(tiny_data, tmp_path):
    out = tmp_path / "memory"
    run_tiny(tiny_data, out, epochs=1)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["loader"] == "memory" and ckpt["data"]["loader"] == "memory"
    data = tiny_dataset(str(tiny_data))
    assert ckpt["data"]["fingerprint"] == memory_fingerprint(data)
    data.val.images[0, 0, 0, 0] ^= 1  # one pixel of one image
    assert memory_fingerprint(data) != ckpt["data"]["fingerprint"]


def test_auto_keeps_small_folders_in_memory_and_streams_when_asked(tmp_path):
    data = make_folder(tmp_path / "images")
    common = dict(epochs=1, cache_dir=str(tmp_path / "cache"))
    auto = train(stream_config(data, tmp_path / "auto", loader="auto", **common))
    assert auto["config"]["loader"] == "memory" and auto["data"]["loader"] == "memory"
    with pytest.raises(ValueError, match="named data set: it cannot be streamed"):
        train(stream_config("digits", tmp_path / "digits"))


def test_resume_refuses_another_loader_or_changed_data(tmp_path, capsys):
    data = make_folder(tmp_path / "images")
    out = tmp_path / "run"
    train(stream_config(data, out))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data-loader", "memory",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'stream'" in err and "'memory'" in err
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(data / "class0" / "new.png")
    before = load_checkpoint(out / "last.pt")["data"]["fingerprint"]
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "changed since the run was saved" in err
    assert before[:12] in err and list_source(data, cache_dir=tmp_path / "cache"
                                              ).fingerprint[:12] in err
    (data / "class0" / "new.png").unlink()
    summary = train(TrainConfig(resume=str(out), epochs=2, workers=1))  # workers may change
    assert summary["finished"] and summary["config"]["workers"] == 1


def test_checkpoint_from_before_streaming_resumes_in_memory(tiny_data, tmp_path):
    """An old checkpoint: no data record, no loader/workers/mean/std in its config."""
    out = tmp_path / "old"
    run_tiny(tiny_data, out, epochs=1)
    ckpt = load_checkpoint(out / "last.pt")
    del ckpt["data"]
    for key in ("loader", "workers", "mean", "std"):
        del ckpt["config"][key]
    torch.save(ckpt, out / "last.pt")
    summary = run_tiny(tiny_data, out, resume=str(out), epochs=2)
    assert summary["finished"] and summary["config"]["loader"] == "memory"


@pytest.mark.parametrize("overrides, message", [
    ({"loader": "strem"}, "did you mean 'stream'"),
    ({"workers": -1}, "workers=-1"),
    ({"mean": [0.5, 0.5, 0.5]}, "give both or neither"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "must be 3 numbers"),
    ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "must be > 0"),
])
def test_bad_data_options_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(TrainConfig(**overrides))


def test_imagenet_recipe_resolves_to_torchvisions_values():
    assert RECIPES["imagenet-resnet"] == IMAGENET_RESNET
    assert (IMAGENET_RESNET["mean"], IMAGENET_RESNET["std"]) == (list(IMAGENET_MEAN),
                                                                 list(IMAGENET_STD))
    config = cli_config("--recipe", "imagenet-resnet")
    assert config == TrainConfig(**IMAGENET_RESNET, recipe="imagenet-resnet")
    validate_config(config)
    # lr 0.1 per 256 images, unless an lr is given
    assert LR_REFERENCE_BATCH["imagenet-resnet"] == 256
    assert cli_config("--recipe", "imagenet-resnet", "--batch-size", "1024").lr == \
        pytest.approx(0.4)
    assert cli_config("--recipe", "imagenet-resnet", "--batch-size", "64").lr == \
        pytest.approx(0.025)
    assert cli_config("--recipe", "imagenet-resnet", "--batch-size", "1024", "--lr",
                      "0.3").lr == 0.3
    override = cli_config("--recipe", "imagenet-resnet", "--data-loader", "auto",
                          "--workers", "2", "--arch", "resnet18")
    assert (override.loader, override.workers, override.arch) == ("auto", 2, "resnet18")

    # the schedule: linear warm-up over 5 epochs, then x0.1 at epochs 30, 60 and 80
    steps = 10
    schedule = make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                              config, steps).lr_lambdas[0]
    assert schedule(0) == pytest.approx(1 / 50) and schedule(49) == pytest.approx(1.0)
    for epoch, factor in ((5, 1.0), (29, 1.0), (30, 0.1), (59, 0.1), (60, 0.01),
                          (79, 0.01), (80, 0.001), (89, 0.001)):
        assert schedule(epoch * steps) == pytest.approx(factor), epoch
        assert schedule(epoch * steps + steps - 1) == pytest.approx(factor), epoch


def test_ablate_accepts_the_imagenet_recipe(tmp_path, monkeypatch):
    """`attnres ablate --preset modules --arch resnet50 --recipe imagenet-resnet`: every
    configuration starts from the recipe, with the grid's attention and the options given."""
    data = make_folder(tmp_path / "images")
    trained = []

    class Planned(Exception):
        """Raised by the stand-in trainer: what would have run is known."""

    def fake_train(config):
        trained.append(config)
        raise Planned

    monkeypatch.setattr(ablation_run._trainer(), "train", fake_train)
    with pytest.raises(Planned):
        main(["ablate", "--preset", "modules", "--arch", "resnet50", "--recipe",
              "imagenet-resnet", "--data", str(data), "--batch-size", "512", "--out",
              str(tmp_path / "grid"), "--no-latency", "--no-explain"])
    config = trained[0]
    assert config.recipe == "imagenet-resnet" and config.attention is None
    assert (config.arch, config.batch_size, config.lr) == ("resnet50", 512, pytest.approx(0.2))
    for key in ("epochs", "schedule", "step_milestones", "warmup_epochs", "loader", "mean"):
        assert getattr(config, key) == IMAGENET_RESNET[key], key

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ablate", "--preset", "modules", "--out", str(tmp_path / "g2")]) == 2
