"""DistributedDataParallel: 2 CPU processes (gloo) under torchrun train the tiny digits run
through the CLI and must end with bit-identical weights, with metrics reduced over both."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from attnres.models import build_model
from attnres.checkpoint import load_checkpoint, load_model

sys.path.insert(0, os.path.dirname(__file__))
from tiny_run import tiny_cli_args, tiny_dataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tiny_data, tmp_path):
    # 33 validation images in batches of 16: rank 0 gets 17 (2 batches), rank 1 gets 16
    # (1 batch); the unequal batch counts must not hang, and each image counts once
    saved_data = torch.load(tiny_data, weights_only=True)
    saved_data["val_images"], saved_data["val_labels"] = (saved_data["val_images"][:33],
                                                          saved_data["val_labels"][:33])
    data_file = tmp_path / "tiny-odd.pt"
    torch.save(saved_data, data_file)
    out = tmp_path / "ddp"
    args = [*tiny_cli_args(data_file, out), "--epochs", "1"]
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import torch
        torch.set_num_threads(1)
        import attnres.data, attnres.training.model_source as model_source
        from attnres.cli import main
    """) + inspect.getsource(tiny_dataset) + textwrap.dedent(f"""
        attnres.data.load_dataset = tiny_dataset
        built = []
        real_build = model_source.build_model
        def keep_model(*args, **kwargs):
            built.append(real_build(*args, **kwargs))
            return built[-1]
        model_source.build_model = keep_model  # what the trainer builds its model with
        rc = main({args!r})
        torch.save(built[0].state_dict(), os.path.join({str(tmp_path)!r},
                                                       "rank" + os.environ["RANK"] + ".pt"))
        sys.exit(rc)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    saved = load_checkpoint(out / "last.pt")["model"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key
    torch.manual_seed(0)  # the run's own seed: the weights it started from
    start = build_model("resnet20", attention="cbam", num_classes=10).state_dict()
    assert not torch.equal(start["conv1.weight"], rank0["conv1.weight"])

    # metrics cover the whole data set, summed over both ranks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] is True
    assert load_checkpoint(out / "last.pt")["metrics"][0]["train_images"] == 96
    data = tiny_dataset(str(data_file))
    assert len(data.val) == 33
    model = load_model(out / "last.pt")
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((data.val.images.float() / 255 - mean) / std)
    top1 = (logits.argmax(1) == data.val.labels).double().mean().item() * 100
    assert summary["last_val_top1"] == pytest.approx(top1, abs=1e-6)
