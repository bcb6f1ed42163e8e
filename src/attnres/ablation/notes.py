"""The sentences of a report that say what its numbers are: the setup line at the top
(data, image size, epochs, seeds, machine, threads), the line on how costs were measured,
and the lines on the top-1 without TTA and on how long the runs trained."""

from __future__ import annotations

import json
from typing import Any

from .results import data_key


def value_text(value: Any) -> str:
    """A recipe value as the report writes it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def setup_line(rows: list[dict[str, Any]], costs: dict[str, Any] | None) -> str:
    """The first line of a report: data (its name, or its file name: the same bytes on any
    machine), image size, epochs, limits, seeds, the machine and the training threads."""
    first = rows[0]["settings"]
    same = {k: first.get(k) for k in ("data", "image_size", "epochs", "subset", "max_steps",
                                      "max_time")
            if all(r["settings"].get(k) == first.get(k) for r in rows)}
    size = (costs or {}).get("image_size") or same.get("image_size")
    parts = [f"data `{data_key(same['data'])}`" if "data" in same
             else "data: differs between rows",
             f"{size} px images" if size else "images at the data set's own size"]
    if "epochs" in same:
        parts.append(f"{value_text(same['epochs'])} epochs per run")
    parts += [f"{k.replace('_', '-')} {value_text(same[k])}"
              for k in ("subset", "max_steps", "max_time") if same.get(k) is not None]
    seeds = sorted({s for r in rows for s in r["seeds"]})
    parts.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    threads = sorted({t for r in rows for t in r.get("train_threads", [])})
    where = "machine not recorded (no costs JSON)"
    if costs:
        m = costs.get("machine", {})
        where = (f"measured on {m.get('cpu', '?')} ({m.get('cpu_cores', '?')} cores"
                 + (f", GPU {m['gpu']}" if m.get("gpu") else "") + ")")
    plural = "s" if threads != [1] else ""
    trained = (f"; trained with {', '.join(map(str, threads))} torch thread{plural}"
               if threads else "")
    return f"Setup: {', '.join(parts)}; {where}{trained}."


def costs_line(costs: dict[str, Any] | None, base: str) -> str:
    if not costs:
        return "Costs: not measured (no costs JSON); params from the runs' summaries."
    m = costs.get("machine", {})
    where = m.get("cpu", "?") + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    sizes = ", ".join(map(str, costs.get("train_batch_size", [])))
    method = costs.get("method", {})
    load = m.get("load_average_1min")
    busy = (f"the machine's 1-minute load average {load:.1f} as they began"
            if load is not None else "measured after training")
    return (f"Costs, measured in one process on {where} ({m.get('cpu_cores', '?')} cores, "
            f"torch threads {costs.get('threads', '?')}, device {costs.get('device', '?')}, "
            f"torch {m.get('torch', '?')}), inputs {costs.get('image_size')} px, ratios to "
            f"`{base}`: train img/s of an SGD step at batch {sizes} and batch-1 inference "
            f"latency, medians of interleaved runs (IQR: their interquartile range), "
            f"{busy}; peak train MB: {method.get('memory', '?')}. FLOPs: "
            f"{method.get('flops', '?')}.")


def no_tta_line(rows: list[dict[str, Any]]) -> str | None:
    """The same runs scored without test-time augmentation (`last_val_top1_no_tta`), for
    rows whose runs validated with it; None when no row did."""
    shown = [r for r in rows if r.get("top1_no_tta") is not None]
    if not shown:
        return None

    def interval(r: dict[str, Any]) -> str:
        low_high = r["rerun_no_tta"]
        return f", one re-run [{low_high[0]:.2f}, {low_high[1]:.2f}]" if low_high else ""

    cells = [f"{r['label']} {r['top1_no_tta'].mean:.2f}"
             + ("" if r["top1_no_tta"].n < 2 else f" ± {r['top1_no_tta'].std:.2f}")
             + interval(r) for r in shown]
    return ("Top-1 of the same runs without test-time augmentation (each image alone; "
            "`last_val_top1_no_tta`): " + "; ".join(cells) + ".")



def time_line(rows: list[dict[str, Any]]) -> str | None:
    """How long the rows' runs trained (the wall clock of their epochs, `train_time_s`), on
    which CPU and with how many threads; None when no run recorded it."""
    shown = [r for r in rows if r.get("train_time_s")]
    if not shown:
        return None
    cpus = sorted({c for r in shown for c in r.get("train_cpus", [])})
    threads = sorted({t for r in shown for t in r.get("train_threads", [])})
    per_run = (f", {'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''} per run"
               if threads else "")
    cells = []
    for r in shown:
        minutes = [t / 60 for t in r["train_time_s"].values()]
        spread = f" ({min(minutes):,.0f}-{max(minutes):,.0f})" if len(minutes) > 1 else ""
        cells.append(f"{r['label']} {sum(minutes) / len(minutes):,.0f}{spread}")
    times = [t for r in shown for t in r["train_time_s"].values()]
    return (f"Training time per run, minutes (mean, min-max; wall clock of its epochs, "
            f"`train_time_s`, on {', '.join(cpus)}{per_run}): " + "; ".join(cells)
            + f". In all: {sum(times) / 3600:,.1f} hours over {len(times)} "
            f"run{'s' if len(times) > 1 else ''}.")


def reading_line(rows: list[dict[str, Any]]) -> str | None:
    """The table in words: each row's paired difference to the baseline, sorted into
    distinguishable from zero at 95 % (better, worse) and not, with what the row costs;
    rows with fewer than two pairs are named as too few to tell. None for a table of the
    baseline alone."""
    base = rows[0]["baseline"]
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": [], "few": []}
    for r in rows:
        if r["config"] == base:
            continue
        d = r["diff"]
        if d is None or d.estimate.ci_low is None:
            groups["few"].append(r["label"])
            continue
        e = d.estimate
        costs = [f"{r[key]:.2f}x {what}" for key, what in
                 (("train_speed_ratio", "training speed"), ("latency_ratio", "batch-1 latency"))
                 if r.get(key) is not None]
        text = (f"{r['label']} {e.mean:+.2f} [{e.ci_low:+.2f}, {e.ci_high:+.2f}]"
                + (f" at {', '.join(costs)}" if costs else ""))
        groups["same" if not d.significant else "better" if e.mean > 0 else "worse"].append(
            text)
    if not any(groups.values()):
        return None
    said = {"better": f"better than `{base}`", "worse": f"worse than `{base}`",
            "same": "no significant difference (the interval includes 0)",
            "few": "too few seeds to tell yet"}
    parts = [f"{said[k]}: {'; '.join(v)}" for k, v in groups.items() if v]
    if not groups["better"] and not groups["worse"] and groups["same"]:
        parts.insert(0, f"no row is distinguishable from `{base}` at 95 %")
    return ("Reading (top-1 points vs `" + base + "`, paired by seed, 95 % intervals): "
            + ". ".join(p[0].upper() + p[1:] for p in parts) + ".")


__all__ = ["costs_line", "no_tta_line", "reading_line", "setup_line", "time_line",
           "value_text"]
