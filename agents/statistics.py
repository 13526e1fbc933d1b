"""Means and 95 % intervals over seeds: the one place where evaluations compute their intervals.

Two kinds of interval, each where it fits:

- :func:`mean_and_interval` (and :func:`bootstrap_interval` for many columns at once, e.g. a
  curve): a seeded percentile bootstrap of the mean over seeds, clipped to the range the
  quantity can take. Per-agent statistics (AUC, seconds to a target, gain, R^2) are bounded and
  often skewed; a t-interval over a few seeds runs past their bounds (an AUC above 1, negative
  hours). A bootstrap interval of the mean never leaves the range of the observed values, so it
  cannot. Its limit: with few seeds it is narrow (with 2 seeds it is the range of the two
  values), so it says how far the seeds that ran disagree, not how far unseen seeds could.
- :func:`t_interval` and :func:`paired_differences`: a Student t-interval, for paired
  differences between two policies on the same seeds. Those are unbounded and close to
  symmetric, and the t-interval widens honestly when there are few seeds.

Every interval is deterministic: the bootstrap draws its resamples from a fixed seed, so the same
values always give the same interval.
"""

from __future__ import annotations

import math

import numpy as np

#: Coverage of every interval reported.
CONFIDENCE = 0.95
#: Resamples per bootstrap interval; the percentiles move by well under 1 % of the spread.
BOOTSTRAP_RESAMPLES = 10_000
#: The bootstrap's own seed: fixed, so that the same values give the same interval.
BOOTSTRAP_SEED = 0

Interval = tuple[float, float, float]  # (mean, low, high)


def bootstrap_interval(
    samples: np.ndarray,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and its percentile-bootstrap interval, for every column at once.

    Parameters
    ----------
    samples
        Shape ``(n_seeds, ...)``: one row per seed. A column holding NaN gets a NaN mean and
        interval.
    bounds
        The range the quantity can take (e.g. ``(-inf, 1)`` for R^2); the interval is clipped to
        it.
    confidence, resamples, seed
        Coverage, number of resamples and the seed they are drawn from. Every column is
        resampled with the same draws of seeds (the seeds are what varies).

    Returns
    -------
    mean, low, high
        Arrays of shape ``samples.shape[1:]``. With one seed there is no interval: ``low`` and
        ``high`` are NaN.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError("bootstrap_interval needs at least one sample along axis 0")
    n, shape = samples.shape[0], samples.shape[1:]
    columns = samples.reshape(n, -1)
    mean = columns.mean(axis=0)
    if n == 1:
        return mean.reshape(shape), np.full(shape, np.nan), np.full(shape, np.nan)
    rng = np.random.default_rng(seed)
    # How often each seed is drawn in each resample: the resampled means are then one matrix
    # product, whatever the number of columns.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) / n
    resampled_means = weights @ columns
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled_means, [tail, 100.0 - tail], axis=0)
    low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return mean.reshape(shape), low.reshape(shape), high.reshape(shape)


def mean_and_interval(
    values: np.ndarray, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> Interval:
    """Mean of per-seed ``values`` and its 95 % bootstrap interval (see
    :func:`bootstrap_interval`), clipped to ``bounds``.

    A NaN value counts as a failure (e.g. a target never reached): if any value is NaN, all three
    numbers are NaN. One value gives its mean and no interval (NaN low and high).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or np.isnan(values).any():
        return math.nan, math.nan, math.nan
    mean, low, high = bootstrap_interval(values, bounds)
    return float(mean), float(low), float(high)


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student t-interval of ``values`` (for unbounded, near-symmetric quantities such
    as paired differences). One value gives a zero-width interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    from scipy import stats

    quantile = stats.t.ppf(0.5 + confidence / 2.0, values.size - 1)
    half = float(quantile * values.std(ddof=1) / math.sqrt(values.size))
    return mean, mean - half, mean + half


def paired_differences(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Seed-by-seed ``values - reference``: mean, 95 % t-interval (``low``, ``high``) and the
    number of seeds on which ``values`` is above the reference (``better``)."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    mean, low, high = t_interval(diff)
    return {"mean": mean, "low": low, "high": high, "better": int((diff > 0).sum())}
