"""Statistics over seeds: mean, sample std, Student-t confidence intervals, paired tests.

Every configuration is trained with several seeds; a seed fixes the initialisation and the
batch order, and the validation split is the same for every seed. So the runs of two
configurations with the same seed are pairs, and the difference to the baseline is
estimated per seed: mean of the paired differences, its Student-t interval over seeds, and
the paired t-test (`scipy.stats.ttest_rel`), which is the same test.

A re-run is one new seed, scored on its own held-out images: its interval
(`rerun_interval`) is wider than the mean's, since it carries one seed's spread and the
sampling noise of two finite evaluation sets (ours and the re-runner's).

Edge cases, never an exception: with one value (or one pair) there is no spread, so no
interval and no test (None, shown as "n/a"); with zero spread the interval is the single
point and the test is undefined (p None), since the t statistic divides by the spread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with the sample std (ddof=1; nan for n < 2) and the Student-t
    confidence interval of the mean (None for n < 2)."""

    n: int
    mean: float
    std: float
    ci_low: float | None
    ci_high: float | None
    confidence: float = CONFIDENCE


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """`x - baseline` paired by seed: the mean difference, its interval, the paired
    t-test's p-value (None where undefined) and the seeds that were paired."""

    estimate: Estimate
    p: float | None
    seeds: tuple[int, ...]

    @property
    def significant(self) -> bool:
        """The difference is distinguishable from zero at the interval's confidence (the
        interval excludes 0, which for a paired t-test is p < 1 - confidence)."""
        return self.p is not None and self.p < 1 - self.estimate.confidence


def _zero_spread(values: np.ndarray) -> bool:
    # differences of percentages such as 66.50 - 65.44 are not exact in binary: a spread
    # of rounding errors is no spread
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= 1e-9 * scale


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std and the two-sided Student-t interval of the mean of `values`:
    mean +- t(1 - (1 - confidence) / 2, n - 1) * std / sqrt(n)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: must be in (0, 1)")
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("estimate of no values: give at least one")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"values {arr.tolist()}: must be finite numbers")
    mean = float(arr.mean())
    if arr.size < 2:
        return Estimate(1, mean, math.nan, None, None, confidence)
    if _zero_spread(arr):
        return Estimate(int(arr.size), mean, 0.0, mean, mean, confidence)
    std = float(arr.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, arr.size - 1)) * std / math.sqrt(
        arr.size)
    return Estimate(int(arr.size), mean, std, mean - half, mean + half, confidence)


def rerun_interval(est: Estimate, *, n_eval: int | None = None,
                   n_new: int | None = None) -> tuple[float, float] | None:
    """Where ONE new run's top-1 (%) should fall with `est.confidence`, or None for n < 2.

    Seeds: the Student-t prediction interval of a new value, mean +- t(n - 1) * std *
    sqrt(1 + 1/n). Evaluation images (when `n_eval` is given): top-1 on a finite set of
    images is a binomial proportion, so the mean (measured on our `n_eval` images) and the
    new run (scored on `n_new`, default `n_eval`, other images of the same distribution)
    each add p(1 - p)/N; that half-width, z * 100 * sqrt(p(1 - p)(1/n_eval + 1/n_new)),
    is combined with the seeds' as the root of the sum of squares.
    """
    if est.n < 2 or est.ci_low is None:
        return None
    tail = 0.5 + est.confidence / 2
    seed_half = float(_scipy_stats.t.ppf(tail, est.n - 1)) * est.std * math.sqrt(1 + 1 / est.n)
    sample_half = 0.0
    if n_eval:
        p = min(max(est.mean / 100, 0.0), 1.0)
        sample_half = float(_scipy_stats.norm.ppf(tail)) * 100 * math.sqrt(
            p * (1 - p) * (1 / n_eval + 1 / (n_new or n_eval)))
    half = math.hypot(seed_half, sample_half)
    return est.mean - half, est.mean + half


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference | None:
    """`values[seed] - baseline[seed]` over the seeds both have; None when they share none.

    The interval is that of the mean difference (`estimate`); p is the two-sided paired
    t-test of `scipy.stats.ttest_rel` (None with one pair or zero spread).
    """
    seeds = tuple(sorted(set(values) & set(baseline)))
    if not seeds:
        return None
    x = np.array([values[s] for s in seeds], dtype=np.float64)
    b = np.array([baseline[s] for s in seeds], dtype=np.float64)
    diff = estimate((x - b).tolist(), confidence)
    p = None
    if diff.n >= 2 and diff.std > 0:
        p = float(_scipy_stats.ttest_rel(x, b).pvalue)
    return PairedDifference(diff, p, seeds)


__all__ = ["CONFIDENCE", "Estimate", "PairedDifference", "estimate", "paired_difference",
           "rerun_interval"]
