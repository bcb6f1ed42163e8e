"""Checkpoint files: atomic saving (even when the writer is killed), safe and clear loading,
`load_model` rebuilding a model from a checkpoint alone (checkpoints of earlier versions
too), and reading a run folder's files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from attnres.checkpoint import (
    CheckpointError,
    checkpoint_file,
    load_checkpoint,
    load_model,
    read_checkpoint_config,
    read_metrics,
    read_summary,
    save_checkpoint,
)
from attnres.models import build_model


def test_roundtrip_and_no_temporary_files_left(tmp_path):
    obj = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "rng": (1, [2, 3], None)}
    save_checkpoint(obj, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(tmp_path / "sub" / "last.pt")
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"]) and loaded["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["last.pt"]
    assert (tmp_path / "sub" / "last.pt").stat().st_mode & 0o044  # not left private (0600)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_written_file_gets_the_permissions_open_would_give(tmp_path, umask):
    """Checkpoints, JSON, text and streamed files alike (none left 0600 by a temporary
    file), new or replacing a private one: the mode `open()` gives under the same umask."""
    import stat

    from attnres.utils import atomic_write, atomic_write_json

    old = os.umask(umask)
    try:
        with open(tmp_path / "by-open", "w"):
            pass
        want = stat.S_IMODE((tmp_path / "by-open").stat().st_mode)
        writers = {"ckpt.pt": lambda p: save_checkpoint({"w": torch.ones(2)}, p),
                   "r.json": lambda p: atomic_write_json(p, {"a": 1}),
                   "r.md": lambda p: atomic_write(p, "text"),
                   "r.bin": lambda p: atomic_write(p, b"\0\1"),
                   "r.png": lambda p: atomic_write(p, lambda f: f.write(b"png"))}
        for name, write in writers.items():
            path = tmp_path / name
            write(path)
            assert stat.S_IMODE(path.stat().st_mode) == want, (name, oct(umask))
            path.chmod(0o600)
            write(path)  # replaced: the new file's mode, not the old one's
            assert stat.S_IMODE(path.stat().st_mode) == want, (name, oct(umask))
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*writers, "by-open"])


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "payload": RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 8,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint({"epoch": 2, "w": torch.zeros(3), "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_killing_the_writer_leaves_a_whole_checkpoint(tmp_path):
    """A writer saving ~8 MB checkpoints in a loop (so that most moments fall inside a
    save) is SIGKILLed; the file on disk is one complete checkpoint, all from one save."""
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        from attnres.checkpoint import save_checkpoint
        i = 0
        while True:
            save_checkpoint({{"w": torch.full((2048, 1024), float(i)), "i": i}}, {str(path)!r})
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() and proc.stdout.readline(), "the writer saved nothing"
        time.sleep(0.03)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    ckpt = load_checkpoint(path)
    assert ckpt["i"] >= 1
    assert torch.equal(ckpt["w"], torch.full((2048, 1024), float(ckpt["i"])))


def test_load_model_rebuilds_from_build_args_alone(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", attention="se", placement="block", stages=[2, 3],
                        num_classes=7, attention_kwargs={"reduction": 4})
    model.train()
    with torch.no_grad():  # move the batch-norm statistics away from their initial values
        model(torch.randn(8, 3, 16, 16))
    model.eval()
    preprocessing = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "image_size": 16,
                     "classes": [str(i) for i in range(7)]}
    save_checkpoint({"model": model.state_dict(), "build_args": model.build_args,
                     "preprocessing": preprocessing}, tmp_path / "run" / "best.pt")

    loaded = load_model(tmp_path / "run")  # a run folder means its best.pt
    assert not loaded.training and loaded.preprocessing == preprocessing
    assert hasattr(loaded.layer2[0], "attn") and isinstance(loaded.layer1[0].attn,
                                                            torch.nn.Identity)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_rejects_plain_state_dicts(tmp_path):
    save_checkpoint({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an attnres training checkpoint"):
        load_model(tmp_path / "plain.pt")
    os.makedirs(tmp_path / "empty-run")
    with pytest.raises(FileNotFoundError, match="best.pt"):
        load_model(tmp_path / "empty-run")


# The options as attnres 0.1's train.py stored them (before `recipe` existed).
OLD_CONFIG = {
    "arch": "resnet20", "attention": "se", "placement": "block", "stages": [2, 3],
    "blocks": None, "preset": None, "attention_kwargs": {"reduction": 4}, "pretrained": None,
    "data": "digits", "val_split": None, "split_seed": 0, "image_size": 16, "cache_dir": None,
    "epochs": 3, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "label_smoothing": 0.1, "schedule": "cosine", "warmup_epochs": 1.0,
    "step_milestones": [0.5, 0.75], "step_gamma": 0.1, "attention_lr_mult": 1.0, "seed": 0,
    "device": "auto", "amp": False, "amp_dtype": "bfloat16", "channels_last": True,
    "compile": False, "deterministic": False, "out": "runs/old", "resume": None,
    "monitor": False, "skip_nonfinite": 0, "tensorboard": True, "quiet": False,
}


def old_training_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint in the exact layout the 0.1 trainer wrote, built here field by field."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()  # so that the optimizer state holds momentum buffers
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    row = {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_top1": 20.0, "val_loss": 2.1,
           "val_top1": 25.0, "val_top5": 60.0, "train_images": 64,
           "train_step_time_s": 0.5, "epoch_time_s": 0.7, "train_images_per_s": 128.0}
    keys = torch.randint(0, 2**31, (624,), dtype=torch.int64)
    return {"format": 1, "model": model.state_dict(), "build_args": dict(model.build_args),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
            "epoch": 1, "batch": 0, "partial": [0.0, 0.0, 0.0, 0.0],
            "rng": {"torch": torch.get_rng_state(), "cuda": [],
                    "numpy": {"keys": keys, "pos": 624, "has_gauss": 0,
                              "cached_gaussian": 0.0},
                    "python": [3, list(range(625)), None]},
            "config": dict(OLD_CONFIG),
            "preprocessing": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
                              "image_size": 16, "classes": [str(i) for i in range(10)]},
            "metrics": [row], "nonfinite_steps": 0, "world_size": 1}


def test_checkpoints_of_the_previous_version_still_load(tmp_path):
    from attnres.training import TrainConfig
    from attnres.training.resume import resolve_resume

    torch.manual_seed(0)
    model = build_model("resnet20", attention="se", placement="block", stages=[2, 3],
                        num_classes=10, attention_kwargs={"reduction": 4})
    ckpt = old_training_checkpoint(model)
    run = tmp_path / "old"
    run.mkdir()
    for name in ("best.pt", "last.pt"):  # written by torch.save itself, not this version
        torch.save(ckpt, run / name)

    loaded = load_model(run)
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.preprocessing == ckpt["preprocessing"]
    assert read_checkpoint_config(run) == OLD_CONFIG
    # a run of the previous version resumes: the options it lacks take their defaults
    config, resumed = resolve_resume(TrainConfig(resume=str(run)))
    assert config.recipe is None and config.attention == "se" and config.stages == [2, 3]
    assert config.out == str(run) and resumed["epoch"] == 1


def test_checkpoint_file_of_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no best.pt or last.pt"):
        checkpoint_file(run)
    (run / "last.pt").write_bytes(b"")
    assert checkpoint_file(run) == run / "last.pt"
    (run / "best.pt").write_bytes(b"")
    assert checkpoint_file(run) == run / "best.pt"
    assert checkpoint_file(run, names=("last.pt",)) == run / "last.pt"
    assert checkpoint_file(run / "other.pt") == run / "other.pt"  # a file: as it is


def test_reading_a_real_run_folder(reference_run, tmp_path):
    last = load_checkpoint(reference_run / "last.pt")
    assert read_metrics(reference_run) == last["metrics"]  # the csv holds the same numbers
    summary = read_summary(reference_run)
    assert summary["config"] == last["config"] == read_checkpoint_config(reference_run)
    assert summary["epochs"] == len(last["metrics"]) and summary["finished"] is True
    assert read_summary(tmp_path) is None and read_metrics(tmp_path) == []
    (tmp_path / "summary.json").write_text("{not json")
    assert read_summary(tmp_path) is None
