"""Two "nodes" on this machine: two torchrun processes (`--nnodes=2 --nproc-per-node=1`, c10d
rendezvous on a loopback port, gloo on CPU) train a streamed image folder through
`attnres train`. Both ranks end with identical weights, only rank 0 writes run files, each
rank reads its own shard of every epoch; one node killed (SIGKILL to its torchrun agent and
its worker) after the first epoch's checkpoint, then both resumed with `--resume`,
finish with exactly the weights, and read exactly the images, of the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnres.checkpoint import load_checkpoint
from attnres.data import list_source

EPOCHS, N_TRAIN, N_VAL, BATCH = 2, 32, 8, 8  # 16 images and 2 steps of 4 per rank and epoch

# Runs `attnres ARGS` (as `python -m attnres` does) and records, per rank, in PROBE_DIR:
# the final weights, every training image read as [epoch, index], and what was written
# under PROBE_OUT (seen by an audit hook: opens for writing, renames, new folders).
PROBE = '''
import json, os, sys, time
import torch
torch.set_num_threads(1)
import attnres.data.stream as stream
import attnres.models
from attnres.cli import main

probe, rank = os.environ["PROBE_DIR"], os.environ["RANK"]
out = os.path.realpath(os.environ["PROBE_OUT"])
pause_from = int(os.environ.get("PROBE_PAUSE_FROM_EPOCH", "-1"))
reads, written, built = [], [], []

def under_out(path):
    return isinstance(path, (str, bytes, os.PathLike)) and \\
        os.path.realpath(os.fsdecode(path)).startswith(out)

def audit(event, args):
    if event == "open" and under_out(args[0]):
        mode, flags = str(args[1] or ""), args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            written.append(("open", os.fsdecode(args[0])))
    elif event == "os.rename" and under_out(args[1]):
        written.append(("rename", os.fsdecode(args[1])))
    elif event == "os.mkdir" and under_out(args[0]):
        written.append(("mkdir", os.fsdecode(args[0])))

read_image = stream.StreamDataset.__getitem__
def getitem(self, key):
    if self.train:
        reads.append(list(key))
        if key[0] >= pause_from >= 0:
            time.sleep(0.5)  # holds the run inside this epoch until the test kills a node
    return read_image(self, key)
stream.StreamDataset.__getitem__ = getitem

import attnres.training.model_source as model_source
build = model_source.build_model
def keep(*args, **kwargs):
    built.append(build(*args, **kwargs))
    return built[-1]
model_source.build_model = keep  # what the trainer builds its model with
rebuild = model_source.rebuild_model
def keep_rebuilt(*args, **kwargs):  # a resumed run rebuilds it from the checkpoint
    built.append(rebuild(*args, **kwargs))
    return built[-1]
model_source.rebuild_model = keep_rebuilt

with open(os.path.join(probe, f"pids{rank}.json"), "w") as f:
    json.dump({"worker": os.getpid(), "agent": os.getppid()}, f)
sys.addaudithook(audit)
rc = main(sys.argv[1:])
torch.save(built[0].state_dict(), os.path.join(probe, f"weights{rank}.pt"))
with open(os.path.join(probe, f"rank{rank}.json"), "w") as f:
    json.dump({"reads": reads, "written": written}, f)
sys.exit(rc)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_folder(root: Path) -> Path:
    """4 classes of noisy colours, 10 PNGs of 12 x 12 px each (40 images)."""
    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    for c, colour in enumerate(colours):
        for i in range((N_TRAIN + N_VAL) // len(colours)):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (12, 12, 3)), 0, 255)
            path = root / f"class{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def launch(tmp: Path, probe_dir: Path, out: Path, args: list[str],
           **env_extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents ("nodes") of one rendezvous, each in its own process group."""
    probe_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo",
               PROBE_DIR=str(probe_dir), PROBE_OUT=str(out), **env_extra,
               PYTHONPATH=os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]))
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               f"--rdzv-id={probe_dir.name}", "--local-addr=127.0.0.1", "--max-restarts=0",
               "-m", "rank_probe", *args]
    return [subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for _ in range(2)]


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    """(return code, output) of each node, killing any node still running after `timeout`."""
    results = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            output, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            output, _ = p.communicate()
        results.append((p.returncode, output))
    return results


def stop_workers(probe_dir: Path) -> None:
    """SIGKILL any worker of this launch still running (workers have their own session, so
    they outlive a killed agent); none should be left after `finish`."""
    for file in probe_dir.glob("pids*.json"):
        pid = json.loads(file.read_text())["worker"]
        try:
            if b"rank_probe" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def train_args(data: Path, out: Path, cache: Path) -> list[str]:
    return ["train", "--data", str(data), "--data-loader", "stream", "--workers", "0",
            "--arch", "resnet20", "--image-size", "12", "--val-split", str(N_VAL),
            "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", "0.05",
            "--warmup-epochs", "0.5", "--seed", "0", "--cache-dir", str(cache), "--out",
            str(out), "--quiet", "--no-tensorboard"]


def probe(folder: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per rank ("0", "1"): the recorded reads/writes, and the final weights."""
    records = {r: json.loads((folder / f"rank{r}.json").read_text()) for r in "01"}
    weights = {r: torch.load(folder / f"weights{r}.pt", weights_only=True) for r in "01"}
    return records, weights


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_nodes_train_kill_one_and_resume(tmp_path):
    try:
        _two_nodes_train_kill_one_and_resume(tmp_path)
    finally:
        for probe_dir in tmp_path.glob("probe-*"):
            stop_workers(probe_dir)


def _two_nodes_train_kill_one_and_resume(tmp_path: Path) -> None:
    (tmp_path / "rank_probe.py").write_text(textwrap.dedent(PROBE))
    data, cache = make_folder(tmp_path / "images"), tmp_path / "cache"
    list_source(data, cache_dir=cache)  # listed once here, as ahead of a cluster job

    # uninterrupted
    full = tmp_path / "full"
    results = finish(launch(tmp_path, tmp_path / "probe-full", full,
                            train_args(data, full, cache)))
    assert all(rc == 0 for rc, _ in results), "\n".join(o for _, o in results)
    records, weights = probe(tmp_path / "probe-full")
    assert same_weights(weights["0"], weights["1"])
    saved = load_checkpoint(full / "last.pt")
    assert same_weights(weights["0"], saved["model"])
    assert saved["world_size"] == 2 and saved["data"]["loader"] == "stream"
    assert saved["data"]["fingerprint"] == list_source(data, cache_dir=cache).fingerprint
    assert json.loads((full / "config.json").read_text())["loader"] == "stream"
    summary = json.loads((full / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    assert [row["train_images"] for row in saved["metrics"]] == [N_TRAIN] * EPOCHS

    # only rank 0 writes run files
    assert records["1"]["written"] == []
    renamed = {Path(p).name for kind, p in records["0"]["written"] if kind == "rename"}
    assert {"config.json", "last.pt", "best.pt", "metrics.csv", "summary.json"} <= renamed

    # each rank reads its own half of every epoch: disjoint, covering, reshuffled
    orders = []
    for epoch in range(EPOCHS):
        mine = {r: [i for e, i in records[r]["reads"] if e == epoch] for r in "01"}
        assert len(mine["0"]) == len(mine["1"]) == N_TRAIN // 2
        assert not set(mine["0"]) & set(mine["1"])
        assert sorted(mine["0"] + mine["1"]) == list(range(N_TRAIN))
        orders.append(mine["0"])
    assert orders[0] != orders[1]

    # one node killed in epoch 2 (after epoch 1's checkpoint), then both resumed
    killed = tmp_path / "killed"
    procs = launch(tmp_path, tmp_path / "probe-killed", killed, train_args(data, killed, cache),
                   PROBE_PAUSE_FROM_EPOCH="1")
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "\n".join(finish(procs, timeout=5)[i][1] for i in range(2))
        time.sleep(0.05)
    # the node of rank 1 dies: its worker (torchrun starts workers in their own session)
    # and its agent
    pids = json.loads((tmp_path / "probe-killed" / "pids1.json").read_text())
    node = next(i for i, p in enumerate(procs) if p.pid == pids["agent"])
    os.kill(pids["worker"], signal.SIGKILL)
    os.kill(pids["agent"], signal.SIGKILL)
    results = finish(procs, timeout=60)
    assert results[node][0] == -signal.SIGKILL
    assert results[1 - node][0] != 0  # the survivor's collective fails: it stops too
    assert (load_checkpoint(killed / "last.pt")["epoch"], load_checkpoint(
        killed / "last.pt")["batch"]) == (1, 0)

    results = finish(launch(tmp_path, tmp_path / "probe-resumed", killed,
                            ["train", "--resume", str(killed), "--quiet"]))
    assert all(rc == 0 for rc, _ in results), "\n".join(o for _, o in results)
    resumed, resumed_weights = probe(tmp_path / "probe-resumed")
    assert same_weights(resumed_weights["0"], resumed_weights["1"])
    assert same_weights(resumed_weights["0"], weights["0"])  # = the uninterrupted run
    for r in "01":  # the same images as the uninterrupted run, from epoch 2 on
        assert resumed[r]["reads"] == [k for k in records[r]["reads"] if k[0] >= 1]
    assert resumed["1"]["written"] == []
    final = load_checkpoint(killed / "last.pt")
    assert final["epoch"] == EPOCHS and len(final["metrics"]) == EPOCHS
    keys = ("train_loss", "train_top1", "train_images", "val_loss", "val_top1", "val_top5")
    assert [[row[k] for k in keys] for row in final["metrics"]] == \
        [[row[k] for k in keys] for row in saved["metrics"]]
