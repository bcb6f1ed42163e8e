"""Ablation grids: real tiny runs, results folders, resume, refused recipes, presets with the
running grid's folder names, reused rows, bad grids, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import attnres.ablation as ablation
import attnres.ablation.run as run_mod
from attnres.ablation import ablate, load_grid, preset_configs
from attnres.analysis.profile import count_flops
from attnres.attention import list_attention
from attnres.cli import main
from attnres.models import build_model


GRID = {"configs": [{"name": "baseline"}, {"name": "se", "attention": "se"}],
        "defaults": {"arch": "resnet20"}}
RUN_FILES = ["config.json", "metrics.csv", "summary.json"]


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch):
    """The module whose `train` ablate calls; tests replace `train` on it."""
    module = run_mod._trainer()

    def set_train(fn) -> None:
        monkeypatch.setattr(module, "train", fn)
    return set_train


def fake_train(calls: list):
    """A stand-in for the trainer: writes the three small files a finished run leaves
    (recording the precision amp resolved to, as the trainer does), with a top-1 that depends
    on the configuration and the seed."""
    from attnres.precision import resolve_amp

    def train(config) -> dict:
        calls.append(config)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {**dataclasses.asdict(config), "amp": resolve_amp(config.amp, "cpu").dtype}
        top1 = 50.0 + config.seed + 2.0 * len(config.attention or "")
        summary = {"last_val_top1": top1, "last_val_top5": 90.0, "best_val_top1": top1,
                   "params": 1000, "finished": True, "config": settings}
        (out / "config.json").write_text(json.dumps(settings))
        (out / "metrics.csv").write_text(f"epoch,val_top1\n1,{top1}\n")
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
    return train


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


def _settings(cache: Path) -> dict:
    return {"val_split": 12, "image_size": 16, "cache_dir": str(cache), "quiet": True,
            "tensorboard": False, "warmup_epochs": 0.5, "device": "cpu"}


@pytest.fixture(scope="module")
def finished_ablation(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """2 configurations x 2 seeds, 1 epoch each, trained for real; results kept apart."""
    root = tmp_path_factory.mktemp("ablation")
    out, results, cache = root / "runs", root / "results", root / "cache"
    rows = ablate(GRID, out=out, results=results, seeds=[0, 1], data=str(tiny_folder),
                  epochs=1, batch_size=16, overrides=_settings(cache), explain_maps=False,
                  log=lambda m: None)
    report = {name: (results / name).read_bytes() for name in
              ("results.md", "results.csv", "results.png", "costs.json")}
    return out, results, rows, cache, report


@pytest.mark.slow
def test_real_runs_results_and_costs(finished_ablation) -> None:
    out, results, rows, _, written = finished_ablation
    assert sorted(p.name for p in results.iterdir() if p.is_dir()) == [
        "baseline-s0", "baseline-s1", "se-s0", "se-s1"]
    for run in results.glob("*-s*"):
        assert sorted(p.name for p in run.iterdir()) == RUN_FILES
        for name in RUN_FILES:  # copies of what the trainer wrote
            assert (run / name).read_bytes() == (out / run.name / name).read_bytes()
    table = {r["config"]: r for r in csv.DictReader(written["results.csv"].decode()
                                                    .splitlines())}
    costs = json.loads(written["costs.json"])
    assert costs["threads"] >= 1 and costs["machine"]["cpu_cores"] >= 1
    for name, attention in (("baseline", None), ("se", "se")):
        top1 = np.array([json.loads((out / f"{name}-s{s}" / "summary.json").read_text())
                         ["last_val_top1"] for s in (0, 1)])
        row = next(r for r in rows if r["config"] == name)
        assert row["top1_mean"] == pytest.approx(top1.mean())
        assert row["top1_std"] == pytest.approx(top1.std(ddof=1))
        assert float(table[name]["top1_mean"]) == pytest.approx(top1.mean())
        # params and FLOPs from an independently built model with two classes
        model = build_model("resnet20", attention=attention, num_classes=2)
        assert int(table[name]["params"]) == sum(p.numel() for p in model.parameters())
        assert costs["configs"][name]["flops"] == count_flops(model, (1, 3, 16, 16))
        assert costs["configs"][name]["latency_ms"] > 0
        assert costs["configs"][name]["train_images_per_s"] > 0
    assert float(table["baseline"]["latency_ratio"]) == 1.0
    assert int(table["se"]["flops"]) > int(table["baseline"]["flops"])
    assert written["results.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert "| se | se @ block, all stages | 2 |" in written["results.md"].decode()


@pytest.mark.slow
def test_rerun_trains_nothing_and_report_is_the_same(finished_ablation, tiny_folder: Path,
                                                     tmp_path: Path, trainer) -> None:
    out, results, rows, cache, written = finished_ablation
    trainer(lambda config: pytest.fail(f"train called again for {config.out}"))
    messages: list[str] = []
    # a fresh --out: the results folder alone says what is done
    again = ablate(GRID, out=tmp_path / "elsewhere", results=results, seeds=[0, 1],
                   data=str(tiny_folder), epochs=1, batch_size=16, overrides=_settings(cache),
                   explain_maps=False, log=messages.append)
    assert sum("skipped" in m for m in messages) == 4
    assert any("costs: kept" in m for m in messages)
    assert (results / "costs.json").read_bytes() == written["costs.json"]
    assert again == rows
    assert (results / "results.md").read_bytes() == written["results.md"]
    # `attnres report` makes the same bytes from the folder
    assert main(["report", str(results)]) == 0
    assert (results / "results.md").read_bytes() == written["results.md"]
    assert (results / "results.csv").read_bytes() == written["results.csv"]


@pytest.mark.slow
def test_changed_recipe_is_refused(finished_ablation, tiny_folder: Path, trainer) -> None:
    _, results, _, cache, _ = finished_ablation
    trainer(lambda config: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"different epochs \(1 vs 2\)"):
        ablate(GRID, out=results, results=results, seeds=[0], data=str(tiny_folder),
               epochs=2, batch_size=16, overrides=_settings(cache), latency=False,
               explain_maps=False, log=lambda m: None)


@pytest.mark.slow
def test_broken_explain_keeps_the_table(finished_ablation, tiny_folder: Path, trainer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import attnres.analysis.explain as explain_mod

    out, results, _, cache, _ = finished_ablation

    def broken(*args, **kwargs):
        raise RuntimeError("no maps today")

    monkeypatch.setattr(explain_mod, "explain", broken)
    trainer(lambda config: pytest.fail("trained"))
    ablate(GRID, out=out, results=results, seeds=[0, 1], data=str(tiny_folder), epochs=1,
           batch_size=16, overrides=_settings(cache), latency=False, explain_maps=True,
           log=lambda m: None)
    report = (results / "results.md").read_text()
    assert "| baseline |" in report and "| se |" in report
    assert "attention maps failed: RuntimeError: no maps today" in report
    assert "no maps today" in (results / "explain_error.txt").read_text()
    (results / "explain_error.txt").unlink()


def test_missing_runs_are_trained_and_copied(tmp_path: Path, trainer) -> None:
    calls: list = []
    trainer(fake_train(calls))
    out, results = tmp_path / "runs", tmp_path / "results"
    ablate(GRID, out=out, results=results, seeds=[0, 1], latency=False,
           explain_maps=False, log=lambda m: None)
    assert [(Path(c.out).name, c.attention) for c in calls] == [
        ("baseline-s0", None), ("baseline-s1", None), ("se-s0", "se"), ("se-s1", "se")]
    # a run lost from the results folder but finished in out is copied, not trained
    for name in RUN_FILES:
        (results / "se-s1" / name).unlink()
    # a run missing everywhere is trained
    for folder in (results, out):
        for name in RUN_FILES:
            (folder / "baseline-s0" / name).unlink()
    calls.clear()
    messages: list[str] = []
    ablate(GRID, out=out, results=results, seeds=[0, 1], latency=False, explain_maps=False,
           log=messages.append)
    assert [Path(c.out).name for c in calls] == ["baseline-s0"]
    assert any("se-s1: finished earlier in" in m and "copied" in m for m in messages)
    assert sorted(p.name for p in (results / "se-s1").iterdir()) == RUN_FILES


def test_unfinished_run_is_resumed(tmp_path: Path, trainer) -> None:
    calls: list = []
    trainer(fake_train(calls))
    out = tmp_path / "runs"
    ablate(GRID, out=out, seeds=[0, 1], latency=False, explain_maps=False, log=lambda m: None)
    stale = json.loads((out / "se-s1" / "summary.json").read_text())
    (out / "se-s1" / "summary.json").write_text(json.dumps({**stale, "finished": False}))
    (out / "se-s1" / "last.pt").write_bytes(b"checkpoint")
    calls.clear()
    ablate(GRID, out=out, seeds=[0, 1], latency=False, explain_maps=False, log=lambda m: None)
    assert len(calls) == 1
    assert calls[0].resume == str(out / "se-s1") and calls[0].seed == 1
    assert calls[0].attention == "se"


def test_shards_share_a_grid_without_training_a_run_twice(tmp_path: Path, trainer) -> None:
    """Two `--shard` processes train disjoint runs whose union is the grid, measure no
    costs; an unsharded call afterwards trains nothing and measures them."""
    from attnres.ablation.run import parse_shard

    calls: list = []
    trainer(fake_train(calls))
    out, results = tmp_path / "runs", tmp_path / "results"
    trained = []
    for shard in ("1/2", "2/2"):
        calls.clear()
        ablate(GRID, out=out, results=results, seeds=[0, 1, 2], shard=shard,
               explain_maps=True, log=lambda m: None)
        trained.append({(c.attention, c.seed) for c in calls})
        assert not (results / "costs.json").exists()
    every = {(c.get("attention"), seed) for c in GRID["configs"] for seed in (0, 1, 2)}
    assert trained[0] | trained[1] == every and not trained[0] & trained[1]
    assert abs(len(trained[0]) - len(trained[1])) <= 1
    calls.clear()
    messages: list[str] = []
    ablate(GRID, out=out, results=results, seeds=[0, 1, 2], shard="2/2", latency=False,
           explain_maps=False, log=messages.append)  # everything done: nothing left to it
    assert calls == [] and not any("left to" in m for m in messages)
    for bad in ("0/2", "3/2", "1", "a/b", (1, 2, 3)):
        with pytest.raises(ValueError, match="I/N with 1 <= I <= N"):
            parse_shard(bad)


def test_no_train_measures_costs_of_a_grid_still_training(tmp_path: Path, trainer,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """`train=False` (`--no-train`) trains none of the missing runs but measures the costs of
    every configuration and reports the finished runs."""
    calls: list = []
    trainer(fake_train(calls))
    out, results = tmp_path / "runs", tmp_path / "results"
    ablate(GRID, out=out, results=results, seeds=[0, 1], shard="1/2", latency=False,
           explain_maps=False, log=lambda m: None)
    finished = {(c.attention, c.seed) for c in calls}
    measured: list[list[str]] = []

    def fake_costs(configs, **kwargs) -> dict:
        measured.append(list(configs))
        return {"format": 1, "configs": {n: {"params": 1} for n in configs}}
    monkeypatch.setattr(run_mod, "measure_costs", fake_costs)
    monkeypatch.setattr(run_mod, "_data_facts", lambda *a: (10, 8))
    calls.clear()
    messages: list[str] = []
    rows = ablate(GRID, out=out, results=results, seeds=[0, 1], train=False,
                  explain_maps=False, log=messages.append)
    assert calls == [] and measured == [["baseline", "se"]]
    assert sum("not trained" in m for m in messages) == 4 - len(finished)
    assert json.loads((results / "costs.json").read_text())["configs"].keys() == {"baseline",
                                                                                   "se"}
    assert {r["config"] for r in rows} == {"baseline" if a is None else a
                                           for a, _ in finished}


def test_presets_come_from_the_registries() -> None:
    modules = load_grid("modules")
    assert [c["name"] for c in modules.configs] == ["baseline", *list_attention()]
    assert [c.get("attention") for c in modules.configs] == [None, *list_attention()]
    placements = load_grid("placements")
    assert [c["name"] for c in placements.configs] == [
        "none", "all", "last-stage", "progressive", "selective", "stem+head"]
    for config in preset_configs("placements"):  # every preset configuration builds
        build_model("resnet20", num_classes=10,
                    **{k: v for k, v in config.items() if k != "name"})


def test_placements_train_the_running_grids_folders(tmp_path: Path, trainer) -> None:
    """With none / all reused from the modules folder, the placements grid trains exactly
    placements/{last-stage,progressive,stem+head}-s<seed>, and accepts a stem+head run
    trained with `--placement stem head` instead of the preset."""
    from test_report import write_run

    calls: list = []
    trainer(fake_train(calls))
    modules = tmp_path / "modules"
    recipe = {"data": "digits", "epochs": 3, "val_split": None, "amp": False}
    for seed in (0, 1):
        write_run(modules, "baseline", seed, 60.0 + seed, 90.0, **recipe)
        write_run(modules, "cbam", seed, 61.0 + seed, 90.0, attention="cbam", **recipe)
    placements = tmp_path / "placements"
    write_run(placements, "stem+head", 0, 62.0, 90.0, attention="cbam",
              placement=["stem", "head"], **recipe)
    messages: list[str] = []
    rows = ablate("placements", out=tmp_path / "runs", results=placements, seeds=[0, 1],
                  reuse=[f"{modules}:baseline=none,cbam=all"], data="digits", epochs=3,
                  latency=False, explain_maps=False, log=messages.append)
    assert sorted(Path(c.out).name for c in calls) == [
        "last-stage-s0", "last-stage-s1", "progressive-s0", "progressive-s1", "stem+head-s1"]
    assert any("selective: the same run as progressive" in m for m in messages)
    assert sorted(p.name for p in placements.iterdir() if p.is_dir()) == [
        "last-stage-s0", "last-stage-s1", "progressive-s0", "progressive-s1", "stem+head-s0",
        "stem+head-s1"]
    labels = {r["config"]: (r["label"], r["placement"]) for r in rows}
    assert labels == {"none": ("none", "none"), "all": ("all", "cbam @ block, all stages"),
                      "last-stage": ("last-stage", "cbam @ block, stage 3"),
                      "progressive": ("progressive = selective (3 stages)",
                                      "cbam @ block, stages 2-3"),
                      "stem+head": ("stem+head", "cbam @ stem + head")}
    # the reused rows are checked against the grid's recipe too
    with pytest.raises(ValueError, match=r"modules/baseline-s0 holds a finished run with "
                                         r"different epochs \(3 vs 4\)"):
        ablate("placements", out=tmp_path / "runs", results=placements, seeds=[0, 1],
               reuse=[f"{modules}:baseline=none,cbam=all"], latency=False,
               explain_maps=False, log=lambda m: None, data="digits", epochs=4)


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
def test_bad_fields_fail_before_training(tmp_path: Path, trainer, config: dict,
                                         message: str) -> None:
    trainer(lambda c: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        ablate({"configs": [{"name": "ok"}, config]}, out=tmp_path, log=lambda m: None)
    assert not any(tmp_path.iterdir())


def test_bad_reuse_fails_before_training(tmp_path: Path, trainer) -> None:
    trainer(lambda c: pytest.fail("trained"))
    with pytest.raises(ValueError, match="row 'nope'.*configurations: baseline, se"):
        ablate(GRID, out=tmp_path / "out", reuse=[f"{tmp_path}:baseline=nope"],
               log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert main(["ablate", "--preset", "modulez", "--out", str(tmp_path)]) == 2
    assert "did you mean 'modules'" in capsys.readouterr().err
    assert main(["ablate", "--preset", "modules", "--set", "lr", "--out", str(tmp_path)]) == 2
    seen = {}
    monkeypatch.setattr(ablation, "ablate", lambda grid, **kw: seen.update(grid=grid, **kw))
    assert main(["ablate", "--preset", "placements", "--seeds", "0", "1", "--epochs", "2",
                 "--val-split", "5000", "--set", "lr=0.05", "--set", "schedule=step",
                 "--results", "R", "--reuse", "M:baseline=none", "--baseline", "none",
                 "--out", str(tmp_path)]) == 0
    assert seen["grid"] == "placements" and seen["seeds"] == [0, 1] and seen["epochs"] == 2
    assert seen["overrides"] == {"lr": 0.05, "schedule": "step", "val_split": 5000}
    assert seen["results"] == "R" and seen["reuse"] == ["M:baseline=none"]
    assert seen["baseline"] == "none"
    monkeypatch.setattr(ablation, "demo", lambda **kw: seen.update(demo=kw))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert seen["demo"] == {"out": str(tmp_path / "d"), "epochs": ablation.DEMO_EPOCHS,
                            "threads": None}
    assert main(["demo", "--epochs", "0.5", "--threads", "1", "--out", "d"]) == 0
    assert seen["demo"] == {"out": "d", "epochs": 0.5, "threads": 1}
    assert main(["ablate", "--preset", "modules", "--max-steps", "7", "--max-time", "30",
                 "--subset", "100", "--epochs", "0.5", "--out", str(tmp_path)]) == 0
    assert seen["epochs"] == 0.5
    assert seen["overrides"] == {"max_steps": 7, "max_time": 30.0, "subset": 100}
    monkeypatch.setattr(ablation, "report", lambda d, **kw: seen.update(report=(d, kw)))
    assert main(["report", "D", "--baseline", "b", "--costs", "c.json", "--reuse", "M:x=y",
                 "--update", "README.md", "--out", "o.md", "--no-plot"]) == 0
    assert seen["report"] == ("D", {"out": "o.md", "baseline": "b", "costs": "c.json",
                                    "reuse": ["M:x=y"], "plot": False,
                                    "update": "README.md", "name": None})


def test_missing_data_fails_before_training(tmp_path: Path, trainer) -> None:
    trainer(lambda c: pytest.fail("trained"))
    with pytest.raises(FileNotFoundError, match="did you mean 'digits'"):
        ablate("modules", out=tmp_path / "out", data="digitz", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_measure_costs_in_one_process() -> None:
    import torch

    from attnres.ablation import measure_costs

    configs = {"baseline": {"arch": "resnet20", "batch_size": 4},
               "cbam": {"arch": "resnet20", "attention": "cbam", "preset": "last-stage",
                        "batch_size": 4}}
    costs = measure_costs(configs, image_size=8, num_classes=3, repeats=3, train_repeats=3,
                          warmup=1, log=lambda m: None)
    assert costs["threads"] == torch.get_num_threads() == costs["machine"]["torch_threads"]
    assert costs["train_batch_size"] == [4] and costs["device"] == "cpu"
    import os
    # how busy the machine was, next to the figures (os.getloadavg: Unix)
    assert costs["machine"]["load_average_1min"] == pytest.approx(os.getloadavg()[0], abs=4)
    for name, settings in configs.items():
        model = build_model("resnet20", attention=settings.get("attention"),
                            preset=settings.get("preset"), num_classes=3)
        row = costs["configs"][name]
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["flops"] == count_flops(model, (1, 3, 8, 8))
        assert row["train_images_per_s"] == pytest.approx(4 / (row["train_step_ms"] / 1e3))
        assert row["latency_ms"] > 0 and row["peak_train_mem_mb"] > 0
        low, high = row["latency_ms_iqr"]
        assert low <= row["latency_ms"] <= high  # the median and its spread
        low, high = row["train_step_ms_iqr"]
        assert low <= row["train_step_ms"] <= high
    json.dumps(costs)  # JSON-able as written
    with pytest.raises(ValueError, match="repeats must be >= 3"):
        measure_costs(configs, image_size=8, num_classes=3, repeats=1, log=lambda m: None)


def test_peak_memory_per_configuration_does_not_depend_on_the_order() -> None:
    """The allocator's peak of one step of each network: the same numbers whichever
    network is measured first (the growth of the process's peak RSS would give the first
    one everything)."""
    from attnres.ablation import measure_costs

    configs = {"small": {"arch": "resnet20", "batch_size": 8},
               "big": {"arch": "resnet20", "attention": "cbam", "batch_size": 32}}
    peaks = []
    for order in (["small", "big"], ["big", "small"]):
        costs = measure_costs({n: configs[n] for n in order}, image_size=16, num_classes=10,
                              repeats=3, train_repeats=3, warmup=1, log=lambda m: None)
        peaks.append({n: costs["configs"][n]["peak_train_mem_mb"] for n in order})
    for name in configs:
        assert peaks[0][name] == pytest.approx(peaks[1][name], rel=0.02), peaks
    assert peaks[0]["big"] > 2 * peaks[0]["small"]  # 4x the batch, and CBAM
    assert "allocator" in costs["method"]["memory"]


def test_configurations_that_resolve_to_one_placement_train_once(tmp_path: Path,
                                                                  trainer) -> None:
    """Any configurations that are the same run on the grid's network, whatever options
    say so (placement, stages, preset), are trained once and reported as one row whose
    label names them all, with its real placement."""
    calls: list = []
    trainer(fake_train(calls))
    grid = {"configs": [{"name": "plain"},
                        {"name": "cbam-block", "attention": "cbam", "placement": "block"},
                        {"name": "cbam-stages", "attention": "cbam", "stages": [1, 2, 3]},
                        {"name": "cbam-preset", "attention": "cbam", "preset": "all"},
                        {"name": "cbam-last", "attention": "cbam", "stages": [3]}],
            "defaults": {"arch": "resnet20", "epochs": 3}}
    messages: list[str] = []
    rows = ablate(grid, out=tmp_path, seeds=[0], latency=False, explain_maps=False,
                  log=messages.append)
    assert sorted(Path(c.out).name for c in calls) == ["cbam-block-s0", "cbam-last-s0",
                                                       "plain-s0"]
    assert any("cbam-stages, cbam-preset: the same run as cbam-block" in m for m in messages)
    labels = {r["config"]: (r["label"], r["placement"]) for r in rows}
    assert labels == {"plain": ("plain", "none"),
                      "cbam-block": ("cbam-block = cbam-stages = cbam-preset",
                                     "cbam @ block, all stages"),
                      "cbam-last": ("cbam-last", "cbam @ block, stage 3")}
    assert json.loads((tmp_path / "merged.json").read_text()) == {
        "cbam-block": ["cbam-stages", "cbam-preset"]}
    assert main(["report", str(tmp_path)]) == 0  # from the folder alone: the same labels
    assert "| cbam-block = cbam-stages = cbam-preset | cbam @ block, all stages |" in (
        tmp_path / "results.md").read_text()


def test_costs_are_measured_after_every_run_has_trained(tmp_path: Path, trainer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency and memory are measured once, after the last training run (not between runs,
    where a run still training would share the machine), for every configuration, on the
    device the runs trained on."""
    events: list[str] = []
    calls: list = []
    train = fake_train(calls)
    trainer(lambda config: (events.append(f"train {Path(config.out).name}"), train(config))[1])

    def measure(configs, **kw):
        events.append(f"costs {','.join(configs)}")
        return {"threads": 1, "configs": {}, "device": kw["device"]}
    monkeypatch.setattr(run_mod, "measure_costs", measure)
    ablate(GRID, out=tmp_path, seeds=[0, 1], data="digits", explain_maps=False,
           overrides={"device": "cpu"}, log=lambda m: None)
    assert sorted(events[:-1]) == ["train baseline-s0", "train baseline-s1", "train se-s0",
                                   "train se-s1"]
    assert events[-1] == "costs baseline,se"


@pytest.mark.slow
def test_demo_beats_chance_on_every_row_and_says_what_it_ran(tmp_path: Path) -> None:
    """The real `attnres demo` (digits, 10 classes: chance is 10%), as `make demo` runs it."""
    import torch

    from attnres.ablation.demo import DEMO_EPOCHS, DEMO_IMAGE_SIZE

    messages: list[str] = []
    rows = ablation.demo(out=tmp_path / "demo", threads=torch.get_num_threads(),
                         log=messages.append)
    assert [r["config"] for r in rows] == ["baseline", "cbam", "se"]
    for row in rows:
        assert row["top1_mean"] > 50.0, (row["config"], row["top1_mean"])
    setup = (tmp_path / "demo" / "results.md").read_text().splitlines()[2]
    assert setup.startswith(f"Setup: data `digits`, {DEMO_IMAGE_SIZE} px images, "
                            f"{DEMO_EPOCHS} epochs per run")
    costs = json.loads((tmp_path / "demo" / "costs.json").read_text())
    assert costs["machine"]["cpu"] in setup and costs["image_size"] == DEMO_IMAGE_SIZE
    assert f"trained with {torch.get_num_threads()} torch thread" in setup
    assert any(m.startswith("demo: done in") for m in messages)


def test_docs_grid_files_are_rows_of_the_modules_preset() -> None:
    """The grid files the README's commands name train runs that join the `modules` table:
    every configuration has a preset row's name and settings, and together with the
    placements preset they cover the issue-14 rows (5 seeds of baseline and CBAM)."""
    grids = Path(__file__).resolve().parents[1] / "docs" / "grids"
    preset = {c["name"]: c for c in load_grid("modules").configs}
    seeds: dict[str, set[int]] = {}
    for path in sorted(grids.glob("modules-*.toml")):
        grid = load_grid(path)
        assert grid.name == "modules"
        for config in grid.configs:
            row = preset[config["name"]]
            assert {k: v for k, v in row.items() if v is not None} == config
            seeds.setdefault(config["name"], set()).update(grid.seeds)
    assert seeds == {"baseline": {0, 1, 2, 3, 4}, "cbam": {0, 1, 2, 3, 4},
                     "se": {0, 1, 2}, "eca": {0, 1, 2}, "bam": {0, 1, 2}}
