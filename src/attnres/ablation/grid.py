"""Grids: named presets and .toml files of configurations, and what each configuration runs.

A grid is a preset (`list_grid_presets()`) or a TOML file:

    seeds = [0, 1, 2]          # optional; `ablate(seeds=...)` wins
    [defaults]                 # TrainConfig fields shared by every configuration
    arch = "resnet20"
    epochs = 30
    [[configs]]
    name = "baseline"          # names the run folders: <name>-s<seed>/
    [[configs]]
    name = "cbam-last"
    attention = "cbam"
    preset = "last-stage"

Two configurations that resolve to the same run on the grid's network (the same recipe and
the same real placement, e.g. the `progressive` and `selective` presets on a 3-stage CIFAR
ResNet) are trained once, under the first one's name; see `dedupe`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from ..attention import list_attention
from ..models import list_presets
from ..utils import closest
from .results import run_identity

# The module the placement table of the CBAM paper (Woo et al. 2018) studies.
PLACEMENT_ATTENTION = "cbam"
# Set by `ablate` itself for every run, so a grid may not set them.
RESERVED = ("seed", "out", "resume")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _modules_configs() -> list[dict[str, Any]]:
    """The plain network and every registered gate at block placement (the folder names
    `baseline-s<seed>`, `<attention>-s<seed>`)."""
    return [{"name": "baseline", "attention": None},
            *({"name": name, "attention": name} for name in list_attention("gate"))]


def _placements_configs() -> list[dict[str, Any]]:
    """No attention, then CBAM at every placement preset (`list_presets()`)."""
    return [{"name": "none", "attention": None},
            *({"name": preset, "attention": PLACEMENT_ATTENTION, "preset": preset}
              for preset in list_presets())]


_PRESETS = {"modules": _modules_configs, "placements": _placements_configs}


@dataclasses.dataclass
class Grid:
    """Configurations to compare: `configs[i]` maps TrainConfig fields to values."""

    name: str
    configs: list[dict[str, Any]]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: list[int] | None = None


def list_grid_presets() -> list[str]:
    """Names accepted as a grid by `load_grid` and `ablate`."""
    return sorted(_PRESETS)


def preset_configs(name: str) -> list[dict[str, Any]]:
    """The configurations of preset `name`, built from the registries when asked."""
    if name not in _PRESETS:
        raise ValueError(f"unknown grid preset {name!r}{closest(name, list(_PRESETS))}; "
                         f"presets: {', '.join(list_grid_presets())}")
    return _PRESETS[name]()


def load_grid(spec: str | Path | dict[str, Any] | Grid) -> Grid:
    """A `Grid` from a preset name, a TOML file, or a dict shaped like the TOML file."""
    if isinstance(spec, Grid):
        return spec
    if isinstance(spec, dict):
        return _grid_from_dict(spec, name="grid")
    text = str(spec)
    if text in _PRESETS:
        return Grid(name=text, configs=preset_configs(text))
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ValueError(f"grid {text!r}: not a preset{closest(text, list(_PRESETS))} nor a "
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
            raise ValueError(f"grid key {key!r} unknown{closest(key, allowed)}; allowed "
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
    check_names(grid)
    return grid


def check_names(grid: Grid) -> None:
    """Every configuration has a unique name usable as a folder name."""
    seen: set[str] = set()
    for i, config in enumerate(grid.configs):
        name = config.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"grid configs[{i}] name={name!r}: needs a name of letters, "
                             f"digits and . _ + - (it names the run folder)")
        if name in seen:
            raise ValueError(f"grid configuration name {name!r} appears twice; names must "
                             f"be unique")
        seen.add(name)


def run_settings(grid: Grid, config: dict[str, Any], overrides: dict[str, Any],
                 fields: set[str]) -> dict[str, Any]:
    """TrainConfig keyword arguments for one configuration (without seed and out);
    `fields` are the TrainConfig field names."""
    settings = {**grid.defaults, **{k: v for k, v in config.items() if k != "name"},
                **overrides}
    for key in settings:
        if key in RESERVED:
            raise ValueError(f"configuration {config['name']!r} sets {key!r}, which ablate "
                             f"sets for every run; remove it from the grid")
        if key not in fields:
            raise ValueError(f"configuration {config['name']!r}: unknown TrainConfig field "
                             f"{key!r}{closest(key, sorted(fields))}")
    return settings


def dedupe(plans: list[tuple[str, dict[str, Any]]]) -> tuple[list[tuple[str, dict[str, Any]]],
                                                             dict[str, list[str]]]:
    """Drop configurations that would train the same run as an earlier one.

    `plans`: (name, full TrainConfig dict) per configuration. Returns the kept plans and,
    per kept name, the names merged into it (`{"progressive": ["selective"]}`).
    """
    kept: list[tuple[str, dict[str, Any]]] = []
    merged: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for name, settings in plans:
        key = json.dumps(run_identity(settings), sort_keys=True, default=str)
        if key in first:
            merged[first[key]].append(name)
            continue
        first[key] = name
        merged[name] = []
        kept.append((name, settings))
    return kept, merged


__all__ = ["Grid", "PLACEMENT_ATTENTION", "check_names", "dedupe", "list_grid_presets",
           "load_grid", "preset_configs", "run_settings"]
