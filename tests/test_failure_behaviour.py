"""What fails, and how: bad options are one line and exit 2 before any data is loaded,
checkpoints that are not whole training checkpoints are refused naming the file and the
bad keys, a model that stops being finite never becomes a result, one handler in
`cli.main` turns expected failures into one line (bugs keep their traceback), and SIGINT /
SIGTERM give 130 / 143 with one line from the first moment of `python -m attnres`."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnres.data
from attnres.checkpoint import (CheckpointError, check_checkpoint, load_checkpoint,
                                load_model, save_checkpoint)
from attnres.cli import main
from attnres.training import NonFiniteLossError, NonFiniteModelError
from tiny_run import STEPS_PER_EPOCH, run_tiny, tiny_cli_args, tiny_dataset


def no_data(*args, **kwargs):
    raise AssertionError("data was loaded before the options were checked")


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    return status, capsys.readouterr().err


def one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnres {command}: "), err
    return lines[0]


# ------------------------------------------------------------------ options at the door

LONG_NAME = "n" * 300
TRAIN_CASES = [  # options, text the one line must hold
    (["--attention", "se", "--attention-kwargs", "bogus=1"], "no option 'bogus'"),
    (["--attention", "se", "--attention-kwargs", "reduktion=2"], "did you mean 'reduction'"),
    (["--attention", "se", "--attention-kwargs", "reduction=x"], "reduction='x'"),
    (["--attention", "cbam", "--attention-kwargs", "pool_types=avg"], "pool_types='avg'"),
    (["--attention", "eca", "--attention-kwargs", "kernel_size=4"], "kernel_size=4: must be odd"),
    (["--attention", "cbam", "--attention-kwargs", "kernel_size=6"], "kernel_size=6: must be odd"),
    (["--attention-kwargs", "reduction=8"], "given without attention"),
    (["--out", "FILE/run"], "a file, not a folder"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--out", LONG_NAME], "300 bytes long"),
    (["--warmup-epochs", "-1"], "warmup_epochs=-1.0"),
    (["--weight-decay", "nan"], "weight_decay=nan"),
    (["--weight-decay", "inf"], "weight_decay=inf"),
    (["--warmup-epochs", "inf"], "warmup_epochs=inf"),
    (["--attention-lr-mult", "nan"], "attention_lr_mult=nan"),
    (["--lr", "nan"], "lr=nan"),
    (["--lr=-inf"], "lr=-inf"),
    (["--momentum", "1"], "momentum=1.0"),
    (["--image-size", "100000"], "4096"),
    (["--seed", "-1"], "seed=-1"),
    (["--stages", "4"], "1..3"),
    (["--nesterov", "--momentum", "0"], "nesterov needs momentum"),
]


@pytest.mark.parametrize("options, hint", TRAIN_CASES,
                         ids=[" ".join(o)[:40] for o, _ in TRAIN_CASES])
def test_bad_train_options_are_one_line_before_any_data(options, hint, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(attnres.data, "load_dataset", no_data)
    (tmp_path / "FILE").write_text("a regular file")
    status, err = run_cli(["train", *options, "--quiet"], capsys)
    assert status == 2
    line = one_line(err, "train")
    assert "error: " in line and hint in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing written


def test_every_option_value_is_named_in_its_error(capsys):
    """The same rules from Python: a one-line ValueError naming field and value."""
    from attnres.training import TrainConfig, validate_config

    for field, value in [("lr", "0.1"), ("epochs", 0), ("batch_size", True),
                         ("weight_decay", float("nan")), ("step_gamma", 0),
                         ("val_split", float("inf")), ("quiet", "yes"),
                         ("step_milestones", [0.5, 1.5]), ("attention_kwargs", "se")]:
        with pytest.raises(ValueError, match=rf"^{field}=") as info:
            validate_config(TrainConfig(**{field: value}))
        assert "\n" not in str(info.value)


def test_export_and_bench_check_their_counts(reference_run, tmp_path, capsys):
    status, err = run_cli(["export", "--checkpoint", str(reference_run), "--format", "onnx",
                           "--out", str(tmp_path / "m.onnx"), "--val-images", "0"], capsys)
    assert status == 2 and "val_images=0" in one_line(err, "export")
    status, err = run_cli(["bench", "--arch", "resnet20", "--attention", "se",
                           "--image-size", "100000"], capsys)
    assert status == 2 and "4096" in one_line(err, "bench")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ damaged checkpoints

def damaged(reference_run: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the tiny run's last.pt with one kind of damage."""
    ckpt = load_checkpoint(reference_run / "last.pt")
    weights = ckpt["model"]
    if how == "missing":
        del weights["layer2.0.conv1.weight"]
    elif how == "shape":
        weights["conv1.weight"] = weights["conv1.weight"][:, :2]
    elif how == "not-a-tensor":
        weights["fc.bias"] = [0.0] * 10
    elif how == "nan":
        weights["fc.weight"] = torch.full_like(weights["fc.weight"], float("nan"))
    elif how == "unexpected":
        weights["extra.weight"] = torch.zeros(3)
    elif how == "no-optimizer":
        del ckpt["optimizer"]
    elif how == "no-config":
        del ckpt["config"]
    elif how == "bad-build-args":
        ckpt["build_args"] = {**ckpt["build_args"], "attention": "cbma"}
        ckpt["model_info"] = {**ckpt["model_info"], "attention": "cbma"}
    elif how == "plain":
        ckpt = dict(weights)
    path = tmp_path / f"{how}.pt"
    save_checkpoint(ckpt, path)
    return path


@pytest.mark.parametrize(("how", "hint"), [
    ("missing", "missing: layer2.0.conv1.weight"),
    ("shape", "wrong shape: conv1.weight (16, 2, 3, 3) instead of (16, 3, 3, 3)"),
    ("not-a-tensor", "not tensors: fc.bias"),
    ("nan", "not finite (NaN or inf) in fc.weight"),
    ("unexpected", "unexpected: extra.weight"),
    ("bad-build-args", "model description does not build a model"),
    ("plain", "not an attnres training checkpoint"),
])
def test_checkpoints_that_do_not_fit_their_model_are_refused(how, hint, reference_run,
                                                              tmp_path, capsys):
    path = damaged(reference_run, tmp_path, how)
    with pytest.raises(CheckpointError, match="^" + str(path)) as info:
        load_model(path)
    assert hint in str(info.value) and "\n" not in str(info.value)
    for argv in (["eval", "--checkpoint", str(path), "--out", str(tmp_path / "e")],
                 ["export", "--checkpoint", str(path), "--format", "onnx",
                  "--out", str(tmp_path / "m.onnx")],
                 ["explain", "--checkpoint", str(path), "--out", str(tmp_path / "x")]):
        status, err = run_cli(argv, capsys)
        assert status == 2, err
        assert hint in one_line(err, argv[0]) and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{how}.pt"]


@pytest.mark.parametrize(("how", "hint"), [
    ("no-optimizer", "lacks optimizer"),
    ("no-config", "lacks config"),
    ("plain", "not an attnres training checkpoint"),
    ("shape", "wrong shape: conv1.weight"),
])
def test_resume_from_a_checkpoint_that_is_not_a_training_checkpoint(
        how, hint, reference_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(attnres.data, "load_dataset", no_data)
    path = damaged(reference_run, tmp_path, how)
    status, err = run_cli(["train", "--resume", str(path), "--out", str(tmp_path / "r"),
                           "--quiet"], capsys)
    assert status == 2
    line = one_line(err, "train")
    assert hint in line and str(path) in line
    assert not (tmp_path / "r").exists()


def test_check_checkpoint_accepts_what_train_writes(reference_run):
    ckpt = load_checkpoint(reference_run / "last.pt")
    model = check_checkpoint(ckpt, reference_run / "last.pt", training=True)
    assert next(model.parameters()).device.type == "meta"  # nothing allocated
    assert set(model.state_dict()) == set(ckpt["model"])


# ------------------------------------------------------------------ non-finite models

def test_a_run_whose_weights_blow_up_fails_and_keeps_no_broken_result(
        tiny_data, tmp_path, capsys, monkeypatch):
    """--lr 1e9 --skip-nonfinite 100000: never a success, never a NaN best.pt."""
    out = tmp_path / "blown"
    monkeypatch.setattr(attnres.data, "load_dataset", tiny_dataset)
    argv = [a if a != "0.05" else "1e9" for a in tiny_cli_args(tiny_data, out)]
    status, err = run_cli([*argv, "--skip-nonfinite", "100000"], capsys)
    assert status == 2
    line = one_line(err, "train")
    assert "no longer finite" in line
    for name in ("best.pt", "last.pt"):
        if (out / name).exists():
            weights = load_checkpoint(out / name)["model"]
            assert all(torch.isfinite(t).all() for t in weights.values()
                       if t.is_floating_point()), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is False and summary["failed"] is True
    assert summary["error"] in line
    assert all(math.isfinite(row["val_loss"]) for row in summary.get("metrics", []))


def test_broken_weights_after_a_skipped_step_stop_the_run(tiny_data, tmp_path, monkeypatch):
    """A step whose loss is NaN because the weights are: the run stops at that step, even
    with skips left, and last.pt is the finite end of epoch 1."""
    real = F.cross_entropy
    calls = [0]

    def cross_entropy(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == STEPS_PER_EPOCH + 2:  # epoch 2, step 2: the weights break
                with torch.no_grad():
                    broken[0].fc.weight.fill_(float("inf"))
                return loss * float("nan")
        return loss

    import attnres.training.model_source as model_source

    build = model_source.build_model
    broken: list = []

    def build_model(*args, **kwargs):
        broken.append(build(*args, **kwargs))
        return broken[-1]

    monkeypatch.setattr(model_source, "build_model", build_model)
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    out = tmp_path / "broken"
    with pytest.raises(NonFiniteModelError, match=r"epoch 2, step 2 .*fc\.weight") as info:
        run_tiny(tiny_data, out, skip_nonfinite=10)
    assert isinstance(info.value, NonFiniteLossError)  # caught as before by old handlers
    assert str(out / "last.pt") in str(info.value)
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] is True and summary["epochs"] == 1


def test_too_many_nonfinite_losses_say_failed_in_the_summary(tiny_data, tmp_path,
                                                              monkeypatch):
    real = F.cross_entropy

    def cross_entropy(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        return loss * float("nan") if torch.is_grad_enabled() else loss

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError):
        run_tiny(tiny_data, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] is True and summary["finished"] is False
    assert "non-finite loss" in summary["error"] and not (out / "best.pt").exists()


# ------------------------------------------------------------------ the one handler

def test_expected_failures_are_one_line_and_bugs_keep_their_traceback(tiny_data, tmp_path,
                                                                      capsys, monkeypatch):
    argv = tiny_cli_args(tiny_data, tmp_path / "run")

    def fails(error):
        def load(*args, **kwargs):
            raise error
        return load

    for error, status in [(ValueError("bad images"), 2), (FileNotFoundError("no x"), 2),
                          (KeyboardInterrupt(), 130), (PermissionError("denied"), 2)]:
        monkeypatch.setattr(attnres.data, "load_dataset", fails(error))
        got, err = run_cli(argv, capsys)
        assert got == status, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setattr(attnres.data, "load_dataset", fails(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(argv)
    assert not (tmp_path / "run").exists()


def test_no_command_handles_errors_itself():
    """Expected failures are handled in one place (cli.errors), not per command."""
    folder = Path(attnres.__file__).parent / "cli"
    for file in folder.glob("*.py"):
        if file.name in ("errors.py", "options.py"):
            continue
        text = file.read_text(encoding="utf-8")
        assert "except Exception" not in text, file.name
        assert "file=sys.stderr" not in text, file.name


def signal_when_guarded(proc: subprocess.Popen, signum: int, limit: float = 5.0) -> float:
    """Send `signum` as soon as the process catches SIGTERM (its guard is in place: plain
    Python catches only SIGINT); seconds from start to the signal."""
    start = time.perf_counter()
    status = Path(f"/proc/{proc.pid}/status")
    while time.perf_counter() - start < limit:
        try:
            caught = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                          if line.startswith("SigCgt:"))
        except (FileNotFoundError, StopIteration):
            break
        if caught & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    proc.send_signal(signum)
    return elapsed


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_start_is_one_line(signum, status, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "attnres", "train", "--out", str(out),
                             "--epochs", "1"], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    elapsed = signal_when_guarded(proc, signum)
    err = proc.communicate(timeout=120)[1]
    assert elapsed < 2.0  # the guard is in place within moments of the start
    assert proc.returncode == status, err
    assert err.strip().splitlines() == ["attnres: interrupted"] or \
        err.strip().splitlines() == ["attnres train: interrupted"], err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signame", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_before_training_is_one_line_and_leaves_nothing(signame, status, tiny_data,
                                                                 tmp_path):
    """Once main runs (here: while the data loads) a signal is an exception; the lock is
    released and the folder made for it removed."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import attnres.data
        from attnres.cli import main
        def load_dataset(*args, **kwargs):
            os.kill(os.getpid(), signal.{signame})
            raise AssertionError("the signal did not interrupt")
        attnres.data.load_dataset = load_dataset
        sys.exit(main({tiny_cli_args(tiny_data, out)!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == status, result.stderr
    assert result.stderr.strip().splitlines() == ["attnres train: interrupted"]
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_mid_run_exits_143(tiny_data, reference_run, tmp_path):
    """SIGTERM during training saves last.pt (as SIGINT does) and gives 143."""
    from test_train import interrupted_run

    out = tmp_path / "term"
    assert interrupted_run(tiny_data, out, "SIGTERM", at_step=STEPS_PER_EPOCH + 1) == 143
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
