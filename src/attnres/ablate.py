"""Ablations: a grid of configurations x seeds, trained for real, reported honestly.

A grid is a named preset (`modules`, `placements`) or a TOML file:

    seeds = [0, 1, 2]          # optional; `ablate(seeds=...)` wins
    [defaults]                 # TrainConfig fields shared by every configuration
    arch = "resnet20"
    epochs = 30
    [[configs]]
    name = "baseline"          # folder name: out/<name>-s<seed>/
    [[configs]]
    name = "cbam-last"
    attention = "cbam"
    preset = "last-stage"

Every configuration x seed is one `attnres.train` run; a run whose `summary.json`
says `finished` is not trained again, so an interrupted ablation resumes where it stopped.
The report (`results.md`, `results.csv`, `accuracy_vs_latency.png`) gives validation
accuracy as mean +- sample std over seeds next to the costs: parameters, FLOPs, inference
latency relative to the baseline (timed interleaved in the same process), training
throughput and peak training memory.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import math
import os
import platform
import re
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Presets: the two tables of the CBAM literature, with attention at block placement.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "modules": [
        {"name": "baseline", "attention": None},
        {"name": "se", "attention": "se"},
        {"name": "eca", "attention": "eca"},
        {"name": "cbam", "attention": "cbam"},
        {"name": "bam", "attention": "bam"},
    ],
    "placements": [
        {"name": "none", "attention": None},
        {"name": "last-stage", "attention": "cbam", "preset": "last-stage"},
        {"name": "all", "attention": "cbam", "preset": "all"},
        {"name": "progressive", "attention": "cbam", "preset": "progressive"},
        {"name": "selective", "attention": "cbam", "preset": "selective"},
        {"name": "stem+head", "attention": "cbam", "preset": "stem+head"},
    ],
}

# Set by `ablate` itself for every run, so a grid may not set them.
_RESERVED = ("seed", "out", "resume")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

CSV_COLUMNS = [
    "config", "attention", "placement", "preset", "seeds", "runs_finished",
    "top1_mean", "top1_std", "top5_mean", "top5_std", "top1_per_seed",
    "params", "flops", "cpu_latency_ms", "cpu_latency_ratio", "gpu_latency_ms",
    "gpu_latency_ratio", "train_images_per_s", "peak_train_mem_mb", "train_time_s",
]


@dataclasses.dataclass
class Grid:
    """Configurations to compare: `configs[i]` maps TrainConfig fields to values."""

    name: str
    configs: list[dict[str, Any]]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: list[int] | None = None


def _closest(name: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def list_grid_presets() -> list[str]:
    """Names accepted as a grid by `load_grid` and `ablate`."""
    return sorted(PRESETS)


def load_grid(spec: str | Path | dict[str, Any] | Grid) -> Grid:
    """A `Grid` from a preset name, a TOML file, or a dict shaped like the TOML file."""
    if isinstance(spec, Grid):
        return spec
    if isinstance(spec, dict):
        return _grid_from_dict(spec, name="grid")
    text = str(spec)
    if text in PRESETS:
        return Grid(name=text, configs=[dict(c) for c in PRESETS[text]])
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ValueError(f"grid {text!r}: not a preset{_closest(text, list(PRESETS))} nor a "
                         f".toml file; presets: {', '.join(list_grid_presets())}")
    if not path.is_file():
        raise FileNotFoundError(f"grid file {text!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"grid file {text!r} is not valid TOML: {e}") from None
    return _grid_from_dict(raw, name=path.stem)


def _grid_from_dict(raw: dict[str, Any], name: str) -> Grid:
    allowed = ("configs", "defaults", "seeds", "name")
    for key in raw:
        if key not in allowed:
            raise ValueError(f"grid key {key!r} unknown{_closest(key, allowed)}; allowed "
                             f"top-level keys: {', '.join(allowed)} (TrainConfig fields go "
                             f"under [defaults] or [[configs]])")
    configs = raw.get("configs")
    if not isinstance(configs, list) or not configs:
        raise ValueError("grid has no configurations: add at least one [[configs]] table "
                         "with a name")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValueError(f"grid [defaults] must be a table, got {defaults!r}")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) for s in seeds)):
        raise ValueError(f"grid seeds={seeds!r}: must be a non-empty list of integers")
    out = []
    for i, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"grid configs[{i}] must be a table, got {config!r}")
        out.append(dict(config))
    grid = Grid(name=str(raw.get("name", name)), configs=out, defaults=dict(defaults),
                seeds=seeds)
    _check_names(grid)
    return grid


def _check_names(grid: Grid) -> None:
    seen: set[str] = set()
    for i, config in enumerate(grid.configs):
        name = config.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"grid configs[{i}] name={name!r}: needs a name of letters, "
                             f"digits and . _ + - (it names the run folder)")
        if name in seen:
            raise ValueError(f"grid configuration name {name!r} appears twice; names must "
                             f"be unique")
        seen.add(name)


def _train_fields() -> tuple[type, set[str]]:
    from attnres.training import TrainConfig
    return TrainConfig, {f.name for f in dataclasses.fields(TrainConfig)}


def _run_settings(grid: Grid, config: dict[str, Any], overrides: dict[str, Any],
                  fields: set[str]) -> dict[str, Any]:
    """TrainConfig keyword arguments for one configuration (without seed and out)."""
    settings = {**grid.defaults, **{k: v for k, v in config.items() if k != "name"},
                **overrides}
    for key in settings:
        if key in _RESERVED:
            raise ValueError(f"configuration {config['name']!r} sets {key!r}, which ablate "
                             f"sets for every run; remove it from the grid")
        if key not in fields:
            raise ValueError(f"configuration {config['name']!r}: unknown TrainConfig field "
                             f"{key!r}{_closest(key, sorted(fields))}")
    return settings


def _check_data(spec: str) -> None:
    """Fail before the first run when the data is neither a known name nor a path."""
    from attnres.data import NAMED_DATASETS

    if str(spec).lower() not in NAMED_DATASETS and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path"
                                f"{_closest(str(spec).lower(), list(NAMED_DATASETS))}")


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _same_settings(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose stored value differs from the wanted one (JSON-normalised)."""
    norm = json.loads(json.dumps(wanted, default=str))
    return [k for k, v in norm.items() if k in stored and stored[k] != v]


def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan with fewer than two values)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def hardware() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, threads, torch, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(terse=True), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _measure_costs(models: dict[str, torch.nn.Module], image_size: int,
                   log: Callable[[str], None], latency: bool = True
                   ) -> dict[str, dict[str, float]]:
    """Params, FLOPs and (with `latency`) batch-1 inference latency on CPU and GPU."""
    from attnres.analysis.bench import time_interleaved
    from attnres.analysis.profile import count_flops, count_params

    shape = (1, 3, image_size, image_size)
    costs: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        costs[name] = {"params": count_params(model), "flops": count_flops(model, shape)}
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if not latency:
        devices = []
    for device in devices:
        log(f"timing batch-1 inference on {device} ({len(models)} models, interleaved)")
        x = torch.randn(shape, device=device)
        moved = {name: m.to(device).eval() for name, m in models.items()}

        def forward(model: torch.nn.Module) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return model(x)
            return run

        medians = time_interleaved({n: forward(m) for n, m in moved.items()},
                                   warmup=5, repeats=30)
        for name, seconds in medians.items():
            costs[name][f"{device.replace('cuda', 'gpu')}_latency_ms"] = seconds * 1e3
        for model in moved.values():
            model.to("cpu")
    return costs


def _config_label(config: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
    attention = settings.get("attention")
    return {"attention": str(attention) if attention else "none",
            "placement": "" if not attention else str(settings.get("placement") or "block"),
            "preset": "" if not attention else str(settings.get("preset") or "")}


def ablate(grid: str | Path | dict[str, Any] | Grid, *, out: str | Path,
           seeds: Sequence[int] | None = None, data: str | None = None,
           arch: str | None = None, epochs: int | None = None,
           batch_size: int | None = None, overrides: dict[str, Any] | None = None,
           latency: bool = True, explain_maps: bool = True,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every configuration x seed of `grid`, then write the report under `out`.

    `grid`: a preset name (`list_grid_presets()`), a .toml path, a dict or a `Grid`.
    `seeds` (default: the grid's, else `(0,)`), `data`, `arch`, `epochs`, `batch_size` and
    `overrides` (any TrainConfig fields) apply to every configuration and win over the
    grid. Runs go to `out/<config>-s<seed>/`; finished ones are skipped. Returns one row
    per configuration, the rows of `results.csv` (accuracies in the units of
    `summary.json`; `top1_per_seed` as a list).
    """
    from attnres.training import train

    grid = load_grid(grid)
    _check_names(grid)
    TrainConfig, fields = _train_fields()
    seeds = list(seeds) if seeds is not None else (grid.seeds or [0])
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}: need one or more distinct integers")
    common = dict(overrides or {})
    for key, value in (("data", data), ("arch", arch), ("epochs", epochs),
                       ("batch_size", batch_size)):
        if value is not None:
            common[key] = value
    out = Path(out)

    # Validate every configuration before training the first one.
    from attnres.training import validate_config
    plans = [(config, _run_settings(grid, config, common, fields)) for config in grid.configs]
    for config, settings in plans:
        config_0 = TrainConfig(**settings, seed=seeds[0],
                               out=str(out / f"{config['name']}-s{seeds[0]}"))
        validate_config(config_0)
        _check_data(config_0.data)
    out.mkdir(parents=True, exist_ok=True)

    summaries: dict[str, list[dict[str, Any]]] = {}
    total = len(plans) * len(seeds)
    done = 0
    for config, settings in plans:
        summaries[config["name"]] = []
        for seed in seeds:
            done += 1
            run_dir = out / f"{config['name']}-s{seed}"
            summary = _read_summary(run_dir)
            if summary is not None and summary.get("finished"):
                differ = _same_settings(summary.get("config", {}), settings)
                if differ:
                    raise ValueError(
                        f"{run_dir} holds a finished run with different {', '.join(differ)}; "
                        f"use another --out or delete that folder")
                log(f"[{done}/{total}] {run_dir.name}: finished earlier, skipped")
            else:
                kwargs: dict[str, Any] = {**settings, "seed": seed, "out": str(run_dir)}
                if (run_dir / "last.pt").is_file() and "resume" in fields:
                    kwargs["resume"] = str(run_dir)
                    log(f"[{done}/{total}] {run_dir.name}: resuming")
                else:
                    log(f"[{done}/{total}] {run_dir.name}: training")
                summary = train(TrainConfig(**kwargs))
            summaries[config["name"]].append(summary)

    rows = _aggregate(plans, summaries, seeds)
    from attnres.checkpoint import load_model
    models = {config["name"]: load_model(out / f"{config['name']}-s{seeds[0]}" / "last.pt")
              for config, _ in plans}
    image_size = int(next(iter(models.values())).preprocessing["image_size"])
    _add_costs(rows, _measure_costs(models, image_size, log, latency=latency))
    del models

    explain_note = ""
    if explain_maps:
        explain_note = _explain(out, [c["name"] for c, _ in plans], seeds[0], plans[0][1], log)

    _write_report(out, grid, rows, seeds, explain_note)
    from attnres.analysis.profile import FLOP_COUNTER
    log(format_table(rows))
    log(f"FLOPs: {FLOP_COUNTER}.")
    log(f"report: {out / 'results.md'}")
    return rows


def _aggregate(plans: list[tuple[dict[str, Any], dict[str, Any]]],
               summaries: dict[str, list[dict[str, Any]]], seeds: list[int]
               ) -> list[dict[str, Any]]:
    rows = []
    for config, settings in plans:
        runs = summaries[config["name"]]
        # The last epoch's accuracy: picking the best epoch would select on validation data.
        top1 = [float(s["last_val_top1"]) for s in runs]
        top5 = [float(s["last_val_top5"]) for s in runs]
        top1_mean, top1_std = _mean_std(top1)
        top5_mean, top5_std = _mean_std(top5)

        def mean_of(key: str, runs: list[dict[str, Any]] = runs) -> float:
            values = [float(s[key]) for s in runs if s.get(key) is not None]
            return float(np.mean(values)) if values else math.nan

        rows.append({
            "config": config["name"], **_config_label(config, settings),
            "seeds": len(seeds), "runs_finished": sum(bool(s.get("finished")) for s in runs),
            "top1_mean": top1_mean, "top1_std": top1_std,
            "top5_mean": top5_mean, "top5_std": top5_std, "top1_per_seed": top1,
            "params": int(runs[0]["params"]) if runs[0].get("params") is not None else None,
            "train_images_per_s": mean_of("train_images_per_s"),
            "peak_train_mem_mb": mean_of("peak_train_mem_mb"),
            "train_time_s": mean_of("train_time_s"),
        })
    return rows


def _add_costs(rows: list[dict[str, Any]], costs: dict[str, dict[str, float]]) -> None:
    # Ratios are to the first configuration without attention (else the first one).
    base = next((r for r in rows if r["attention"] == "none"), rows[0])
    for row in rows:
        cost = costs.get(row["config"], {})
        if "params" in cost:
            row["params"] = int(cost["params"])
        row["flops"] = int(cost["flops"]) if "flops" in cost else None
        for device in ("cpu", "gpu"):
            ms = cost.get(f"{device}_latency_ms")
            base_ms = costs.get(base["config"], {}).get(f"{device}_latency_ms")
            row[f"{device}_latency_ms"] = ms
            row[f"{device}_latency_ratio"] = ms / base_ms if ms and base_ms else None
    for row in rows:
        row["baseline"] = base["config"]


def _explain(out: Path, names: list[str], seed: int, settings: dict[str, Any],
             log: Callable[[str], None]) -> str:
    """Grad-CAM / attention-map grid of each configuration; failures only cost the grid."""
    try:
        from attnres.analysis.explain import explain
    except ImportError:
        return "(attention maps skipped: attnres.analysis.explain is not available)"
    try:
        checkpoints = [out / f"{name}-s{seed}" / "best.pt" for name in names]
        checkpoints = [c if c.is_file() else c.with_name("last.pt") for c in checkpoints]
        images = _sample_images(settings)
        log(f"explaining {len(checkpoints)} models on {len(images)} validation images")
        explain([str(c) for c in checkpoints], images=images, out=str(out / "explain"))
        if (out / "explain" / "grid.png").is_file():
            return "![Grad-CAM and attention maps](explain/grid.png)"
        return "(attention maps: explain wrote no grid.png)"
    except Exception as e:  # the table must survive a broken explanation
        log(f"warning: attention maps failed: {e}")
        _write_atomic(out / "explain_error.txt", traceback.format_exc())
        return f"(attention maps failed: {type(e).__name__}: {e}; see explain_error.txt)"


def _sample_images(settings: dict[str, Any], count: int = 4) -> list[np.ndarray]:
    """The first validation image of each of the first `count` classes, `(H, W, 3)` uint8."""
    from attnres.data import load_dataset

    # the same data and split as training (fields left unset take load_dataset's defaults)
    kwargs = {key: settings[field] for key, field in (
        ("val_split", "val_split"), ("seed", "split_seed"), ("image_size", "image_size"),
        ("cache_dir", "cache_dir")) if settings.get(field) is not None}
    data = load_dataset(str(settings.get("data", "digits")), **kwargs)
    labels = data.val.labels.tolist()
    return [data.val.images[labels.index(cls)].permute(1, 2, 0).numpy()
            for cls in range(min(count, data.num_classes)) if cls in labels]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    base = rows[0].get("baseline", rows[0]["config"]) if rows else ""
    header = ["config", "attention", "val top-1", "val top-5", "params", "MFLOPs",
              f"CPU latency (x {base})", "GPU latency", "train img/s", "peak train MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        where = r["placement"] + (f" ({r['preset']})" if r["preset"] else "")
        cells = [
            r["config"], r["attention"] + (f" @ {where}" if r["attention"] != "none" else ""),
            _acc(r["top1_mean"], r["top1_std"]), _acc(r["top5_mean"], r["top5_std"]),
            _fmt(r["params"], ","), _fmt(r["flops"] / 1e6 if r.get("flops") else None, ".2f"),
            (f"{r['cpu_latency_ratio']:.2f} ({r['cpu_latency_ms']:.2f} ms)"
             if r.get("cpu_latency_ratio") else "-"),
            (f"{r['gpu_latency_ratio']:.2f} ({r['gpu_latency_ms']:.2f} ms)"
             if r.get("gpu_latency_ratio") else "-"),
            _fmt(r["train_images_per_s"], ".0f"), _fmt(r["peak_train_mem_mb"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_report(out: Path, grid: Grid, rows: list[dict[str, Any]], seeds: list[int],
                  explain_note: str) -> None:
    from attnres.analysis.profile import FLOP_COUNTER

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: "" if v is None or (isinstance(v, float) and math.isnan(v))
                            else v for k, v in row.items()},
                         "top1_per_seed": ";".join(f"{v:g}" for v in row["top1_per_seed"])})
    _write_atomic(out / "results.csv", buffer.getvalue())

    hw = hardware()
    plot_ok = _plot(out / "accuracy_vs_latency.png", rows)
    first = _read_summary(out / f"{rows[0]['config']}-s{seeds[0]}") or {}
    config = first.get("config", {})
    lines = [
        f"# Ablation `{grid.name}`",
        "",
        f"Data `{config.get('data', '?')}`, architecture `{config.get('arch', '?')}`, "
        f"epochs {config.get('epochs', '?')}, batch size {config.get('batch_size', '?')}, "
        f"seeds {', '.join(map(str, seeds))}. Validation accuracy of the last epoch, "
        "mean ± sample std over seeds (no ± with one seed). Latency: batch 1, median of "
        f"interleaved runs, as a ratio to `{rows[0].get('baseline', rows[0]['config'])}` "
        "measured in the same process.",
        "",
        format_table(rows),
        "",
        f"FLOPs: {FLOP_COUNTER}.",
        "Peak training memory and throughput are those recorded by `attnres train` "
        "(`summary.json`).",
        "",
        f"Hardware: {hw['cpu']}, {hw['cpu_cores']} cores visible, torch {hw['torch']} "
        f"(torch threads: {hw['torch_threads']}), Python {hw['python']}, {hw['os']}"
        + (f", GPU {hw['gpu']}" if hw["gpu"] else ", no GPU") + ".",
        "",
        "Per seed top-1: " + "; ".join(
            f"{r['config']} " + ", ".join(f"{v:.2f}" for v in r["top1_per_seed"])
            for r in rows) + ".",
        "",
    ]
    if plot_ok:
        lines += ["![accuracy vs latency](accuracy_vs_latency.png)", ""]
    if explain_note:
        lines += [explain_note, ""]
    _write_atomic(out / "results.md", "\n".join(lines))


def _plot(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Top-1 against CPU latency ratio, seed std as error bars; False when no latency."""
    if not any(r.get("cpu_latency_ratio") for r in rows):
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for r in rows:
        if not r.get("cpu_latency_ratio"):
            continue
        err = 0.0 if math.isnan(r["top1_std"]) else r["top1_std"]
        ax.errorbar(r["cpu_latency_ratio"], r["top1_mean"], yerr=err, fmt="o", capsize=4)
        ax.annotate(r["config"], (r["cpu_latency_ratio"], r["top1_mean"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel(f"CPU latency, batch 1 (x {rows[0].get('baseline', '')})")
    ax.set_ylabel("validation top-1 (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())
    return True


# About 60 CPU-seconds per configuration on one core (measured, see docs/RESULTS.md).
DEMO_EPOCHS = 12
DEMO_GRID = Grid(name="demo", configs=[c for c in PRESETS["modules"]
                                       if c["name"] in ("baseline", "se", "cbam")],
                 # digits are 8x8 originals: 16 px keeps all their detail at 1/4 the cost
                 defaults={"arch": "resnet20", "data": "digits", "image_size": 16})


def demo(out: str | Path = "runs/demo", epochs: int | None = None,
         log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """resnet20 without attention, with SE and with CBAM on digits, seed 0; see `ablate`."""
    epochs = DEMO_EPOCHS if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be at least 1")
    return ablate(DEMO_GRID, out=out, seeds=[0], epochs=epochs, log=log)
