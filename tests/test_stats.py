"""Statistics over seeds, checked against scipy and numpy computed here, and edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from attnres.ablation.stats import estimate, paired_difference, rerun_interval

VALUES = [67.46, 65.44, 66.60, 68.02]
BASE = {0: 69.54, 1: 67.68, 2: 67.86, 3: 68.10}


def test_estimate_matches_scipy_t_interval() -> None:
    est = estimate(VALUES)
    arr = np.array(VALUES)
    low, high = stats.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=stats.sem(arr))
    assert est.n == 4
    assert est.mean == pytest.approx(arr.mean())
    assert est.std == pytest.approx(arr.std(ddof=1))
    assert est.ci_low == pytest.approx(low) and est.ci_high == pytest.approx(high)
    # another confidence moves the interval as scipy says
    low90, high90 = stats.t.interval(0.90, 3, loc=arr.mean(), scale=stats.sem(arr))
    est90 = estimate(VALUES, confidence=0.90)
    assert (est90.ci_low, est90.ci_high) == (pytest.approx(low90), pytest.approx(high90))


def test_rerun_interval_is_the_t_prediction_interval_widened_by_sampling() -> None:
    arr = np.array(VALUES)
    est = estimate(VALUES)
    # seeds alone: the textbook prediction interval of one new observation
    low, high = stats.t.interval(0.95, 3, loc=arr.mean(),
                                 scale=arr.std(ddof=1) * math.sqrt(1 + 1 / 4))
    assert rerun_interval(est) == (pytest.approx(low), pytest.approx(high))
    # with 5,000 evaluation images here and 10,000 there: the binomial sd of both sets
    p = arr.mean() / 100
    binom_sd = 100 * math.sqrt(p * (1 - p) / 5000 + p * (1 - p) / 10000)
    seed_half = (high - low) / 2
    sample_half = stats.norm.ppf(0.975) * binom_sd
    half = math.sqrt(seed_half ** 2 + sample_half ** 2)
    got = rerun_interval(est, n_eval=5000, n_new=10000)
    assert got == (pytest.approx(arr.mean() - half), pytest.approx(arr.mean() + half))
    # it contains the mean's own interval, and more images there narrow it
    assert got[0] < est.ci_low and got[1] > est.ci_high
    wide = rerun_interval(est, n_eval=5000)
    assert wide[1] - wide[0] > got[1] - got[0]
    # a simulation: new runs (seed spread 1.0, scored on 5,000 other images) land inside
    # about 95 % of the time
    rng = np.random.default_rng(0)
    inside = 0
    for _ in range(2000):
        truth = 88.0 + rng.normal(0, 1.0, size=6)  # population top-1 of 5 seeds + 1 new
        ours = rng.binomial(5000, truth[:5] / 100) / 50  # all scored on 5,000 images
        theirs = rng.binomial(5000, truth[5] / 100) / 50
        lo, hi = rerun_interval(estimate(ours.tolist()), n_eval=5000)
        inside += lo <= theirs <= hi
    assert 0.92 < inside / 2000 < 0.99
    assert rerun_interval(estimate([88.0])) is None


def test_paired_difference_matches_ttest_rel() -> None:
    values = dict(enumerate(VALUES))
    diff = paired_difference(values, BASE)
    x, b = np.array(VALUES), np.array([BASE[s] for s in range(4)])
    d = x - b
    low, high = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert diff.seeds == (0, 1, 2, 3)
    assert diff.estimate.mean == pytest.approx(d.mean())
    assert diff.estimate.std == pytest.approx(d.std(ddof=1))
    assert (diff.estimate.ci_low, diff.estimate.ci_high) == (pytest.approx(low),
                                                             pytest.approx(high))
    assert diff.p == pytest.approx(stats.ttest_rel(x, b).pvalue)
    # the interval excludes 0 exactly when p < 0.05
    assert diff.significant == (high < 0 or low > 0)


def test_pairs_only_the_common_seeds() -> None:
    values = {0: 70.0, 1: 71.5, 2: 69.0, 7: 10.0}  # seed 7 has no baseline run
    base = {0: 69.0, 1: 70.0, 2: 69.5, 5: 99.0}
    diff = paired_difference(values, base)
    assert diff.seeds == (0, 1, 2)
    x, b = [70.0, 71.5, 69.0], [69.0, 70.0, 69.5]
    assert diff.p == pytest.approx(stats.ttest_rel(x, b).pvalue)
    assert diff.estimate.mean == pytest.approx(np.mean(np.subtract(x, b)))
    assert paired_difference({1: 1.0}, {2: 1.0}) is None


def test_a_clear_difference_is_significant_and_noise_is_not() -> None:
    base = {s: 60.0 + 0.1 * s for s in range(5)}
    better = {s: v + 2.0 + (0.05 if s % 2 else -0.05) for s, v in base.items()}
    assert paired_difference(better, base).significant
    noisy = {0: 61.0, 1: 59.0, 2: 60.5, 3: 60.0, 4: 59.9}
    assert not paired_difference(noisy, base).significant


def test_one_value_has_no_interval_and_never_raises() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor any scipy warning
        est = estimate([66.5])
        diff = paired_difference({0: 66.5}, {0: 65.0})
    assert est.n == 1 and est.mean == 66.5 and math.isnan(est.std)
    assert est.ci_low is None and est.ci_high is None
    assert diff.estimate.n == 1 and diff.estimate.mean == pytest.approx(1.5)
    assert diff.estimate.ci_low is None and diff.p is None and not diff.significant


def test_zero_spread() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = estimate([66.5, 66.5, 66.5])
        same = paired_difference({0: 66.5, 1: 67.0}, {0: 66.5, 1: 67.0})
        # differences equal up to binary rounding (66.50 - 65.44 vs 67.06 - 66.00)
        shifted = paired_difference({0: 66.50, 1: 67.06}, {0: 65.44, 1: 66.00})
    assert est.std == 0.0 and est.ci_low == est.ci_high == 66.5
    assert same.estimate.mean == 0.0 and same.estimate.ci_low == 0.0 and same.p is None
    assert shifted.estimate.std == 0.0 and shifted.p is None and not shifted.significant
    assert shifted.estimate.ci_low == pytest.approx(1.06)


@pytest.mark.parametrize(("values", "message"), [
    ([], "no values"), ([1.0, float("nan")], "finite"),
])
def test_bad_values(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(values)
    with pytest.raises(ValueError, match="confidence"):
        estimate([1.0, 2.0], confidence=95)
