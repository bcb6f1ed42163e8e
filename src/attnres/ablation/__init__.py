"""Ablations: a grid of configurations x seeds, trained for real, reported honestly.

    grid.py     presets (`modules`, `placements`) and .toml grids; what each one runs
    run.py      `ablate`: train the missing runs, keep their small files, measure costs
    demo.py     `demo`: the small real ablation of `attnres demo` / `make demo`
    results.py  results folders: finished runs, recipes compared, real placement labels
    stats.py    mean, sample std, Student-t intervals, paired differences and t-tests
    costs.py    params, FLOPs, latency, training speed and memory, measured in one process
    tables.py   `report`: the Markdown / CSV tables of a results folder, README blocks
    plot.py     per-seed accuracy and intervals against cost

A row's accuracy is the last epoch's validation top-1 (and top-5) of each seed's run.
"""

from __future__ import annotations

from .costs import hardware, measure_costs
from .grid import Grid, list_grid_presets, load_grid, preset_configs
from .results import Reuse, find_runs, parse_reuse, placement_label, recipe_differences
from .demo import DEMO_EPOCHS, DEMO_GRID, demo
from .run import ablate
from .stats import Estimate, PairedDifference, estimate, paired_difference
from .tables import (CSV_COLUMNS, build_rows, format_block, format_table, report,
                     update_markdown)

__all__ = ["CSV_COLUMNS", "DEMO_EPOCHS", "DEMO_GRID", "Estimate", "Grid", "PairedDifference",
           "Reuse", "ablate", "build_rows", "demo", "estimate", "find_runs", "format_block",
           "format_table", "hardware", "list_grid_presets", "load_grid", "measure_costs",
           "paired_difference", "parse_reuse", "placement_label", "preset_configs",
           "recipe_differences", "report", "update_markdown"]
