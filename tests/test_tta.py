"""Flip test-time augmentation: `--tta flip` validates on the mean logits of each image and
its mirror image, records the plain top-1 beside it, and eval scores a run as it was
validated; old runs read as validated without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attnres.ablation.results import recipe_differences, run_identity
from attnres.training import RECIPES, TrainConfig, upgrade_config_dict
from attnres.training.validation import tta_logits
from tiny_run import run_tiny, tiny_dataset


def test_flip_logits_are_the_mean_over_the_mirror_image():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 5))
    x = torch.randn(2, 3, 6, 6)
    logits, plain = tta_logits(net, x, "flip")
    # the mirror image made in numpy, column order reversed
    mirrored = torch.from_numpy(np.ascontiguousarray(x.numpy()[:, :, :, ::-1]))
    with torch.no_grad():
        expected = (net(x) + net(mirrored)) / 2
        torch.testing.assert_close(plain, net(x))
    torch.testing.assert_close(logits, expected)
    same, same_plain = tta_logits(net, x, "none")
    assert torch.equal(same, same_plain)
    with pytest.raises(ValueError, match="'mirror'.*none, flip"):
        tta_logits(net, x, "mirror")


def test_a_tta_run_records_both_and_eval_reproduces_them(tiny_data, tmp_path, monkeypatch,
                                                         capsys):
    import attnres.data
    from attnres.checkpoint import load_model
    from attnres.evaluation import evaluate, evaluate_checkpoint

    out = tmp_path / "run"
    summary = run_tiny(tiny_data, out, tta="flip", epochs=1)
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_top1_no_tta" in header
    assert summary["last_val_top1_no_tta"] is not None
    assert json.loads((out / "config.json").read_text())["tta"] == "flip"
    data = tiny_dataset(str(tiny_data))
    model = load_model(out / "last.pt")
    flip = evaluate(model, data, tta="flip", amp="fp32")
    plain = evaluate(model, data, amp="fp32")
    # the run's numbers are what eval measures with and without TTA (64 images: 1/64 steps)
    assert flip["top1"] == pytest.approx(summary["last_val_top1"], abs=1e-6)
    assert flip["top1_no_tta"] == pytest.approx(plain["top1"], abs=1e-6)
    assert plain["top1"] == pytest.approx(summary["last_val_top1_no_tta"], abs=1e-6)
    assert "top1_no_tta" not in plain and plain["tta"] == "none"
    # eval of a checkpoint: the run's own TTA unless asked otherwise
    monkeypatch.setattr(attnres.data, "load_dataset", tiny_dataset)
    monkeypatch.setattr("attnres.evaluation.load_dataset", tiny_dataset)
    result = evaluate_checkpoint(out / "last.pt", str(tiny_data), out=tmp_path / "e1")
    assert result["tta"] == "flip" and result["top1"] == pytest.approx(flip["top1"])
    result = evaluate_checkpoint(out / "last.pt", str(tiny_data), out=tmp_path / "e2",
                                 tta="none")
    assert result["tta"] == "none" and result["top1"] == pytest.approx(plain["top1"])
    with pytest.raises(ValueError, match="'both'"):
        evaluate(model, data, tta="both")
    # the command line says what it scored
    from attnres.cli import main

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(tiny_data),
                 "--out", str(tmp_path / "e3"), "--no-amp"]) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation: flip" in printed
    assert f"{flip['top1']:.2f}% (flip TTA; {plain['top1']:.2f}% without)" in printed
    assert json.loads((tmp_path / "e3" / "eval.json").read_text())["tta"] == "flip"


def test_bad_tta_is_a_one_line_error(capsys):
    from attnres.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--tta", "mirror", "--quiet"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mirror" in err and "flip" in err
    with pytest.raises(ValueError, match="augmentation .mirror.; allowed: none, flip"):
        from attnres.training import validate_config
        validate_config(TrainConfig(tta="mirror"))


def test_old_runs_read_as_validated_without_tta():
    old = {k: v for k, v in TrainConfig(**RECIPES["cifar-fast"]).__dict__.items()
           if k != "tta"}
    assert upgrade_config_dict(old)["tta"] == "none"
    new = TrainConfig(**RECIPES["cifar-fast"]).__dict__
    assert run_identity(old)["tta"] == "none" and run_identity(new)["tta"] == "flip"
    # an old run is not counted as a run of today's recipe
    assert any(d.startswith("tta") for d in recipe_differences(old, new))


def _write_folder(root, data, indices, layout=""):
    """Digits images as PNG files in ImageFolder layout under `root/layout`."""
    from PIL import Image

    for i in indices:
        label = int(data.val.labels[i])
        folder = root / layout / data.classes[label] if layout else root / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.val.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")


def test_eval_of_new_data_scores_every_image(reference_run, tiny_data, tmp_path):
    """New data without its own validation images is scored whole, not a random tenth."""
    from attnres.evaluation import evaluate_checkpoint

    data = tiny_dataset(str(tiny_data))
    every_class = [next(i for i in range(64) if int(data.val.labels[i]) == c)
                   for c in range(len(data.classes))]
    rest = [i for i in range(64) if i not in every_class][:30]
    plain = tmp_path / "plain"
    _write_folder(plain, data, every_class + rest)
    whole = evaluate_checkpoint(reference_run / "last.pt", str(plain), out=tmp_path / "e1",
                                cache_dir=tmp_path / "cache")
    assert whole["split"] == "all" and whole["n"] == len(every_class + rest)
    # an explicit split, or data that brings its own validation folder: that split
    part = evaluate_checkpoint(reference_run / "last.pt", str(plain), out=tmp_path / "e2",
                               val_split=10, cache_dir=tmp_path / "cache")
    assert part["split"] == "val" and part["n"] == 10
    given = tmp_path / "given"
    _write_folder(given, data, every_class + rest, "train")
    _write_folder(given, data, every_class, "val")
    result = evaluate_checkpoint(reference_run / "last.pt", str(given), out=tmp_path / "e3",
                                 cache_dir=tmp_path / "cache")
    assert result["split"] == "val" and result["n"] == len(every_class)
