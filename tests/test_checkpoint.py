"""Checkpoint files: atomic saving (even when the writer is killed), safe and clear loading,
and `load_model` rebuilding a model from a checkpoint alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from attnres.models import build_model
from attnres.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint


def test_roundtrip_and_no_temporary_files_left(tmp_path):
    obj = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "rng": (1, [2, 3], None)}
    save_checkpoint(obj, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(tmp_path / "sub" / "last.pt")
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"]) and loaded["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["last.pt"]
    assert (tmp_path / "sub" / "last.pt").stat().st_mode & 0o044  # not left private (0600)


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
