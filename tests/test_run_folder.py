"""Run folders: one run at a time (an exclusive lock, tested with two real processes, a
stale lock taken over), a folder holding any run file is never overwritten without
--resume or --overwrite, and a resume refuses every non-overridable option given with
another value, defaults included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import attnres.data
from attnres.checkpoint import load_checkpoint
from attnres.cli import main
from attnres.training import RunLockedError, train
from attnres.training.run_folder import LOCK_FILE, RUN_FILES, run_lock
from tiny_run import run_tiny, tiny_cli_args, tiny_config, tiny_dataset


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """`attnres ARGV` in this process on the tiny data; (status, stderr)."""
    monkeypatch.setattr(attnres.data, "load_dataset", tiny_dataset)
    status = main(argv)
    return status, capsys.readouterr().err


def one_error_line(err: str, command: str = "train") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnres {command}: error: "), err
    return lines[0]


# ------------------------------------------------------------------ the lock

def holder_script(out: Path, then: str) -> str:
    """A process that takes the run lock of `out`, says so, then `then` ("sleep": holds it
    until killed; "kill": SIGKILLs itself, leaving a stale lock file)."""
    action = ("time.sleep(300)" if then == "sleep"
              else "os.kill(os.getpid(), signal.SIGKILL)")
    return textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from attnres.training.run_folder import run_lock
        with run_lock(Path({str(out)!r})):
            print("locked", flush=True)
            {action}
    """)


def test_a_locked_folder_refuses_a_second_run_naming_the_holder(tiny_data, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # another open file: flock conflicts even within one process
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started"] > 0
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {os.getpid()} "):
            run_tiny(tiny_data, out)
    assert not out.exists()  # the lock went with the run, and the folder it made


@pytest.mark.slow
def test_two_processes_one_folder(tiny_data, tmp_path, capsys, monkeypatch):
    """A real second process holds the lock: `attnres train --out R` fails at once with
    one line naming its pid; once the holder is gone the folder is free again."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", holder_script(out, "sleep")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.perf_counter()
        status, err = cli(tiny_cli_args(tiny_data, out), capsys, monkeypatch)
        assert time.perf_counter() - started < 10  # at once, not after loading anything
        assert status == 2
        line = one_error_line(err)
        assert f"pid {holder.pid} " in line and "in use by another run" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} "):
            train(tiny_config(tiny_data, out))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # the kernel dropped the lock with the process; its file is left and taken over
    summary = run_tiny(tiny_data, out, epochs=1)
    assert summary["finished"] is True and not (out / LOCK_FILE).exists()
    assert f"pid {holder.pid} " in capsys.readouterr().err  # the stale-lock warning


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_with_a_warning(tiny_data, tmp_path, capfd):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", holder_script(out, "kill")],
                          capture_output=True, text=True, timeout=120)
    assert dead.returncode == -signal.SIGKILL and dead.stdout.strip() == "locked"
    left = json.loads((out / LOCK_FILE).read_text())
    summary = run_tiny(tiny_data, out, epochs=1)
    assert summary["finished"] is True
    err = capfd.readouterr().err
    assert "taking over the lock of a run that is gone" in err and f"pid {left['pid']} " in err
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_run_fails(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "deeper" / "run"

    def unreadable(spec, **kwargs):
        raise ValueError(f"data {spec!r}: 3 unreadable images")

    monkeypatch.setattr(attnres.data, "load_dataset", unreadable)
    with pytest.raises(ValueError, match="unreadable images"):
        train(tiny_config(tiny_data, out))
    assert not (tmp_path / "deeper").exists()  # made for the lock, empty, removed again
    monkeypatch.undo()
    run_tiny(tiny_data, out, epochs=1)  # and nothing stops the next run
    assert not (out / LOCK_FILE).exists()


# ------------------------------------------------------------------ never overwritten

@pytest.mark.parametrize("names", [["best.pt", "metrics.csv"], *[[n] for n in RUN_FILES]])
def test_a_folder_with_any_run_file_is_refused(names, tiny_data, tmp_path, reference_run,
                                               capsys, monkeypatch):
    out = tmp_path / "old"
    out.mkdir()
    for name in names:
        shutil.copy(reference_run / name, out / name)
    before = snapshot(out)
    status, err = cli(tiny_cli_args(tiny_data, out), capsys, monkeypatch)
    assert status == 2
    line = one_error_line(err)
    assert "already holds a run" in line and all(name in line for name in names)
    assert ("--resume" in line) == ("last.pt" in names) and "--overwrite" in line
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(tiny_data, out))
    assert snapshot(out) == before  # not a byte changed, no lock file left


def test_overwrite_replaces_the_run(tiny_data, tmp_path, reference_run):
    out = tmp_path / "old"
    shutil.copytree(reference_run, out)
    (out / "eval").mkdir()
    (out / "eval" / "eval.json").write_text("{}")  # not a run file: kept
    (out / "events.out.tfevents.1.old").write_bytes(b"old events")
    run_tiny(tiny_data, out, epochs=1, seed=1, overwrite=True)
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == 1
    assert load_checkpoint(out / "best.pt")["config"]["seed"] == 1
    assert len(load_checkpoint(out / "last.pt")["metrics"]) == 1
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert not (out / "events.out.tfevents.1.old").exists()
    assert (out / "eval" / "eval.json").read_text() == "{}"
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        run_tiny(tiny_data, out, resume=str(out), overwrite=True)


# ------------------------------------------------------------------ resume: what was given

@pytest.mark.parametrize(("option", "saved", "given"), [
    (["--lr", "0.1"], "0.05", "0.1"),                # the default value, given on purpose
    (["--attention", "none"], "'cbam'", "None"),     # the default (no attention)
    (["--batch-size", "128"], "32", "128"),
    (["--weight-decay", "0.0005"], None, None),      # equal to the saved value: allowed
])
def test_resume_refuses_given_options_that_differ_even_at_their_default(
        option, saved, given, tmp_path, reference_run, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = snapshot(out)
    if saved is None:  # the run continues (it is finished: nothing to train, files rewritten)
        status, err = cli(["train", "--resume", str(out), *option, "--quiet"], capsys,
                          monkeypatch)
        assert status == 0, err
        return
    status, err = cli(["train", "--resume", str(out), *option, "--quiet"], capsys,
                      monkeypatch)
    assert status == 2
    line = one_error_line(err)
    name = option[0][2:].replace("-", "_")
    assert f"cannot change {name}" in line and f"run has {saved}" in line
    assert f"given {given}" in line
    assert snapshot(out) == before


def test_api_resume_rule(tiny_data, tmp_path, reference_run):
    """From Python: fields named in `given` are checked whatever their value; without
    `given`, only fields that differ from their defaults are."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    from attnres.training import TrainConfig

    with pytest.raises(ValueError, match=r"cannot change lr .*run has 0\.05, given 0\.1"):
        train(TrainConfig(resume=str(out), lr=0.1), given={"lr"})
    with pytest.raises(ValueError, match=r"cannot change lr .*run has 0\.05, given 0\.2"):
        train(TrainConfig(resume=str(out), lr=0.2))
    with pytest.MonkeyPatch.context() as mp:  # lr=0.1 is the default: "as saved"
        mp.setattr(attnres.data, "load_dataset", tiny_dataset)
        summary = train(TrainConfig(resume=str(out), lr=0.1, quiet=True))
    assert summary["config"]["lr"] == 0.05


def test_resume_of_a_folder_without_checkpoint_says_overwrite(tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    status, err = cli(["train", "--resume", str(out)], capsys, monkeypatch)
    assert status == 2 and "--overwrite" in one_error_line(err)


def test_default_values_are_not_taken_as_given_without_resume():
    """`options_given` is what the command line held (and the recipe's fields)."""
    from attnres.cli import build_parser
    from attnres.cli.train import options_given
    from attnres.training import RECIPES

    parser = build_parser()
    assert options_given(parser.parse_args(["train"])) == set()
    assert options_given(parser.parse_args(["train", "--lr", "0.1", "--quiet"])) == \
        {"lr", "quiet"}
    assert options_given(parser.parse_args(["train", "--recipe", "cifar-fast"])) == \
        {"recipe", *RECIPES["cifar-fast"]}
