"""Property tests of the failure promises: whatever values go into `attnres train`'s
options, the result is a one-line error with exit status 2 or a run, never a traceback and
never a changed run folder; whatever damage a checkpoint file takes, `load_model` and
`attnres eval` give a one-line error or a working model, never a traceback."""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnres.data
from attnres.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from attnres.cli import main
from tiny_run import tiny_cli_args, tiny_dataset

pytestmark = pytest.mark.slow  # each example is a command run: seconds per test in all

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(argv: list[str]) -> tuple[int, str]:
    """`attnres ARGV` in this process on the tiny data: (status, stderr)."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(attnres.data, "load_dataset", tiny_dataset)
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's own errors exit from inside parse_args
            status = e.code
    return status, err.getvalue()


def assert_one_line_error(status: int, err: str, command: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnres {command}: error: "), err


# ------------------------------------------------------------------ train options

OPTIONS = ["--lr", "--weight-decay", "--warmup-epochs", "--momentum", "--batch-size",
           "--val-split", "--image-size", "--seed", "--label-smoothing",
           "--attention-lr-mult", "--skip-nonfinite", "--attention-kwargs", "--arch",
           "--schedule", "--device", "--placement", "--stages", "--blocks"]
WORDS = ["nan", "inf", "-inf", "-1", "0", "1e309", "", " ", "0x10", "[1, 2]", "None",
         "true", "1e-300", "3.5", "128", "reduction=8", "kernel_size=4", "kernel_size=3",
         "reduction=-1", "bogus=1", "reduction", "=", "resnet20", "cosine", "é", "\\x00",
         "cpu", "cuda:7", "block", "stem", "3:1,2", "3:5", "1"]
values = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
option_lists = st.lists(st.tuples(st.sampled_from(OPTIONS), values), min_size=1, max_size=3)


def as_argv(options: list[tuple[str, str]]) -> list[str]:
    return [f"{name}={value}" for name, value in options]  # "=": values may start with "-"


@settings(max_examples=40, **SETTINGS)
@given(options=option_lists)
def test_random_options_never_touch_an_existing_run(options, tiny_data, reference_run):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(reference_run, run)
        before = snapshot(run)
        status, err = run_main([*tiny_cli_args(tiny_data, run), "--attention", "cbam",
                                *as_argv(options)])
        assert_one_line_error(status, err, "train")
        assert snapshot(run) == before


@settings(max_examples=25, **SETTINGS)
@given(options=option_lists)
def test_random_options_give_a_run_or_one_line(options, tiny_data):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "new"
        argv = [*tiny_cli_args(tiny_data, out), "--epochs", "1", "--attention", "cbam",
                *as_argv(options)]
        status, err = run_main(argv)
        assert "Traceback" not in err, err
        if status != 0:
            assert_one_line_error(status, err, "train")
        # whatever happened, every file there is whole and no lock is left
        if out.exists():
            names = [p.name for p in out.iterdir()]
            assert not [n for n in names if n.endswith(".tmp")], names
            assert ".lock" not in names
            if status != 0 and names:  # a run that started and failed says so
                assert "summary.json" in names, names


# ------------------------------------------------------------------ damaged checkpoints

@st.composite
def damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "replace", "drop", "top-level"]))
    return kind, draw(st.integers(min_value=0, max_value=2**32 - 1))


JUNK = [None, 0, -1, 3.5, float("nan"), "x", [], {}, [1, 2, 3], {"a": 1},
        torch.zeros(0), torch.zeros(2, 2, dtype=torch.int64), torch.full((3,), float("inf"))]


def damaged_file(source: Path, target: Path, kind: str, seed: int) -> None:
    rng = random.Random(seed)
    if kind in ("truncate", "flip"):
        data = bytearray(source.read_bytes())
        if kind == "truncate":
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        target.write_bytes(bytes(data))
        return
    ckpt = load_checkpoint(source)
    weights = ckpt["model"]
    key = rng.choice(sorted(weights))
    if kind == "replace":
        shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 4))]
        weights[key] = rng.choice([*JUNK, torch.randn(shape), weights[key].double(),
                                   weights[key].t() if weights[key].dim() == 2 else None])
    elif kind == "drop":
        for name in rng.sample(sorted(weights), rng.randint(1, 3)):
            del weights[name]
    else:
        top = rng.choice(sorted(ckpt))
        if rng.random() < 0.5:
            del ckpt[top]
        else:
            ckpt[top] = rng.choice(JUNK)
    save_checkpoint(ckpt, target)


@settings(max_examples=60, **SETTINGS)
@given(how=damage())
def test_damaged_checkpoints_give_one_line_or_a_working_model(how, reference_run):
    kind, seed = how
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.pt"
        damaged_file(reference_run / "best.pt", path, kind, seed)
        try:
            model = load_model(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:  # what loads is a model of the checkpoint's kind, giving finite logits
            with torch.no_grad():
                logits = model(torch.zeros(2, 3, 8, 8))
            assert logits.shape == (2, 10)
        status, err = run_main(["eval", "--checkpoint", str(path), "--out",
                                str(Path(tmp) / "eval")])
        assert "Traceback" not in err, err
        if status != 0:
            assert_one_line_error(status, err, "eval")


def test_the_damage_strategies_can_break_a_checkpoint(reference_run, tmp_path):
    """The property above is not vacuous: each kind of damage can make loading fail."""
    failures = set()
    for kind in ("truncate", "flip", "replace", "drop", "top-level"):
        for seed in range(20):
            path = tmp_path / f"{kind}-{seed}.pt"
            damaged_file(reference_run / "best.pt", path, kind, seed)
            try:
                load_model(path)
            except CheckpointError:
                failures.add(kind)
                break
    assert failures == {"truncate", "flip", "replace", "drop", "top-level"}
