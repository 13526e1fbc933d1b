"""agents.statistics: the intervals every evaluation reports."""

import math

import numpy as np
import pytest

from agents.statistics import (
    bootstrap_interval,
    mean_and_interval,
    paired_differences,
    t_interval,
)


def test_bootstrap_interval_stays_in_the_quantitys_range():
    # two AUC-like values far apart: the t-interval runs past 1 (the issue's [0.448, 1.11])
    values = np.array([0.40, 0.99])
    t_mean, t_low, t_high = t_interval(values)
    assert t_high > 1.0 and t_low < 0.0
    mean, low, high = mean_and_interval(values, (-math.inf, 1.0))
    assert mean == pytest.approx(0.695)
    assert 0.40 <= low <= mean <= high <= 0.99  # never beyond the observed values
    # values outside the stated range (rounding, a bad bound) are clipped to it
    _, _, high = mean_and_interval(np.array([0.9, 1.2]), (-math.inf, 1.0))
    assert high == 1.0


def test_bootstrap_interval_is_seeded_and_vectorised():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(6, 5))
    first = bootstrap_interval(samples)
    second = bootstrap_interval(samples)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # the same values give the same interval
    for column in range(samples.shape[1]):  # columns at once: as each column alone
        alone = mean_and_interval(samples[:, column])
        assert alone == pytest.approx(tuple(part[column] for part in first))
    mean, low, high = first
    assert (low < mean).all() and (mean < high).all()


def test_one_seed_gives_no_interval_and_a_nan_counts_as_failure():
    mean, low, high = mean_and_interval(np.array([0.7]))
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(x) for x in mean_and_interval(np.array([0.7, math.nan])))
    assert all(math.isnan(x) for x in mean_and_interval(np.array([])))
    mean, low, high = bootstrap_interval(np.array([[0.1, 0.2]]))
    np.testing.assert_array_equal(mean, [0.1, 0.2])
    assert np.isnan(low).all() and np.isnan(high).all()


def test_t_interval_and_paired_differences():
    mean, low, high = t_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2.0  # t(0.975, 3 dof)
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert t_interval(np.array([5.0])) == (5.0, 5.0, 5.0)
    result = paired_differences(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 2.5, 2.0, 3.0]))
    assert result["mean"] == pytest.approx(0.5) and result["better"] == 3
    assert result["low"] < 0.5 < result["high"]
