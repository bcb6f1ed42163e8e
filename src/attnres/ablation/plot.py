"""The report's plot: each configuration's per-seed top-1 and its 95% interval against its
measured cost (batch-1 latency relative to the baseline; parameters when no costs)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..utils import atomic_write


def _dodge(xs: list[float]) -> list[float]:
    """`xs` with values closer than 3% of their span moved apart to 3%, in order."""
    span = (max(xs) - min(xs)) or 1.0
    out = list(xs)
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    for prev, cur in zip(order, order[1:]):
        out[cur] = max(out[cur], out[prev] + 0.03 * span)
    return out


# The smallest top-1 range the y axis shows (points): with one seed per row, or rows a
# tenth of a point apart, autoscaling would stretch noise to the full height.
MIN_TOP1_SPAN = 2.0


def draw_rows(rows: list[dict[str, Any]]) -> Any:
    """The plot of `tables.build_rows` rows as a matplotlib Figure, or None (no rows, or no
    cost to put on the x axis).

    Names are in a legend beside the axes, one entry per row, never on the points, so they
    cannot overlap each other or the data; the figure grows with the number of rows.
    """
    if not rows:
        return None
    # A bare Figure renders with Agg whatever pyplot backend the caller has chosen.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    by_latency = all(r["latency_ratio"] is not None for r in rows)
    if not by_latency and any(r["params"] is None for r in rows):
        return None
    base = rows[0]["baseline"]
    fig = Figure(figsize=(8, max(4.5, 1.2 + 0.32 * len(rows))), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    markers = "osD^vP*Xhp"
    xs = _dodge([r["latency_ratio"] if by_latency else r["params"] / 1e3 for r in rows])
    span = (max(xs) - min(xs)) or 1.0
    for i, (row, x) in enumerate(zip(rows, xs)):
        color, marker = colors[i % len(colors)], markers[i % len(markers)]
        values = [row["top1_per_seed"][s] for s in row["seeds"]]
        # the seeds just left of their interval, so that the bar does not hide them
        if len(values) > 1:
            ax.scatter([x - 0.012 * span] * len(values), values, s=18, color=color,
                       marker=marker, alpha=0.6, linewidths=0, zorder=2)
        est = row["top1"]
        if est.ci_low is not None:
            ax.errorbar([x], [est.mean], yerr=[[est.mean - est.ci_low], [est.ci_high - est.mean]],
                        fmt="none", ecolor=color, elinewidth=2, capsize=5, zorder=3)
        ax.scatter([x], [est.mean], s=70, color=color, marker=marker, edgecolors="black",
                   linewidths=0.8, zorder=4, label=f"{row['label']} (n={row['n']})")
    ax.set_xlabel(f"batch-1 inference latency (× {base})" if by_latency
                  else "parameters (thousands)")
    low, high = ax.get_ylim()
    if high - low < MIN_TOP1_SPAN:  # a 0.1-point gap must not fill the axis
        middle = (low + high) / 2
        ax.set_ylim(middle - MIN_TOP1_SPAN / 2, middle + MIN_TOP1_SPAN / 2)
    ax.set_ylabel("val top-1 %, last epoch")
    ax.set_title("per-seed runs (small), mean with 95% t interval (large)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


def plot_rows(rows: list[dict[str, Any]], path: str | Path) -> bool:
    """Draw `tables.build_rows` rows (`draw_rows`) to the PNG `path`; False (nothing
    written) when there is nothing to draw."""
    fig = draw_rows(rows)
    if fig is None:
        return False
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write(path, buffer.getvalue())
    return True


__all__ = ["MIN_TOP1_SPAN", "draw_rows", "plot_rows"]
