"""Results folders: the small files of finished runs, what run each one is, and its label.

A results folder holds one sub-folder per finished run, `<config>-s<seed>/`, with the
`summary.json`, `metrics.csv` and `config.json` that `attnres train` wrote (a training run
folder is also a results folder: it holds the same files next to its checkpoints). Rows of
another folder join a table through `Reuse` ("docs/results/modules:baseline=none,cbam=all").

Two runs are the same experiment when their recipes agree: every TrainConfig field except
those of `RUN_FIELDS` (where and how a run executes), with the data compared by name (a
named data set) or by file name (the same archive in another folder is the same data), and
the placement compared as the real placement it resolves to on the network (preset `all`
and placement `block` on every stage are one placement).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..training import upgrade_config_dict
from ..utils import atomic_write, atomic_write_json

# Fields that do not change what is learned: the seed (one per run) and how a run executes.
RUN_FIELDS = frozenset({"seed", "out", "resume", "overwrite", "device", "compile", "monitor",
                        "skip_nonfinite", "tensorboard", "quiet", "cache_dir",
                        "channels_last", "deterministic", "workers"})
# Compared as the placement they resolve to (see `placement_plan`).
PLACEMENT_FIELDS = ("placement", "stages", "blocks", "preset")
RUN_FILES = ("config.json", "metrics.csv", "summary.json")  # summary.json last: it marks a copy
RUN_DIR_RE = re.compile(r"^(?P<config>[A-Za-z0-9][A-Za-z0-9._+-]*)-s(?P<seed>\d+)$")


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run: its configuration name, seed, folder and files' contents."""

    config: str
    seed: int
    folder: Path
    summary: dict[str, Any]
    settings: dict[str, Any]  # config.json (the TrainConfig as run)


@dataclasses.dataclass(frozen=True)
class Reuse:
    """Runs of `folder` shown in another table: `names` maps their configuration name
    there to the row name here ({"baseline": "none"})."""

    folder: Path
    names: dict[str, str]


def parse_reuse(text: str) -> Reuse:
    """`"FOLDER:src=dst,src2=dst2"` (or `src` alone: same name) as a `Reuse`."""
    folder, sep, spec = str(text).rpartition(":")
    if not sep or not folder or not spec:
        raise ValueError(f"reuse {text!r}: expected FOLDER:CONFIG=ROW[,CONFIG=ROW...], e.g. "
                         f"docs/results/modules:baseline=none,cbam=all")
    names: dict[str, str] = {}
    for item in spec.split(","):
        src, _, dst = item.partition("=")
        src, dst = src.strip(), (dst.strip() or src.strip())
        for name in (src, dst):
            if not RUN_DIR_RE.match(f"{name}-s0"):
                raise ValueError(f"reuse {text!r}: {name!r} is not a configuration name "
                                 f"(letters, digits and . _ + -)")
        names[src] = dst
    return Reuse(Path(folder), names)


def data_key(data: Any) -> str:
    """What identifies a data set: its name, or the file / folder name of a path."""
    from ..data import NAMED_DATASETS

    text = str(data)
    return text.lower() if text.lower() in NAMED_DATASETS else Path(text).name


def placement_plan(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The real placement of a TrainConfig dict on its network: placements, stages and
    per-stage block masks (stages only for the placements inside stages); None without
    attention."""
    from ..models.build import arch_spec
    from ..models.placement import resolve_plan

    if not settings.get("attention"):
        return None
    plan = resolve_plan(arch_spec(settings.get("arch", "resnet20")).layers,
                        settings.get("placement") or "block", settings.get("stages"),
                        settings.get("blocks"), settings.get("preset"))
    inside = [p for p in plan.placements if p not in ("stem", "head")]
    return {"placements": sorted(plan.placements),
            "stages": list(plan.stages) if inside else [],
            "blocks": {str(s): list(plan.blocks[s]) for s in plan.stages} if inside else {}}


def run_identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The recipe of a TrainConfig dict, as compared between runs (module docstring)."""
    normal = json.loads(json.dumps(upgrade_config_dict(settings), default=str))
    identity = {k: v for k, v in normal.items()
                if k not in RUN_FIELDS and k not in PLACEMENT_FIELDS}
    if "data" in identity:
        identity["data"] = data_key(identity["data"])
    identity["placement"] = placement_plan(normal)
    return identity


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def recipe_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """`field (stored vs wanted)` for each recipe field where two TrainConfig dicts differ;
    fields only one of them has (another attnres version) are not compared."""
    a, b = run_identity(stored), run_identity(wanted)
    out = []
    for key in a:
        if key in ("loader", "amp") and "auto" in (a[key], b.get(key)):
            continue  # "auto" is resolved per machine; a run records what it resolved to
        if key in b and a[key] != b[key]:
            if key == "placement":
                shown = f"{placement_label(stored)} vs {placement_label(wanted)}"
            else:
                shown = f"{_show(a[key])} vs {_show(b[key])}"
            out.append(f"{key} ({shown})")
    return out


def _stage_text(stages: list[int], num_stages: int) -> str:
    if stages == list(range(1, num_stages + 1)):
        return "all stages"
    if len(stages) == 1:
        return f"stage {stages[0]}"
    if stages == list(range(stages[0], stages[-1] + 1)):
        return f"stages {stages[0]}-{stages[-1]}"
    return "stages " + ", ".join(map(str, stages))


def placement_label(settings: dict[str, Any]) -> str:
    """Where a run's attention really is, e.g. "cbam @ block, stages 2-3",
    "cbam @ stem + head", "none"."""
    from ..models.build import arch_spec

    plan = placement_plan(settings)
    if plan is None:
        return "none"
    num_stages = len(arch_spec(settings.get("arch", "resnet20")).layers)
    order = ("stem", "block", "block-post", "stage", "head")
    parts = []
    for name in sorted(plan["placements"], key=order.index):
        if name in ("stem", "head"):
            parts.append(name)
            continue
        text = f"{name}, {_stage_text(plan['stages'], num_stages)}"
        partial = [f"{sum(m)}/{len(m)} blocks of stage {s}"
                   for s, m in plan["blocks"].items() if not all(m)]
        parts.append(text + (f" ({'; '.join(partial)})" if partial else ""))
    return f"{settings['attention']} @ {' + '.join(parts)}"


def config_label(name: str, settings: dict[str, Any], same_as: Sequence[str] = ()) -> str:
    """The row name: `name`, joined by the configurations of its grid that resolved to the
    same run (`same_as`, see `grid.dedupe`; "cbam-a = cbam-b"), and for a configuration
    named after a placement preset, by every preset that is the same placement on this
    network ("progressive = selective (3 stages)": on 3 stages both put attention in
    stages 2 and 3)."""
    from ..models import list_presets
    from ..models.build import arch_spec

    names = [name, *(n for n in same_as if n != name)]
    if name not in list_presets() or not settings.get("attention"):
        return " = ".join(names)
    plan = placement_plan(settings)
    presets = [p for p in list_presets() if p not in names
               and placement_plan({**settings, "placement": "block", "stages": None,
                                   "blocks": None, "preset": p}) == plan]
    if not presets and len(names) == 1:
        return name
    stages = len(arch_spec(settings.get("arch", "resnet20")).layers)
    return f"{' = '.join([*names, *presets])} ({stages} stages)"


def read_run(folder: Path) -> Run | None:
    """The run in `folder` (named `<config>-s<seed>`), or None without a readable summary."""
    m = RUN_DIR_RE.match(folder.name)
    if m is None:
        return None
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    try:
        settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        settings = dict(summary.get("config") or {})
    settings = upgrade_config_dict(settings)  # an older attnres's amp / amp_dtype
    seed = int(m.group("seed"))
    if settings.get("seed", seed) != seed:
        raise ValueError(f"{folder}: the folder name says seed {seed}, config.json says seed "
                         f"{settings['seed']}; rename the folder or fix the file")
    return Run(m.group("config"), seed, folder, summary, settings)


def finished(run: Run | None) -> bool:
    """A run whose summary says finished and gives the last epoch's accuracy."""
    return (run is not None and bool(run.summary.get("finished"))
            and run.summary.get("last_val_top1") is not None)


def find_runs(folder: str | Path) -> tuple[list[Run], list[str]]:
    """Finished runs in `folder`, sorted by (config, seed), and the folder names of runs
    that have a summary but are not finished."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {str(folder)!r} does not exist")
    runs, unfinished = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        run = read_run(sub)
        if finished(run):
            runs.append(run)
        elif run is not None:
            unfinished.append(sub.name)
    return sorted(runs, key=lambda r: (r.config, r.seed)), unfinished


def collect_runs(folder: str | Path, reuse: Sequence[Reuse] = ()
                 ) -> tuple[dict[str, list[Run]], list[str]]:
    """Finished runs per row name: those of `folder`, then the reused ones (renamed).
    Also returns the unfinished runs' folder names and the reused rows with no finished
    run yet."""
    runs, unfinished = find_runs(folder)
    table: dict[str, list[Run]] = {}
    for run in runs:
        table.setdefault(run.config, []).append(run)
    for item in reuse:
        theirs, _ = find_runs(item.folder)
        for src, dst in item.names.items():
            if dst in table:
                raise ValueError(f"reuse {item.folder}:{src}={dst}: {folder} has runs named "
                                 f"{dst!r} itself; choose another row name")
            picked = [dataclasses.replace(r, config=dst) for r in theirs if r.config == src]
            if not picked:  # a grid still training: the row waits (and the report says so)
                names = sorted({r.config for r in theirs})
                unfinished.append(f"{dst} (reused: {item.folder} has no finished run of "
                                  f"{src!r} yet; it has: {', '.join(names) or 'none'})")
                continue
            table[dst] = picked
    return table, unfinished


def copy_run(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished run's small files (`RUN_FILES`) from a training run folder into a
    results folder, each atomically, `summary.json` last."""
    src, dst = Path(src), Path(dst)
    summary = json.loads((src / "summary.json").read_text(encoding="utf-8"))
    for name in RUN_FILES:
        if (src / name).is_file():
            atomic_write(dst / name, (src / name).read_bytes())
        elif name == "config.json":
            atomic_write_json(dst / name, summary.get("config", {}))
    return dst


__all__ = ["RUN_FIELDS", "Reuse", "Run", "collect_runs", "config_label", "copy_run",
           "find_runs", "parse_reuse", "placement_label", "read_run", "recipe_differences",
           "run_identity"]
