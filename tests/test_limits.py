"""How long a run is: fractional epochs, --max-steps, --max-time, --subset and the warm-up
cap (training/limits.py), on the tiny digits run of tiny_run.py (3 steps per epoch)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_run import STEPS_PER_EPOCH, run_tiny

from attnres.checkpoint import load_checkpoint
from attnres.training import TrainConfig, lr_factor
from attnres.training.limits import WARMUP_MAX_FRACTION, plan_steps, subset_indices


def config(**values) -> SimpleNamespace:
    return SimpleNamespace(**{"epochs": 1, "warmup_epochs": 0.0, "max_steps": None, **values})


def test_fractional_epochs_take_that_share_of_the_steps():
    for epochs, per_epoch in ((0.1, 11), (0.5, 3), (2.5, 10), (3, 7)):
        plan = plan_steps(config(epochs=epochs), per_epoch)
        assert plan.total_steps == max(1, math.floor(epochs * per_epoch + 0.5))
        assert plan.epochs == math.ceil(plan.total_steps / per_epoch)
        assert sum(plan.steps_in(e) for e in range(plan.epochs)) == plan.total_steps
    assert plan_steps(config(epochs=0.01), 10).total_steps == 1  # never zero steps


def test_fractional_epoch_run_stops_inside_the_epoch(tiny_data, tmp_path):
    summary = run_tiny(tiny_data, tmp_path / "half", epochs=0.5, warmup_epochs=0.0)
    want = math.floor(0.5 * STEPS_PER_EPOCH + 0.5)
    assert summary["steps"]["done"] == want and summary["finished"] is True
    assert summary["steps"]["stop_reason"] == "epochs"
    rows = json.loads((tmp_path / "half" / "summary.json").read_text())
    assert rows["epochs"] == 1
    ckpt = load_checkpoint(tmp_path / "half" / "last.pt")
    assert ckpt["scheduler"]["last_epoch"] == want
    assert ckpt["metrics"][0]["train_images"] == want * 32


def test_max_steps_stops_and_the_schedule_spans_it(tiny_data, tmp_path):
    summary = run_tiny(tiny_data, tmp_path / "steps", max_steps=4, warmup_epochs=0.0)
    assert summary["steps"]["done"] == 4 and summary["steps"]["stop_reason"] == "max_steps"
    assert summary["finished"] is True and summary["epochs"] == 2
    ckpt = load_checkpoint(tmp_path / "steps" / "last.pt")
    assert [r["train_images"] for r in ckpt["metrics"]] == [3 * 32, 1 * 32]
    # the learning rate of the last step is the cosine's value at step 3 of 4
    lrs = [group["lr"] for group in ckpt["optimizer"]["param_groups"]]
    want = 0.05 * lr_factor(4, total_steps=4, warmup_steps=0, schedule="cosine",
                            milestones=[0.5, 0.75], gamma=0.1)
    six = 0.05 * lr_factor(4, total_steps=6, warmup_steps=0, schedule="cosine",
                           milestones=[0.5, 0.75], gamma=0.1)  # had it spanned the 2 epochs
    assert lrs[0] == pytest.approx(want, abs=1e-12) and abs(want - six) > 1e-3


def test_subset_is_stratified_and_deterministic_by_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    picked = subset_indices(labels, 10, seed=0)
    assert picked.numel() == 10
    counts = torch.bincount(labels[picked], minlength=3).tolist()
    assert counts == [5, 3, 2]  # each class keeps its share
    assert torch.equal(picked, subset_indices(labels, 10, seed=0))
    assert not torch.equal(picked, subset_indices(labels, 10, seed=1))
    assert subset_indices(labels, 100, seed=0) is None  # all of them: no subset


def test_subset_run_trains_on_that_many_images(tiny_data, tmp_path):
    saved = torch.load(tiny_data, weights_only=True)
    summary = run_tiny(tiny_data, tmp_path / "sub", epochs=1, subset=64, warmup_epochs=0.0)
    assert summary["steps"]["steps_per_epoch"] == 64 // 32
    assert summary["config"]["subset"] == 64
    # the validation split is the whole one still
    ckpt = load_checkpoint(tmp_path / "sub" / "last.pt")
    assert ckpt["metrics"][0]["train_images"] == 64
    assert len(saved["val_labels"]) == 64


def test_warmup_is_capped_at_a_quarter_of_the_run_and_warns_once(tiny_data, tmp_path,
                                                                 capsys):
    plan = plan_steps(config(epochs=1, warmup_epochs=1.0), 10)
    assert plan.warmup_steps == int(WARMUP_MAX_FRACTION * 10) == 2
    assert "shorter than its warm-up" in plan.warning()
    assert plan_steps(config(epochs=8, warmup_epochs=1.0), 10).warning() is None

    run_tiny(tiny_data, tmp_path / "warm", epochs=1, warmup_epochs=2.0, quiet=False)
    err = capsys.readouterr().err
    assert err.count("warning: warm-up of 6 steps") == 1, err
    steps = json.loads((tmp_path / "warm" / "summary.json").read_text())["steps"]
    assert steps["warmup_steps"] == int(WARMUP_MAX_FRACTION * STEPS_PER_EPOCH)
    assert steps["total_steps"] == STEPS_PER_EPOCH


def test_max_time_stops_after_a_step_and_resume_is_exact(tiny_data, reference_run, tmp_path):
    out = tmp_path / "timed"
    summary = run_tiny(tiny_data, out, max_time=1e-9)
    assert summary["steps"]["done"] == 1 and summary["steps"]["stop_reason"] == "max_time"
    assert summary["finished"] is True and summary["last_val_top1"] is not None
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (0, 1)  # inside epoch 1, after step 1
    assert json.loads((out / "summary.json").read_text())["steps"]["stop_reason"] == "max_time"

    run_tiny(tiny_data, out, resume=str(out))  # no --max-time: this call runs to the end
    reference, resumed = (load_checkpoint(p / "last.pt") for p in (reference_run, out))
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert len(resumed["metrics"]) == 2
    for a, b in zip(reference["metrics"], resumed["metrics"]):
        assert (a["train_loss"], a["val_top1"], a["train_images"]) == (
            b["train_loss"], b["val_top1"], b["train_images"])


def test_bad_limits_are_one_line_errors():
    from attnres.training import validate_config

    for field, value in (("max_steps", 0), ("max_time", -1.0), ("subset", 0),
                         ("epochs", 0.0), ("epochs", float("nan"))):
        with pytest.raises(ValueError, match=field):
            validate_config(TrainConfig(**{field: value}))
