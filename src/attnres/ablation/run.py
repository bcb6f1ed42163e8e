"""Running a grid: train the missing (configuration, seed) runs, keep their small files,
measure the costs, write the report.

Training runs (checkpoints and all) go to `out/<config>-s<seed>/`. With `results`, each
finished run's `summary.json`, `metrics.csv` and `config.json` are copied into
`results/<config>-s<seed>/` as soon as it finishes; a run already in `results` (or finished
in `out`) is not trained again, so an interrupted grid resumes where it stopped, and a
results folder kept in git rebuilds its report without any checkpoint. A run whose recipe
differs from the grid's (`results.recipe_differences`) is refused, naming the fields.

This is the one module of `attnres.ablation` that imports the trainer (`_trainer`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint
from ..utils import atomic_write, atomic_write_json, closest
from .costs import measure_costs
from .grid import Grid, check_names, dedupe, load_grid, run_settings
from .results import Reuse, copy_run, finished, parse_reuse, read_run, recipe_differences
from .tables import MERGED_FILE, report


def _trainer() -> ModuleType:
    """`attnres.training` (TrainConfig, validate_config, train); looked up when
    called, so that tests can replace `train`."""
    return importlib.import_module("attnres.training")


def _check_data(spec: str) -> None:
    """Fail before the first run when the data is neither a known name nor a path."""
    from ..data import NAMED_DATASETS

    if str(spec).lower() not in NAMED_DATASETS and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path"
                                f"{closest(str(spec).lower(), list(NAMED_DATASETS))}")


def _plan(grid: Grid, seeds: list[int], common: dict[str, Any], out: Path,
          log: Callable[[str], None], recipe: str | None = None
          ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], dict[str, list[str]]]:
    """(name, explicit settings, full TrainConfig dict) per configuration to run, checked
    before anything is trained; duplicates of an earlier configuration are dropped and
    returned apart: {kept name: [the names it stands for]}. A `recipe` is the bottom
    layer, under the grid's values and `common` (as in train)."""
    trainer = _trainer()
    fields = {f.name for f in dataclasses.fields(trainer.TrainConfig)}
    plans, explicit = [], {}
    for config in grid.configs:
        settings = run_settings(grid, config, common, fields)
        if recipe is not None:
            settings = trainer.recipe_values(recipe, settings)
        first = trainer.TrainConfig(**settings, seed=seeds[0],
                                    out=str(out / f"{config['name']}-s{seeds[0]}"))
        trainer.validate_config(first)
        _check_data(first.data)
        explicit[config["name"]] = settings
        plans.append((config["name"], dataclasses.asdict(first)))
    kept, merged = dedupe(plans)
    for name, others in merged.items():
        if others:
            log(f"{', '.join(others)}: the same run as {name} on {plans[0][1]['arch']}; "
                f"trained once, as {name}")
    return [(name, explicit[name], full) for name, full in kept], {
        name: others for name, others in merged.items() if others}


def _refuse_changed(folder: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    differ = recipe_differences(stored, wanted)
    if differ:
        raise ValueError(f"{folder} holds a finished run with different {', '.join(differ)}; "
                         f"give the grid the same settings, or use another folder")


def _todo(plans: list[tuple[str, dict[str, Any], dict[str, Any]]], seeds: list[int],
          out: Path, results: Path, reused: dict[str, tuple[Reuse, str]],
          log: Callable[[str], None]) -> list[tuple[str, int, str]]:
    """(name, seed, "done" | "copy" | "train") per run; refuses changed recipes first."""
    todo = []
    for name, _, full in plans:
        if name in reused:
            item, src = reused[name]
            for seed in seeds:
                run = read_run(item.folder / f"{src}-s{seed}")
                if finished(run):
                    _refuse_changed(run.folder, run.settings, full)
                else:
                    log(f"{name}: no finished run {src}-s{seed} in {item.folder} (reused rows "
                        f"are not trained here; run that folder's grid)")
            continue
        for seed in seeds:
            kept, trained = read_run(results / f"{name}-s{seed}"), read_run(out / f"{name}-s{seed}")
            if finished(kept):
                _refuse_changed(kept.folder, kept.settings, full)
                todo.append((name, seed, "done"))
            elif finished(trained):
                _refuse_changed(trained.folder, trained.settings, full)
                todo.append((name, seed, "copy"))
            else:
                todo.append((name, seed, "train"))
    return todo


def _train_missing(plans: list[tuple[str, dict[str, Any], dict[str, Any]]],
                   todo: list[tuple[str, int, str]], out: Path, results: Path,
                   log: Callable[[str], None]) -> None:
    trainer = _trainer()
    explicit = {name: settings for name, settings, _ in plans}
    for i, (name, seed, action) in enumerate(todo, 1):
        run_dir, keep_dir = out / f"{name}-s{seed}", results / f"{name}-s{seed}"
        tag = f"[{i}/{len(todo)}] {name}-s{seed}"
        if action == "done":
            log(f"{tag}: finished earlier, skipped")
            continue
        if action.startswith("shard"):
            log(f"{tag}: left to {action}")
            continue
        if action.startswith("not trained"):
            log(f"{tag}: {action}")
            continue
        if action == "train":
            kwargs: dict[str, Any] = {**explicit[name], "seed": seed, "out": str(run_dir)}
            if (run_dir / "last.pt").is_file():
                kwargs["resume"] = str(run_dir)
            else:  # the grid's own folder; a run killed before its first checkpoint
                kwargs["overwrite"] = True
            log(f"{tag}: {'resuming' if 'resume' in kwargs else 'training'}")
            summary = trainer.train(trainer.TrainConfig(**kwargs))
            if not summary.get("finished"):
                continue
        else:
            log(f"{tag}: finished earlier in {out}, copied")
        if keep_dir.resolve() != run_dir.resolve():
            copy_run(run_dir, keep_dir)


def _costs(plans: list[tuple[str, dict[str, Any], dict[str, Any]]], seeds: list[int],
           out: Path, results: Path, *, trained: bool, log: Callable[[str], None]) -> None:
    """Measure the costs into `results/costs.json`, unless it already holds every
    configuration and nothing was trained (so a rerun changes no byte of the report)."""
    path = results / "costs.json"
    names = [name for name, _, _ in plans]
    if path.is_file() and not trained:
        try:
            held = json.loads(path.read_text(encoding="utf-8")).get("configs", {})
        except json.JSONDecodeError:
            held = {}
        if all(name in held for name in names):
            log(f"costs: kept {path} (delete it to measure again)")
            return
    num_classes, image_size = _data_facts(plans, seeds, out)
    # on the device the runs trained on ("auto": CUDA when there is one)
    costs = measure_costs({name: full for name, _, full in plans}, image_size=image_size,
                          num_classes=num_classes, device=plans[0][2]["device"], log=log)
    atomic_write_json(path, costs)


def _data_facts(plans: list[tuple[str, dict[str, Any], dict[str, Any]]], seeds: list[int],
                out: Path) -> tuple[int, int]:
    """(num_classes, image_size) of the grid's data: from a checkpoint when there is one."""
    for name, _, _ in plans:
        for seed in seeds:
            for file in ("last.pt", "best.pt"):
                path = out / f"{name}-s{seed}" / file
                if path.is_file():
                    ckpt = load_checkpoint(path)
                    return (int(ckpt["build_args"]["num_classes"]),
                            int(ckpt["preprocessing"]["image_size"]))
    data = _open_data(plans[0][2])
    return data.num_classes, data.image_size


def _open_data(settings: dict[str, Any]) -> Any:
    """The grid's data as its runs read it: an `ImageData`, or a `StreamData` (listed, not
    decoded) for streamed runs."""
    from ..data import load_dataset, open_stream

    common = dict(val_split=settings["val_split"], seed=settings["split_seed"],
                  image_size=settings["image_size"], cache_dir=settings["cache_dir"])
    if settings.get("loader") == "stream":
        return open_stream(str(settings["data"]), mean=settings.get("mean"),
                           std=settings.get("std"), **common)
    return load_dataset(str(settings["data"]), **common)


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """"2/3" or (2, 3) -> (2, 3): shard I of N, 1 <= I <= N."""
    if isinstance(shard, str):
        index, sep, count = shard.partition("/")
        try:
            parsed = (int(index), int(count)) if sep else None
        except ValueError:
            parsed = None
    else:
        parsed = tuple(shard) if len(shard) == 2 else None  # type: ignore[assignment]
    if parsed is None or not all(isinstance(v, int) and not isinstance(v, bool)
                                 for v in parsed) or not 1 <= parsed[0] <= parsed[1]:
        raise ValueError(f"shard={shard!r}: I/N with 1 <= I <= N, e.g. 1/2")
    return parsed


def ablate(grid: str | Path | dict[str, Any] | Grid, *, out: str | Path,
           results: str | Path | None = None, reuse: Sequence[str | Reuse] = (),
           seeds: Sequence[int] | None = None, data: str | None = None,
           arch: str | None = None, epochs: float | None = None,
           batch_size: int | None = None, overrides: dict[str, Any] | None = None,
           baseline: str | None = None, latency: bool = True, explain_maps: bool = True,
           recipe: str | None = None, shard: str | tuple[int, int] | None = None,
           train: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every configuration x seed of `grid` that is not finished yet, then write the
    report (`report`) of the results folder.

    `grid`: a preset name (`list_grid_presets()`), a .toml path, a dict or a `Grid`.
    `seeds` (default: the grid's, else `(0,)`), `data`, `arch`, `epochs`, `batch_size` and
    `overrides` (any TrainConfig fields) apply to every configuration and win over the grid.
    `recipe` (`attnres.training.RECIPES`): the values every configuration starts from, under
    the grid's and the overrides (so `attnres ablate --recipe R` runs what `attnres train
    --recipe R` would, configuration by configuration).
    `results` (default `out`): where finished runs' small files are kept and the report is
    written. `reuse`: rows read from other results folders, not trained here
    ("docs/results/modules:baseline=none,cbam=all"). `latency`: measure the costs
    (`measure_costs`) into `results/costs.json`, kept as it is when it covers every
    configuration and nothing was trained. `shard` "I/N" (or (I, N)): train only the runs
    whose place in the grid's fixed order (configurations, then seeds) is I modulo N, so
    that N processes (one thread each, say) share the grid without ever training the same
    run; a shard measures no costs and draws no maps (an unsharded call does, once every
    run is finished) but writes the report of what is there. `train=False`: train nothing
    (finished runs under `out` are still copied), measure the costs and draw the maps, and
    write the report of what is there, so that a grid still training elsewhere gets its
    cost columns. Returns the report's rows.
    """
    shard = parse_shard(shard) if shard is not None else None  # bad input fails first
    grid = load_grid(grid)
    check_names(grid)
    seeds = list(seeds) if seeds is not None else (grid.seeds or [0])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}: need one or more distinct integers")
    common = dict(overrides or {})
    for key, value in (("data", data), ("arch", arch), ("epochs", epochs),
                       ("batch_size", batch_size)):
        if value is not None:
            common[key] = value
    out = Path(out)
    results = Path(results) if results is not None else out
    reuse = [parse_reuse(r) if isinstance(r, str) else r for r in reuse]
    plans, merged = _plan(grid, seeds, common, out, log, recipe)
    names = [name for name, _, _ in plans]
    reused = {dst: (item, src) for item in reuse for src, dst in item.names.items()}
    for dst in reused:
        if dst not in names:
            raise ValueError(f"reuse names row {dst!r}, which is not a configuration of the "
                             f"grid{closest(dst, names)}; configurations: {', '.join(names)}")
    todo = _todo(plans, seeds, out, results, reused, log)
    if shard is not None:
        index, count = shard
        todo = [(name, seed, f"shard {k % count + 1}/{count}"
                 if action != "done" and k % count != index - 1 else action)
                for k, (name, seed, action) in enumerate(todo)]
        latency = explain_maps = False
    if not train:
        todo = [(name, seed, "not trained (train=False)" if action == "train" else action)
                for name, seed, action in todo]
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    if merged or (results / MERGED_FILE).is_file():  # the report labels the rows with them
        atomic_write_json(results / MERGED_FILE, merged)
    _train_missing(plans, todo, out, results, log)

    if latency:
        _costs(plans, seeds, out, results, trained=any(a == "train" for _, _, a in todo),
               log=log)
    if explain_maps:
        _explain(out, results, [n for n in names if n not in reused], seeds[0], plans[0][2],
                 log)
    rows = report(results, baseline=baseline, reuse=reuse)
    text = (results / "results.md").read_text(encoding="utf-8")
    log("\n".join(line for line in text.splitlines() if line.startswith("|")))
    log(f"report: {results / 'results.md'}")
    return rows


def _explain(out: Path, results: Path, names: list[str], seed: int, settings: dict[str, Any],
             log: Callable[[str], None]) -> None:
    """Grad-CAM / attention-map grid of each configuration trained here, into `out/explain/`,
    its grid copied to `results/explain_grid.png`; a failure costs only the grid
    (`results/explain_error.txt`)."""
    checkpoints = [out / f"{name}-s{seed}" / file for name in names
                   for file in ("best.pt", "last.pt")]
    checkpoints = [c for c in checkpoints if c.is_file() and (
        c.name == "best.pt" or not c.with_name("best.pt").is_file())]
    if not checkpoints:
        log(f"attention maps skipped: no checkpoints of seed {seed} in {out}")
        return
    error = results / "explain_error.txt"
    try:
        from ..analysis.explain import explain

        images, labels = _sample_images(settings)
        log(f"explaining {len(checkpoints)} models on {len(images)} validation images")
        explain([str(c) for c in checkpoints], images=images, labels=labels,
                out=str(out / "explain"))
        atomic_write(results / "explain_grid.png", (out / "explain" / "grid.png").read_bytes())
        error.unlink(missing_ok=True)
    except Exception as e:  # the table must survive a broken explanation
        log(f"warning: attention maps failed: {e}")
        atomic_write(error, traceback.format_exc())


def _sample_images(settings: dict[str, Any], count: int = 4
                   ) -> tuple[list[np.ndarray], list[str]]:
    """The first validation image of each of the first `count` classes, `(H, W, 3)` uint8
    (streamed data: decoded at full resolution), and their class names."""
    from ..data.decode import decode_full

    data = _open_data(settings)
    labels = data.val.labels.tolist()
    classes = [c for c in range(min(count, data.num_classes)) if c in labels]
    if settings.get("loader") == "stream":
        images = [decode_full(data.val.read(labels.index(c))).permute(1, 2, 0).numpy()
                  for c in classes]
    else:
        images = [data.val.images[labels.index(c)].permute(1, 2, 0).numpy() for c in classes]
    return images, [data.classes[c] for c in classes]


__all__ = ["ablate"]
