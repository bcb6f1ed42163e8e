"""Every latency a report gives is a median of interleaved repeats with its spread:
`median_iqr` against numpy, and the profile and export reports carry the spread."""

from __future__ import annotations

import numpy as np
import pytest

from attnres.utils import median_iqr, time_interleaved_samples


def test_median_iqr_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 20):
        samples = rng.exponential(1.0, n).tolist()
        median, q1, q3 = median_iqr(samples)
        assert median == pytest.approx(np.median(samples))
        assert (q1, q3) == pytest.approx(tuple(np.percentile(samples, [25, 75])))
    assert median_iqr([2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        median_iqr([])


def test_samples_are_taken_in_turns() -> None:
    order: list[str] = []
    samples = time_interleaved_samples({"a": lambda: order.append("a"),
                                        "b": lambda: order.append("b")}, warmup=1, repeats=3)
    assert order == ["a", "b"] * 4  # one warm-up round, then 3 timed rounds, A B A B ...
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}


def test_profile_reports_the_latency_spread() -> None:
    from attnres.analysis.profile import format_profile, profile_model

    result = profile_model("resnet20", "se", image_size=8, repeats=5, threads=1)
    for name in ("baseline", "attnres"):
        q1, q3 = result[name]["latency_ms_iqr"]
        assert q1 <= result[name]["latency_ms"] <= q3
    text = format_profile(result)
    assert "IQR" in text
    assert ", 1 thread\n" in text  # the count as a reader says it, not "1 threads"
