"""Ablation grids: real tiny runs, aggregation checked against numpy, resume, bad grids."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import attnres.training as train_mod
from attnres.ablate import PRESETS, ablate, load_grid
from attnres.analysis.profile import FLOP_COUNTER
from attnres.cli import main
from attnres.models import build_model

# the module (`attnres.ablate` is the function of the same name)
ablate_mod = importlib.import_module("attnres.ablate")

GRID = {"configs": [{"name": "baseline"}, {"name": "se", "attention": "se"}],
        "defaults": {"arch": "resnet20"}}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of 48 real digit images (two classes), 16x16 RGB PNGs."""
    root = tmp_path_factory.mktemp("tiny")
    digits = load_digits()
    for label in (0, 1):
        folder = root / f"digit{label}"
        folder.mkdir()
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:24]):
            gray = (digits.images[index] * 255 / 16).astype(np.uint8)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
            Image.fromarray(rgb).resize((16, 16)).save(folder / f"{i}.png")
    return root


def _settings(folder: Path, cache: Path) -> dict:
    return {"val_split": 12, "image_size": 16, "cache_dir": str(cache), "quiet": True,
            "tensorboard": False, "warmup_epochs": 0.5, "device": "cpu"}


@pytest.fixture(scope="module")
def finished_ablation(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """2 configurations x 2 seeds, 1 epoch each, trained for real."""
    out = tmp_path_factory.mktemp("ablation")
    cache = tmp_path_factory.mktemp("cache")
    messages: list[str] = []
    rows = ablate(GRID, out=out, seeds=[0, 1], data=str(tiny_folder), epochs=1,
                  batch_size=16, overrides=_settings(tiny_folder, cache),
                  explain_maps=False, log=messages.append)
    # later tests re-run the ablation in place: keep the first report as written
    report = {name: (out / name).read_bytes() for name in
              ("results.md", "results.csv", "accuracy_vs_latency.png")}
    return out, rows, cache, report


def test_writes_report_with_numpy_statistics(finished_ablation) -> None:
    out, rows, _, written = finished_ablation
    assert written["accuracy_vs_latency.png"][:8] == b"\x89PNG\r\n\x1a\n"
    lines = written["results.csv"].decode().splitlines()
    table = {r["config"]: r for r in csv.DictReader(lines)}
    assert sorted(table) == ["baseline", "se"]
    for name in ("baseline", "se"):
        runs = [json.loads((out / f"{name}-s{s}" / "summary.json").read_text())
                for s in (0, 1)]
        assert all(r["finished"] for r in runs)
        top1 = np.array([r["last_val_top1"] for r in runs])
        top5 = np.array([r["last_val_top5"] for r in runs])
        row = next(r for r in rows if r["config"] == name)
        assert row["top1_mean"] == pytest.approx(top1.mean())
        assert row["top1_std"] == pytest.approx(top1.std(ddof=1))
        assert row["top5_mean"] == pytest.approx(top5.mean())
        assert float(table[name]["top1_mean"]) == pytest.approx(top1.mean())
        assert float(table[name]["top1_std"]) == pytest.approx(top1.std(ddof=1))
        # parameters from an independently built model with two classes
        model = build_model("resnet20", attention=None if name == "baseline" else "se",
                            num_classes=2)
        assert int(table[name]["params"]) == sum(p.numel() for p in model.parameters())
    assert float(table["baseline"]["cpu_latency_ratio"]) == pytest.approx(1.0)
    assert float(table["se"]["cpu_latency_ratio"]) > 0
    # SE adds two 1x1 layers per block, so strictly more FLOPs than the baseline
    assert int(table["se"]["flops"]) > int(table["baseline"]["flops"]) > 0
    report = written["results.md"].decode()
    assert FLOP_COUNTER in report
    assert torch.__version__ in report
    assert "| se |" in report and "accuracy_vs_latency.png" in report


def test_rerun_skips_finished_runs(finished_ablation, tiny_folder: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, rows, cache, _ = finished_ablation
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*-s*/*") if p.is_file()}

    def must_not_train(config):
        raise AssertionError(f"train called again for {config.out}")

    monkeypatch.setattr(train_mod, "train", must_not_train)
    messages: list[str] = []
    again = ablate(GRID, out=out, seeds=[0, 1], data=str(tiny_folder), epochs=1,
                   batch_size=16, overrides=_settings(tiny_folder, cache), latency=False,
                   explain_maps=False, log=messages.append)
    assert sum("skipped" in m for m in messages) == 4
    assert [r["top1_mean"] for r in again] == [r["top1_mean"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_unfinished_run_is_resumed(finished_ablation, tiny_folder: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, cache, _ = finished_ablation
    # a copy of the ablation where se-s1 stopped before writing a finished summary
    copy = tmp_path / "copy"
    for run in out.glob("*-s*"):
        for file in ("summary.json", "last.pt"):
            (copy / run.name).mkdir(parents=True, exist_ok=True)
            (copy / run.name / file).write_bytes((run / file).read_bytes())
    stale = json.loads((copy / "se-s1" / "summary.json").read_text())
    (copy / "se-s1" / "summary.json").write_text(json.dumps({**stale, "finished": False}))
    calls = []

    def fake_train(config):
        calls.append(config)
        return stale

    monkeypatch.setattr(train_mod, "train", fake_train)
    ablate(GRID, out=copy, seeds=[0, 1], data=str(tiny_folder), epochs=1, batch_size=16,
           overrides=_settings(tiny_folder, cache), latency=False, explain_maps=False,
           log=lambda m: None)
    assert len(calls) == 1
    assert calls[0].resume == str(copy / "se-s1") and calls[0].seed == 1
    assert calls[0].attention == "se"


def test_changed_settings_are_refused(finished_ablation, tiny_folder: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, cache, _ = finished_ablation
    monkeypatch.setattr(train_mod, "train", lambda config: pytest.fail("trained"))
    with pytest.raises(ValueError, match="different epochs"):
        ablate(GRID, out=out, seeds=[0], data=str(tiny_folder), epochs=2, batch_size=16,
               overrides=_settings(tiny_folder, cache), latency=False, explain_maps=False,
               log=lambda m: None)


def test_toml_grid(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('seeds = [3, 4]\n[defaults]\narch = "resnet32"\nepochs = 7\n'
                    '[[configs]]\nname = "plain"\n'
                    '[[configs]]\nname = "cbam-last"\nattention = "cbam"\n'
                    'preset = "last-stage"\n')
    grid = load_grid(path)
    assert grid.name == "mine" and grid.seeds == [3, 4]
    assert grid.defaults == {"arch": "resnet32", "epochs": 7}
    assert grid.configs == [{"name": "plain"},
                            {"name": "cbam-last", "attention": "cbam", "preset": "last-stage"}]


def test_presets() -> None:
    modules = load_grid("modules")
    assert [c.get("attention") for c in modules.configs] == [None, "se", "eca", "cbam", "bam"]
    placements = load_grid("placements")
    assert [c.get("preset") for c in placements.configs] == [
        None, "last-stage", "all", "progressive", "selective", "stem+head"]
    # every preset configuration builds
    for config in PRESETS["placements"]:
        kwargs = {k: v for k, v in config.items() if k != "name"}
        build_model("resnet20", num_classes=10, **kwargs)


@pytest.mark.parametrize(("toml", "message"), [
    ('[[config]]\nname = "a"\n', "did you mean 'configs'"),
    ('[defaults]\narch = "resnet20"\n', "no configurations"),
    ('[[configs]]\nname = "a"\n[[configs]]\nname = "a"\n', "appears twice"),
    ('[[configs]]\nname = "a/b"\n', "name='a/b'"),
    ('[[configs]]\nattention = "se"\n', "name=None"),
    ('seeds = [0, "x"]\n[[configs]]\nname = "a"\n', "seeds"),
    ('[[configs]\nname = "a"\n', "not valid TOML"),
])
def test_bad_grid_files(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=message):
        load_grid(path)


def test_bad_grid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'modules'"):
        load_grid("module")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_grid(tmp_path / "missing.toml")


@pytest.mark.parametrize(("config", "message"), [
    ({"name": "a", "atention": "se"}, "unknown TrainConfig field 'atention'.*'attention'"),
    ({"name": "a", "seed": 3}, "sets 'seed'"),
    ({"name": "a", "attention": "cbma"}, "unknown attention 'cbma'.*'cbam'"),
])
def test_bad_fields_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         config: dict, message: str) -> None:
    monkeypatch.setattr(train_mod, "train", lambda c: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        ablate({"configs": [{"name": "ok"}, config]}, out=tmp_path, log=lambda m: None)
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert main(["ablate", "--preset", "modulez", "--out", str(tmp_path)]) == 2
    assert "did you mean 'modules'" in capsys.readouterr().err
    assert main(["ablate", "--preset", "modules", "--set", "lr", "--out", str(tmp_path)]) == 2
    seen = {}
    monkeypatch.setattr(ablate_mod, "ablate", lambda grid, **kw: seen.update(grid=grid, **kw))
    assert main(["ablate", "--preset", "placements", "--seeds", "0", "1", "--epochs", "2",
                 "--val-split", "5000", "--set", "lr=0.05", "--set", "schedule=step",
                 "--out", str(tmp_path)]) == 0
    assert seen["grid"] == "placements" and seen["seeds"] == [0, 1] and seen["epochs"] == 2
    assert seen["overrides"] == {"lr": 0.05, "schedule": "step", "val_split": 5000}
    monkeypatch.setattr(ablate_mod, "demo", lambda **kw: seen.update(demo=kw))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert seen["demo"] == {"out": str(tmp_path / "d"), "epochs": None}


def test_broken_explain_keeps_the_table(finished_ablation, tiny_folder: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import attnres.analysis.explain as explain_mod

    out, _, cache, _ = finished_ablation

    def broken(*args, **kwargs):
        raise RuntimeError("no maps today")

    monkeypatch.setattr(explain_mod, "explain", broken)
    monkeypatch.setattr(train_mod, "train", lambda config: pytest.fail("trained"))
    ablate(GRID, out=out, seeds=[0, 1], data=str(tiny_folder), epochs=1, batch_size=16,
           overrides=_settings(tiny_folder, cache), latency=False, explain_maps=True,
           log=lambda m: None)
    report = (out / "results.md").read_text()
    assert "| baseline |" in report and "| se |" in report
    assert "attention maps failed: RuntimeError: no maps today" in report
    assert "no maps today" in (out / "explain_error.txt").read_text()


def test_missing_data_fails_before_training(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod, "train", lambda c: pytest.fail("trained"))
    with pytest.raises(FileNotFoundError, match="did you mean 'digits'"):
        ablate("modules", out=tmp_path / "out", data="digitz", log=lambda m: None)
    assert not (tmp_path / "out").exists()
