"""Attention statistics: what the gates of every attention module output, batch by batch.

`AttentionMonitor(model)` hooks the gate sub-modules that the attention registry names for
each module (`AttentionSpec.gates`, found with `attention.iter_gates`; their forward
outputs are gate values in [0, 1]) and reduces their outputs on the fly, by gate kind:

- channel gates `(B, C, 1, 1)`: mean, std, min, max over all values;
- spatial gates `(B, 1, H, W)`: mean, std, min, max, and the normalised entropy of each
  map seen as a distribution over its H*W positions, p = g / sum(g):
  H(p) / log(H*W), 0 = all weight on one position, 1 = uniform (a flat map);
- row gates `(B, C, H, 1)` and column gates `(B, C, 1, W)` (coordinate attention): as
  spatial gates, under row_* / column_*, the entropy taken over the H rows (W columns) of
  each of the B*C vectors;
- a joint channel+spatial gate `(B, C, H, W)` (BAM) is reported as both, channel_* and
  spatial_* over all its values, the entropy taken over each of its B*C maps.

A map with a single position (1x1 feature maps) has no spatial distribution: it is both
a single peak and uniform, so it is left out of the entropy (and `spatial_entropy` is
absent when every map seen was 1x1). An all-zero map counts as uniform (entropy 1).

Statistics are named after the attention module holding the gate, as `named_modules()`
spells it (`layer1.0.attn`). Sums and sums of squares are kept in float64 on the gate's
device, so aggregated means and stds are exact over all values seen and nothing waits on
the device until `summary()` is called. Stds are population stds (ddof = 0).

Typical use, once per epoch:

    with AttentionMonitor(model) as monitor:
        for x, y in loader:
            model(x)
        stats = monitor.summary()          # {"layer1.0.attn": {"channel_mean": ...}}
        for warning in find_saturation(stats):
            print(warning)
        monitor.reset()

Under DistributedDataParallel each rank sees its own shard: the numbers are per rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import iter_gates

# registry gate kind -> the statistics its output feeds (prefixes of the summary keys)
STAT_KINDS: dict[str, tuple[str, ...]] = {
    "channel": ("channel",),
    "spatial": ("spatial",),
    "channel+spatial": ("channel", "spatial"),
    "row": ("row",),
    "column": ("column",),
}
# statistics of gates that spread over positions: these get an entropy
POSITIONAL = ("spatial", "row", "column")

# positions of the running sums in one float64 accumulator vector (kept on the gate's
# device; the counts of values and maps are known on the host without a device sync)
_SUM, _SUMSQ, _LOW, _HIGH, _ENT_SUM = range(5)


def _frac_key(kind: str, side: str, threshold: float) -> str:
    return f"{kind}_frac_{side}_{threshold:g}"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers, so
    that names match the plain model's (`layer1.0.attn`, not `module.layer1.0.attn`)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def find_gates(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """`(attention module name, statistics kind, gate module)` for every gate of every
    registered attention module in `model` (`attention.iter_gates`); the kind is one of
    channel, spatial, row, column (a channel+spatial gate appears once as each of the
    first two). A model that is itself an attention module is named after its class."""
    model = unwrap(model)
    found = []
    for owner, _, gate, gate_kind in iter_gates(model):
        owner = owner or type(model).__name__
        found.extend((owner, kind, gate) for kind in STAT_KINDS[gate_kind])
    return found


class _Stats:
    """Running reductions of one gate kind of one attention module."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.total: torch.Tensor | None = None  # float64 (5,), see _SUM.._ENT_SUM
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.n = 0        # gate values seen
        self.n_maps = 0   # spatial maps (of more than one position) seen
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int] | None = None

    def add(self, gate: torch.Tensor, kind: str, low: float, high: float) -> None:
        g = gate.detach()
        if g.device.type == "mps":  # no float64 there
            g = g.cpu()
        g64 = g.double()
        parts = [g64.sum(), g64.square().sum(), (g < low).sum().double(),
                 (g > high).sum().double()]
        n_maps = 0
        if kind in POSITIONAL and g.shape[-1] * g.shape[-2] > 1:
            maps = g.float().flatten(2).flatten(0, 1)  # (B * K, H * W)
            mass = maps.sum(dim=1, keepdim=True)
            p = maps / mass.clamp_min(torch.finfo(torch.float32).tiny)
            entropy = -torch.xlogy(p, p).sum(dim=1) / math.log(maps.shape[1])
            entropy = torch.where(mass[:, 0] > 0, entropy, torch.ones_like(entropy))
            parts.append(entropy.double().sum())
            n_maps = maps.shape[0]
        else:
            parts.append(torch.zeros((), dtype=torch.float64, device=g.device))
        batch = torch.stack(parts)
        lo, hi = g.min().double(), g.max().double()
        self.last = (batch, lo, hi, g.numel(), n_maps)
        if self.total is None:
            self.total, self.min, self.max = batch.clone(), lo, hi
        else:
            self.total += batch
            self.min = torch.minimum(self.min, lo)
            self.max = torch.maximum(self.max, hi)
        self.n += g.numel()
        self.n_maps += n_maps

    @staticmethod
    def describe(total: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int,
                 n_maps: int, kind: str, low: float, high: float) -> dict[str, float]:
        values = total.cpu().tolist()
        mean = values[_SUM] / n
        var = max(values[_SUMSQ] / n - mean * mean, 0.0)
        out = {f"{kind}_mean": mean, f"{kind}_std": math.sqrt(var),
               f"{kind}_min": float(lo), f"{kind}_max": float(hi)}
        if n_maps > 0:
            out[f"{kind}_entropy"] = values[_ENT_SUM] / n_maps
        out[_frac_key(kind, "below", low)] = values[_LOW] / n
        out[_frac_key(kind, "above", high)] = values[_HIGH] / n
        return out


class AttentionMonitor:
    """Context manager recording the gate values of every attention module of `model`.

    Hooks are registered on entry (or `attach()`) and removed on exit (or `detach()`);
    they only reduce the gate outputs (detached, no tensors kept), so they work under
    `torch.no_grad()` and in training alike.

    Args:
        model: any model holding attnres gates (built by `build_model`, edited by
            `insert_attention`, or a bare attention module).
        low, high: thresholds of the saturation fractions `*_frac_below_{low}` and
            `*_frac_above_{high}` (used by `find_saturation`).
    """

    def __init__(self, model: nn.Module, *, low: float = 0.05, high: float = 0.95) -> None:
        if not 0 <= low < high <= 1:
            raise ValueError(f"low={low!r}, high={high!r}: need 0 <= low < high <= 1")
        self.model = model
        self.low, self.high = low, high
        self.gates = find_gates(model)
        self.names = list(dict.fromkeys(name for name, _, _ in self.gates))
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._handles: list[Any] = []
        self.batches = 0  # forward passes seen since the last reset
        self.reset()

    # -- hooks -----------------------------------------------------------------------
    def attach(self) -> AttentionMonitor:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        for i, (name, kind, gate) in enumerate(self.gates):
            hook = self._make_hook(name, kind, count_batch=i == 0)
            self._handles.append(gate.register_forward_hook(hook))
        return self

    def detach(self) -> None:
        """Remove the hooks; the statistics gathered so far are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> AttentionMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _make_hook(self, name: str, kind: str, count_batch: bool):
        stats = self._stats[(name, kind)]

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            stats.add(output, kind, self.low, self.high)
            if count_batch:
                self.batches += 1
        return hook

    # -- results ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything seen so far (e.g. at the start of each epoch)."""
        for name, kind, _ in self.gates:
            self._stats.setdefault((name, kind), _Stats()).clear()
        self.batches = 0

    def summary(self) -> dict[str, dict[str, float]]:
        """Statistics aggregated over every batch since the last reset:
        `{module name: {"channel_mean", "channel_std", "channel_min", "channel_max",
        "spatial_mean", "spatial_std", "spatial_min", "spatial_max", "spatial_entropy",
        "channel_frac_below_0.05", "channel_frac_above_0.95", "spatial_frac_...",
        "row_...", "column_...": float}}`, keys present where the module has that kind of
        gate; modules not run yet are absent."""
        out: dict[str, dict[str, float]] = {}
        for (name, kind), stats in self._stats.items():
            if stats.total is not None:
                out.setdefault(name, {}).update(_Stats.describe(
                    stats.total, stats.min, stats.max, stats.n, stats.n_maps, kind,
                    self.low, self.high))
        return out

    def last_batch(self) -> dict[str, dict[str, float]]:
        """The same statistics for the most recent forward pass of each module only."""
        out: dict[str, dict[str, float]] = {}
        for (name, kind), stats in self._stats.items():
            if stats.last is not None:
                out.setdefault(name, {}).update(_Stats.describe(*stats.last, kind, self.low,
                                                                self.high))
        return out


def find_saturation(summary: dict[str, dict[str, float]], low: float = 0.05,
                    high: float = 0.95, frac: float = 0.95, entropy: float = 0.99,
                    flat_std: float = 0.02) -> list[str]:
    """Human-readable warnings for the modules of `summary` (from `AttentionMonitor`) whose
    attention has stopped selecting anything:

    - saturated: more than `frac` of a gate's values lie below `low` or above `high`
      (the sigmoid's flat ends, where the gate passes no gradient);
    - flat: the mean normalised entropy of a spatial, row or column gate is above
      `entropy` (the map weights all positions, rows or columns alike);
    - constant: the channel gate's std over all its values is below `flat_std` (it scales
      every channel of every image alike, which the next norm layer undoes; e.g. stuck
      at 0.5).

    Call it on a summary of a whole epoch. `low` and `high` must be the thresholds the
    monitor counted with (its `low` / `high`, 0.05 / 0.95 by default).
    """
    warnings = []
    for name, stats in summary.items():
        for kind in ("channel", *POSITIONAL):
            if f"{kind}_mean" not in stats:
                continue
            below_key, above_key = (_frac_key(kind, "below", low),
                                    _frac_key(kind, "above", high))
            if below_key not in stats or above_key not in stats:
                have = sorted(k for k in stats if k.startswith(f"{kind}_frac_"))
                raise ValueError(f"low={low!r}, high={high!r}: the summary of {name!r} counted "
                                 f"other thresholds ({', '.join(have)}); pass those or "
                                 f"monitor with AttentionMonitor(model, low=..., high=...)")
            below, above = stats[below_key], stats[above_key]
            if below + above > frac:
                warnings.append(
                    f"{name}: {kind} attention saturated: {100 * (below + above):.1f}% of gate "
                    f"values are below {low:g} ({100 * below:.1f}%) or above {high:g} "
                    f"({100 * above:.1f}%), so the gate passes almost no gradient")
            elif kind == "channel" and stats["channel_std"] < flat_std:
                warnings.append(
                    f"{name}: channel attention is constant: std {stats['channel_std']:.4f} "
                    f"< {flat_std:g} around {stats['channel_mean']:.3f}, it weights all "
                    f"channels alike")
        for kind, what in zip(POSITIONAL, ("positions", "rows", "columns")):
            ent = stats.get(f"{kind}_entropy")
            if ent is not None and ent > entropy:
                warnings.append(f"{name}: {kind} attention is flat: normalised entropy "
                                f"{ent:.4f} > {entropy:g}, it weights all {what} almost alike")
    return warnings


__all__ = ["AttentionMonitor", "find_gates", "find_saturation"]
