"""The report of a results folder: rows of statistics, the Markdown table, CSV and plot.

`report(folder)` reads the runs' files (`results.collect_runs`) and a costs JSON
(`costs.measure_costs`) and nothing else, so the same folder gives the same bytes on any
machine, however often it is run. A run's result is its LAST epoch's validation top-1
(and top-5), not its best epoch's: choosing the best epoch would select on the validation
data and bias every row upwards.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils import atomic_write, closest
from .results import (Reuse, Run, collect_runs, config_label, parse_reuse, placement_label,
                      run_identity)
from .notes import (costs_line, no_tta_line, reading_line, setup_line, time_line,
                    value_text)
from .stats import estimate, paired_difference, rerun_interval

MERGED_FILE = "merged.json"  # grid configurations that resolved to the same run as a row
BEGIN_MARK = "<!-- attnres-report:{name} -->"
END_MARK = "<!-- /attnres-report -->"
CSV_COLUMNS = [
    "config", "label", "placement", "seeds", "n", "top1_mean", "top1_std", "top1_ci_low",
    "top1_ci_high", "top1_rerun_low", "top1_rerun_high", "eval_images", "top1_no_tta_mean",
    "top1_per_seed", "top5_mean", "top5_std", "top5_ci_low", "top5_ci_high",
    "diff_mean", "diff_ci_low", "diff_ci_high", "diff_p", "diff_pairs", "diff_significant",
    "params", "flops", "latency_ms", "latency_ms_q1", "latency_ms_q3", "latency_ratio",
    "train_images_per_s",
    "train_speed_ratio", "peak_train_mem_mb", "baseline",
]
# Recipe fields named in the report's recipe line, in this order (when present).
RECIPE_SHOWN = ("arch", "data", "val_split", "split_seed", "image_size", "epochs",
                "batch_size", "lr", "momentum", "nesterov", "weight_decay", "label_smoothing",
                "schedule", "warmup_epochs", "attention_lr_mult", "amp", "tta", "pretrained")
_MODEL_FIELDS = ("attention", "attention_kwargs", "placement")


def default_baseline(table: dict[str, list[Run]]) -> str:
    """The row differences are taken to: `baseline` if it has no attention, else the only
    (else the first by name) row without attention, else the first row by name."""
    plain = sorted(n for n, runs in table.items() if not runs[0].settings.get("attention"))
    if "baseline" in plain:
        return "baseline"
    return plain[0] if plain else sorted(table)[0]


def _check_seeds_agree(name: str, runs: list[Run]) -> None:
    first = run_identity(runs[0].settings)
    for run in runs[1:]:
        other = run_identity(run.settings)
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            raise ValueError(f"runs of {name!r} differ in {', '.join(differ)}: "
                             f"{runs[0].folder} and {run.folder}; a row must be one recipe")


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def build_rows(table: dict[str, list[Run]], baseline: str,
               costs: dict[str, Any] | None = None,
               merged: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One row per configuration (the baseline first, then by name): statistics of the
    last epoch's top-1 / top-5 over seeds, the paired difference to `baseline`, and costs.
    `merged`: per row, the grid's configurations trained as that row (MERGED_FILE)."""
    if baseline not in table:
        raise ValueError(f"baseline {baseline!r} is not a row{closest(baseline, sorted(table))}"
                         f"; rows: {', '.join(sorted(table))}")
    measured = (costs or {}).get("configs", {})
    base_top1 = {r.seed: float(r.summary["last_val_top1"]) for r in table[baseline]}
    base_cost = measured.get(baseline, {})
    rows = []
    for name in [baseline, *sorted(n for n in table if n != baseline)]:
        runs = table[name]
        _check_seeds_agree(name, runs)
        top1 = {r.seed: float(r.summary["last_val_top1"]) for r in runs}
        top5 = [float(r.summary["last_val_top5"]) for r in runs
                if r.summary.get("last_val_top5") is not None]
        t1 = estimate(list(top1.values()))
        t5 = estimate(top5) if top5 else None
        diff = None if name == baseline else paired_difference(top1, base_top1)
        cost = measured.get(name, {})
        params = runs[0].summary.get("params", cost.get("params"))
        n_eval = (runs[0].summary.get("data") or {}).get("n_val")
        n_eval = int(n_eval) if n_eval else None
        plain = [r.summary.get("last_val_top1_no_tta") for r in runs]
        no_tta = estimate([float(v) for v in plain]) if None not in plain else None
        rows.append({
            "config": name,
            "label": config_label(name, runs[0].settings, (merged or {}).get(name, ())),
            "placement": placement_label(runs[0].settings), "seeds": sorted(top1),
            "n": t1.n, "top1": t1, "top5": t5, "diff": diff, "top1_per_seed": top1,
            "eval_images": n_eval, "rerun": rerun_interval(t1, n_eval=n_eval),
            "top1_no_tta": no_tta,
            "rerun_no_tta": no_tta and rerun_interval(no_tta, n_eval=n_eval),
            "params": int(params) if params is not None else None,
            "flops": cost.get("flops"), "latency_ms": cost.get("latency_ms"),
            "latency_ms_q1": (cost.get("latency_ms_iqr") or [None, None])[0],
            "latency_ms_q3": (cost.get("latency_ms_iqr") or [None, None])[1],
            "latency_ratio": _ratio(cost.get("latency_ms"), base_cost.get("latency_ms")),
            "train_images_per_s": cost.get("train_images_per_s"),
            "train_speed_ratio": _ratio(cost.get("train_images_per_s"),
                                        base_cost.get("train_images_per_s")),
            "peak_train_mem_mb": cost.get("peak_train_mem_mb"),
            "baseline": baseline, "settings": runs[0].settings,
            "train_threads": sorted({r.summary["threads"] for r in runs
                                     if r.summary.get("threads") is not None}),
            "train_time_s": {r.seed: float(r.summary["train_time_s"]) for r in runs
                             if r.summary.get("train_time_s") is not None},
            "train_cpus": sorted({(r.summary.get("precision") or {}).get("cpu") or "?"
                                  for r in runs}),
        })
    return rows


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as plain values (the columns of `CSV_COLUMNS`); missing values are None."""
    t1, t5, diff = row["top1"], row["top5"], row["diff"]
    d = diff.estimate if diff else None
    return {
        "config": row["config"], "label": row["label"], "placement": row["placement"],
        "seeds": row["seeds"], "n": row["n"], "top1_mean": t1.mean,
        "top1_std": None if math.isnan(t1.std) else t1.std, "top1_ci_low": t1.ci_low,
        "top1_ci_high": t1.ci_high,
        "top1_rerun_low": row["rerun"][0] if row["rerun"] else None,
        "top1_rerun_high": row["rerun"][1] if row["rerun"] else None,
        "eval_images": row["eval_images"],
        "top1_no_tta_mean": row["top1_no_tta"].mean if row["top1_no_tta"] else None,
        "top1_per_seed": [row["top1_per_seed"][s]
                                                      for s in row["seeds"]],
        "top5_mean": t5.mean if t5 else None,
        "top5_std": t5.std if t5 and not math.isnan(t5.std) else None,
        "top5_ci_low": t5.ci_low if t5 else None, "top5_ci_high": t5.ci_high if t5 else None,
        "diff_mean": d.mean if d else None, "diff_ci_low": d.ci_low if d else None,
        "diff_ci_high": d.ci_high if d else None, "diff_p": diff.p if diff else None,
        "diff_pairs": len(diff.seeds) if diff else None,
        "diff_significant": diff.significant if diff else None,
        **{k: row[k] for k in ("params", "flops", "latency_ms", "latency_ms_q1",
                               "latency_ms_q3", "latency_ratio",
                               "train_images_per_s", "train_speed_ratio",
                               "peak_train_mem_mb", "baseline")},
    }


def _acc(est: Any) -> str:
    if est is None:
        return "-"
    return f"{est.mean:.2f}" if math.isnan(est.std) else f"{est.mean:.2f} ± {est.std:.2f}"


def _ci(est: Any, sign: str = "") -> str:
    if est is None or est.ci_low is None:
        return "n/a"
    return f"[{est.ci_low:{sign}.2f}, {est.ci_high:{sign}.2f}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _cells(row: dict[str, Any]) -> list[str]:
    diff = row["diff"]
    if row["config"] == row["baseline"]:
        delta, p, mark = "(baseline)", "", ""
    elif diff is None:
        delta, p, mark = "n/a (no common seeds)", "n/a", ""
    else:
        pairs = len(diff.seeds)
        delta = (f"{diff.estimate.mean:+.2f} {_ci(diff.estimate, '+')}"
                 + (f" ({pairs} pairs)" if pairs != row["n"] else ""))
        p, mark = _p(diff.p), "*" if diff.significant else ""

    def num(value: float | None, spec: str, suffix: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{suffix}"

    return [
        row["label"], row["placement"], str(row["n"]), _acc(row["top1"]), _ci(row["top1"]),
        f"[{row['rerun'][0]:.2f}, {row['rerun'][1]:.2f}]" if row["rerun"] else "n/a",
        delta, p, mark, _acc(row["top5"]), num(row["params"], ","),
        num(row["flops"] / 1e6 if row["flops"] is not None else None, ".2f"),
        (f"{row['train_speed_ratio']:.2f} ({row['train_images_per_s']:.0f}/s)"
         if row["train_speed_ratio"] is not None else "-"),
        _latency(row),
        num(row["peak_train_mem_mb"], ".1f"),
    ]


def _latency(row: dict[str, Any]) -> str:
    """"1.05 (2.31 ms, IQR 2.25-2.40)": the ratio of medians, the median and its spread."""
    if row["latency_ratio"] is None:
        return "-"
    spread = (f", IQR {row['latency_ms_q1']:.2f}-{row['latency_ms_q3']:.2f}"
              if row.get("latency_ms_q1") is not None else "")
    return f"{row['latency_ratio']:.2f} ({row['latency_ms']:.2f} ms{spread})"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `build_rows` as a Markdown table."""
    base = rows[0]["baseline"] if rows else "baseline"
    header = ["config", "attention @ placement", "seeds", "top-1 %", "top-1 95% CI",
              "one re-run 95%",
              f"Δ top-1 vs {base} [95% CI]", "p", "≠0", "top-5 %", "params", "MFLOPs",
              f"train img/s (× {base})", f"latency b=1 (× {base})", "peak train MB"]
    align = ["---", "---", *["---:"] * 6, ":---:", *["---:"] * 6]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def _eval_images(rows: list[dict[str, Any]]) -> str:
    counts = sorted({r["eval_images"] for r in rows if r["eval_images"]})
    return "/".join(f"{c:,}" for c in counts) or "unknown: seeds only"


def _recipe_lines(rows: list[dict[str, Any]]) -> list[str]:
    identities = [run_identity(r["settings"]) for r in rows]
    keys = [k for k in identities[0] if k not in _MODEL_FIELDS]
    common = [k for k in keys if all(i.get(k) == identities[0][k] for i in identities)]
    shown = [f"{k} {value_text(identities[0][k])}" for k in RECIPE_SHOWN
             if k in common and identities[0][k] is not None]
    lines = [f"Recipe of every row: {', '.join(shown)}."]
    varying = [k for k in keys if k not in common]
    if varying:
        lines.append("Rows differ in: " + "; ".join(
            f"{k} (" + ", ".join(f"{r['config']} {value_text(i.get(k))}"
                                 for r, i in zip(rows, identities)) + ")" for k in varying)
                     + ".")
    return lines


def format_block(rows: list[dict[str, Any]], costs: dict[str, Any] | None = None,
                 notes: Sequence[str] = (), image: str | None = None) -> str:
    """The table with the lines that say what its numbers are (the README block)."""
    base = rows[0]["baseline"]
    reading = reading_line(rows)
    lines = [format_table(rows), "", *([reading, ""] if reading else []),
             "Top-1 / top-5: validation accuracy (%) of each run's last epoch (not its best "
             "epoch, which would select on the validation data), mean ± sample std (ddof 1) "
             "over seeds; 95% CI: Student t over seeds, of the mean. One re-run 95%: where "
             "a single new run (another seed) should land when scored on as many other "
             "images of the same distribution: the t prediction interval over seeds, "
             "std·sqrt(1 + 1/n), combined with the binomial sampling noise of both "
             f"evaluation sets ({_eval_images(rows)} images each). Δ: difference to "
             f"`{base}` paired by seed (the same seeds), its 95% t interval and the paired "
             "t-test p (scipy.stats.ttest_rel); * marks a Δ whose interval excludes 0 "
             "(p < 0.05). n/a: one seed or pair (no spread), or zero spread.",
             "", *_recipe_lines(rows), "", costs_line(costs, base)]
    lines += [item for line in (no_tta_line(rows), time_line(rows)) if line
              for item in ("", line)]
    lines += [item for note in notes for item in ("", note)]
    if image:
        lines += ["", f"![top-1 per seed and 95% CI against cost]({image})"]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list):
            return ";".join(repr(v) if isinstance(v, float) else str(v) for v in value)
        return repr(value) if isinstance(value, float) else str(value)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        flat = flat_row(row)
        writer.writerow([cell(flat[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def update_markdown(path: str | Path, name: str, block: str) -> bool:
    """Replace the text between `<!-- attnres-report:NAME -->` and the next
    `<!-- /attnres-report -->` in the Markdown file `path` with `block`; False when the
    file already held exactly that (it is then not rewritten)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    begin = BEGIN_MARK.format(name=name)
    start = text.find(begin)
    end = text.find(END_MARK, start + len(begin)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"{path} has no block {begin} ... {END_MARK}; add the two marker "
                         f"lines where the table goes")
    new = text[:start + len(begin)] + "\n" + block.rstrip("\n") + "\n" + text[end:]
    if new == text:
        return False
    atomic_write(path, new)
    return True


def read_merged(results: Path) -> dict[str, list[str]]:
    """`results/merged.json` (written by `ablate`): row -> configurations trained as it."""
    try:
        return dict(json.loads((results / MERGED_FILE).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{results / MERGED_FILE} is not a JSON object: {e}") from None


def load_costs(path: str | Path | None) -> dict[str, Any] | None:
    """A costs JSON (`measure_costs`), or None for None."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"costs file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"costs file {str(path)!r} is not valid JSON: {e}") from None


def _link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def report(results: str | Path, *, out: str | Path | None = None,
           baseline: str | None = None, costs: str | Path | dict[str, Any] | None = None,
           reuse: Sequence[str | Reuse] = (), plot: bool = True,
           update: str | Path | None = None, name: str | None = None
           ) -> list[dict[str, Any]]:
    """Write the report of a results folder from its files alone, byte for byte the same
    each time: `out` (default `results/results.md`) and beside it the same stem's .csv and
    (with `plot`) .png. Returns the rows as plain values (`CSV_COLUMNS`).

    baseline: the row differences are taken to (default: `default_baseline`).
    costs: a costs JSON (default `results/costs.json` if present) or its dict.
    reuse: rows from other folders, `Reuse` or "FOLDER:config=row,...".
    update: a Markdown file whose `<!-- attnres-report:NAME -->` block (NAME: `name`, by
        default the folder's name) is replaced with the table.
    """
    from .plot import plot_rows

    results = Path(results)
    reuse = [parse_reuse(r) if isinstance(r, str) else r for r in reuse]
    table, unfinished = collect_runs(results, reuse)
    if not table:
        raise ValueError(f"results folder {str(results)!r} holds no finished runs "
                         f"(<config>-s<seed>/summary.json with finished true)")
    if costs is None and (results / "costs.json").is_file():
        costs = results / "costs.json"
    costs = costs if isinstance(costs, dict) or costs is None else load_costs(costs)
    rows = build_rows(table, baseline or default_baseline(table), costs,
                      read_merged(results))
    out = Path(out) if out is not None else results / "results.md"
    png = out.with_suffix(".png")
    plotted = plot and plot_rows(rows, png)
    notes = [f"Rows {', '.join(f'`{d}`' for d in item.names.values())}: the runs of "
             f"{', '.join(f'`{s}`' for s in item.names)} in `{item.folder.name}/`."
             for item in reuse]
    if unfinished:
        notes.append(f"Not finished, not counted: {', '.join(unfinished)}.")
    per_seed = "Top-1 per seed: " + "; ".join(
        f"{r['label']} " + ", ".join(f"s{s} {v:.2f}" for s, v in r["top1_per_seed"].items())
        for r in rows) + "."
    extra = [per_seed]
    if (results / "explain_grid.png").is_file():
        extra.append(f"![Grad-CAM and attention maps]"
                     f"({_link(results / 'explain_grid.png', out.parent)})")
    if (results / "explain_error.txt").is_file():
        lines = (results / "explain_error.txt").read_text(encoding="utf-8").strip()
        extra.append(f"(attention maps failed: {lines.splitlines()[-1] if lines else '?'}; "
                     f"see explain_error.txt)")
    body = format_block(rows, costs, [*notes, *extra],
                        _link(png, out.parent) if plotted else None)
    title = name or results.resolve().name
    atomic_write(out, f"# Results `{title}`\n\n{setup_line(rows, costs)}\n\n{body}")
    atomic_write(out.with_suffix(".csv"), _csv(rows))
    if update is not None:
        update = Path(update)
        block = format_block(rows, costs, notes, _link(png, update.parent) if plotted else None)
        update_markdown(update, title, block)
    return [flat_row(r) for r in rows]


__all__ = ["BEGIN_MARK", "CSV_COLUMNS", "END_MARK", "build_rows", "default_baseline",
           "flat_row", "format_block", "format_table", "load_costs", "report",
           "update_markdown"]
