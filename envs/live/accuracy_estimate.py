"""Accuracy of a reconstruction estimated without the ground truth, for a live instrument.

R^2 as the project defines it is ``1 - SSE / SS`` over the full tensor, with ``SS`` around each
feature's spatial mean. At the instrument only the measured blocks are known, and a measured
block is reproduced exactly, so ``SSE`` is the error over the blocks the reconstruction has not
seen. Four estimates of it:

``"variance"``
    The reconstruction's own posterior: ``SSE ~ sum over unseen blocks of F_b * uncertainty``
    and ``SS ~ sum (estimate - mean)^2 + SSE``. Free, but only as honest as the model's
    variances (a GP with fitted hyperparameters tends to be roughly calibrated, not exactly).
``"check"``
    Held-back check blocks: a seeded random sample of (pixel, block) measured at the start and
    never given to the reconstruction. ``R^2 ~ 1 - f_unseen * mean_check(err) / mean_check(ss)``
    with ``f_unseen`` the fraction of blocks the reconstruction has not seen. Model-free, but it
    reads random blocks while an adaptive policy leaves the easy ones unmeasured, so it leans
    pessimistic as the run goes on; and a few dozen blocks give a noisy estimate.
``"calibrated"``
    The posterior variance rescaled by the check blocks: ``s = sum_check err / sum_check F_b
    var``, then ``SSE ~ s * sum over unseen blocks of F_b * var``. The variances say *where* the
    error is, the checks say *how large* it is.

Measured limits: on a 10 x 10 x 16 x 8 twin with 12 check blocks (``tests/test_experiment.py``),
``"calibrated"`` stays within 0.15 of the true R^2 (the test allows 0.2). On a 24 x 24 x 16 x 128
twin with ``gp-uncertainty`` and a 0.9 target, every estimate stopped the run optimistically
(``python experiment.py run --instrument replay:twin:0 --twin-grid 24 --agent
gp-uncertainty --budget-hours 1 --target 0.9 --reference twin:0 --seed 0 --algorithm-clock model
--estimate KIND``): ``"calibrated"`` 0.901 against a true 0.747, ``"variance"`` 0.903 against
0.768, ``"check"`` 0.900 against 0.797: these three lean 0.1-0.15 optimistic at a stop on
full-size data. ``"sampled"`` below is the one to stop on; its measured accuracy at the stop is
in ``docs/live-experiment.md`` (``python -m studies.live_stop``).

``"sampled"`` (default): audit rounds, the stop rule of the live loop
    The three estimates above share one weakness: the check blocks are drawn once, at the start,
    and an adaptive policy then leaves a very different set of blocks unmeasured (on held-out
    24 x 24 twins the check blocks' error per unit of variance was 2-3 times smaller than that
    of the blocks the policy left, so every estimate above stopped runs 0.05-0.2 optimistic).
    An audit round instead draws ``n_draws`` blocks from the blocks unmeasured *now*, measures
    them, and estimates their summed error by importance sampling: with draw probabilities
    ``q``, ``SSE_pool ~ mean over draws of err / q``, unbiased whatever ``q`` is.
    ``q`` follows :func:`error_weights` (the posterior variance times the pixel's measured
    deviation energy to the power :data:`ENERGY_POWER`, since the variance alone barely ranks
    the errors: the correlation of log variance with log error was 0-0.36, that of the log energy
    with log(error / variance) 0.36-0.69), mixed with a uniform share :data:`UNIFORM_SHARE` so that
    no block has a tiny ``q`` and a huge weight. The check blocks' own errors are known exactly and
    are added as they are.
    The round also gives a lower bound (``z`` standard errors of the mean), and the live loop
    stops only when that bound reaches the target; a failed round's blocks go to the
    reconstruction, and its ratio of audited to calibrated error corrects the calibrated
    estimate until the next round (:func:`projected_r2`). The rounds, the loop's stop rule and
    the measured results are described in ``docs/live-experiment.md``.

All functions take arrays in block layout ``(P, n_blocks, F_b)`` (numpy or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ESTIMATES = ("sampled", "calibrated", "check", "variance")

#: Power of the pixel's measured deviation energy in :func:`error_weights`. On 15 held-out
#: twins (24 x 24 and 30 x 30, ``gp-uncertainty-per-second``, near R^2 0.8) the least-squares
#: slope of log(error / variance) on log(energy) was 0.35-0.76 (median 0.44).
ENERGY_POWER = 0.5
#: Share of an audit round's draw probability spread uniformly over the pool (defensive
#: importance sampling: a block's weight err / q is then at most ``pool / UNIFORM_SHARE``).
UNIFORM_SHARE = 0.3
#: Standard errors below the mean that the lower bound of an audit round takes (one-sided).
AUDIT_Z = 1.0


def _numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def choose_check_blocks(
    n_pixels: int, n_blocks: int, count: int, exclude_pixels: np.ndarray, seed: int
) -> np.ndarray:
    """``count`` distinct (pixel, block) pairs drawn uniformly with ``seed``, avoiding
    ``exclude_pixels``; ``(count, 2)`` int64 sorted by pixel (raster order keeps travel short).

    Raises
    ------
    ValueError
        When fewer than ``count`` blocks are available.
    """
    if count < 0:
        raise ValueError(f"count of check blocks must be >= 0, got {count}")
    allowed = np.ones((n_pixels, n_blocks), dtype=bool)
    allowed[np.asarray(exclude_pixels, dtype=np.int64)] = False
    candidates = np.flatnonzero(allowed)
    if count > candidates.size:
        raise ValueError(
            f"{count} check blocks asked for but only {candidates.size} blocks lie outside the "
            f"initial design"
        )
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))
    return np.stack(np.divmod(chosen, n_blocks), axis=1).astype(np.int64)


def variance_r2(estimate_blocks: Any, uncertainty: Any, seen: Any) -> float:
    """R^2 implied by the posterior variance alone.

    Parameters
    ----------
    estimate_blocks
        ``(P, n_blocks, F_b)`` current estimate.
    uncertainty
        ``(P, n_blocks)`` predictive variance per block (mean over its features).
    seen
        ``(P, n_blocks)`` bool, blocks the reconstruction holds.
    """
    estimate, variance, seen = _numpy(estimate_blocks), _numpy(uncertainty), _numpy(seen) > 0
    expected_error = float((variance * ~seen).sum()) * estimate.shape[2]
    return _r2_from(estimate, expected_error)


def _r2_from(estimate: np.ndarray, expected_error: float, spread: float | None = None) -> float:
    """``1 - SSE / SS`` with ``SS ~ spread of the estimate + SSE`` (the error is taken to be
    orthogonal to the estimate's deviations; with the true SSE this was within 0.01 of the true
    R^2 near 0.9 on held-out twins)."""
    if spread is None:
        spread = _spread(estimate)
    total = spread + expected_error
    return 1.0 - expected_error / total if total > 0 else float("nan")


def _check_terms(
    estimate: np.ndarray, check_pairs: np.ndarray, check_values: np.ndarray
) -> tuple[float, float]:
    """Squared error and squared spread (around the feature means) summed over check blocks."""
    pixels, blocks = check_pairs[:, 0], check_pairs[:, 1]
    values = check_values.reshape(len(check_pairs), -1)
    finite = np.isfinite(values)
    mean = estimate.mean(0)[blocks]
    error = np.where(finite, values - estimate[pixels, blocks], 0.0)
    spread = np.where(finite, values - mean, 0.0)
    return float((error**2).sum()), float((spread**2).sum())


def check_r2(
    estimate_blocks: Any, check_pairs: np.ndarray, check_values: Any, seen: Any
) -> float:
    """R^2 estimated from held-back check blocks (see the module docstring).

    Parameters
    ----------
    estimate_blocks
        ``(P, n_blocks, F_b)`` current estimate (never trained on the check blocks).
    check_pairs
        ``(K, 2)`` (pixel, block) of the check blocks.
    check_values
        ``(K, F_b)`` their measured values (NaN entries ignored).
    seen
        ``(P, n_blocks)`` bool, blocks the reconstruction holds.
    """
    estimate, seen = _numpy(estimate_blocks), _numpy(seen) > 0
    if len(check_pairs) == 0:
        return float("nan")
    error, spread = _check_terms(estimate, np.asarray(check_pairs), _numpy(check_values))
    if spread <= 0:
        return float("nan")
    unseen_fraction = 1.0 - seen.mean()
    return 1.0 - unseen_fraction * error / spread


def calibrated_error(
    estimate_blocks: Any, uncertainty: Any, check_pairs: np.ndarray, check_values: Any, seen: Any
) -> float:
    """Summed squared error over the unseen blocks that :func:`calibrated_r2` expects: the
    posterior variance, rescaled by the check blocks' observed error (unscaled without checks)."""
    estimate, variance, seen = _numpy(estimate_blocks), _numpy(uncertainty), _numpy(seen) > 0
    scale = 1.0
    if len(check_pairs):
        check_pairs = np.asarray(check_pairs)
        values = _numpy(check_values).reshape(len(check_pairs), -1)
        error, _ = _check_terms(estimate, check_pairs, values)
        features = np.isfinite(values).sum(1)
        predicted = float((variance[check_pairs[:, 0], check_pairs[:, 1]] * features).sum())
        scale = error / predicted if predicted > 0 else 1.0
    return scale * float((variance * ~seen).sum()) * estimate.shape[2]


def calibrated_r2(
    estimate_blocks: Any, uncertainty: Any, check_pairs: np.ndarray, check_values: Any, seen: Any
) -> float:
    """R^2 from the posterior variance rescaled by the check blocks' observed error."""
    return _r2_from(
        _numpy(estimate_blocks),
        calibrated_error(estimate_blocks, uncertainty, check_pairs, check_values, seen),
    )


def estimate_r2(
    kind: str,
    estimate_blocks: Any,
    uncertainty: Any,
    seen: Any,
    check_pairs: np.ndarray,
    check_values: Any,
) -> float:
    """The estimate named ``kind`` (one of :data:`ESTIMATES`)."""
    if kind == "variance":
        return variance_r2(estimate_blocks, uncertainty, seen)
    if kind == "check":
        return check_r2(estimate_blocks, check_pairs, check_values, seen)
    # "sampled" is decided by audit rounds (:func:`audit_r2`); before the first, the loop
    # watches the calibrated estimate to know when one is worth its measurements.
    if kind in ("calibrated", "sampled"):
        return calibrated_r2(estimate_blocks, uncertainty, check_pairs, check_values, seen)
    raise ValueError(f"unknown accuracy estimate {kind!r}; choose one of {ESTIMATES}")


# ============================================================================ audit rounds
def _finite_blocks(name: str, array: Any, ndim: int) -> np.ndarray:
    """``array`` as float64, or ``ValueError`` (one line) when it has the wrong rank, is empty
    or holds NaN/inf."""
    values = _numpy(array)
    if values.ndim != ndim or values.size == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-d array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(values)).sum())} NaN/inf entries")
    return values


def error_weights(
    estimate_blocks: Any, uncertainty: Any, measured: Any, power: float = ENERGY_POWER
) -> np.ndarray:
    """``(P, n_blocks)`` expected squared error of each block up to one common scale:
    ``F_b * uncertainty * (E_p / median E)^power``, zero on measured blocks.

    ``E_p`` is pixel ``p``'s mean deviation energy over its measured blocks (squared distance
    of the measured values from each feature's spatial mean, summed over the block's features);
    a pixel with nothing measured takes the median over the measured ones. Only measured data
    and the model's own variance enter.

    Raises
    ------
    ValueError
        For an empty estimate, NaN/inf in the estimate or the variance, or mismatched shapes.
    """
    estimate = _finite_blocks("estimate_blocks", estimate_blocks, 3)
    variance = _finite_blocks("uncertainty", uncertainty, 2)
    measured = _numpy(measured) > 0
    if variance.shape != estimate.shape[:2] or measured.shape != estimate.shape[:2]:
        raise ValueError(
            f"uncertainty {variance.shape} and measured {measured.shape} must both be "
            f"{estimate.shape[:2]} (pixels, blocks) of the estimate"
        )
    deviation = ((estimate - estimate.mean(0, keepdims=True)) ** 2).sum(2)
    counts = measured.sum(1)
    energy = np.where(measured, deviation, 0.0).sum(1) / np.maximum(counts, 1)
    known = counts > 0
    typical = float(np.median(energy[known])) if known.any() else 1.0
    if typical <= 0:  # constant data: the energy says nothing about where the error is
        energy, typical = np.ones_like(energy), 1.0
    energy = np.where(known, energy, typical)
    factor = (np.maximum(energy, 1e-12 * typical) / typical) ** power
    return np.where(measured, 0.0, variance * estimate.shape[2] * factor[:, None])


@dataclass(frozen=True)
class AuditPlan:
    """The blocks of one audit round and what the estimate needs of the draw.

    ``pairs`` ``(U, 2)`` (pixel, block), distinct, in raster order (short tip travel);
    ``draws`` how often each was drawn (with replacement, ``draws.sum() == n_draws``);
    ``probability`` its draw probability.
    """

    pairs: np.ndarray
    draws: np.ndarray
    probability: np.ndarray
    n_draws: int


def plan_audit(
    weights: np.ndarray,
    pool: np.ndarray,
    n_draws: int,
    seed: int | list[int],
    uniform_share: float = UNIFORM_SHARE,
) -> AuditPlan:
    """Draw ``n_draws`` blocks with replacement from ``pool`` (``(P, n_blocks)`` bool), with
    probability ``(1 - uniform_share) * w / sum(w) + uniform_share / |pool|`` (``w`` the
    ``weights`` on the pool), seeded by ``seed``.

    Raises
    ------
    ValueError
        For ``n_draws < 2`` (no standard error), an empty pool, or NaN/negative weights.
    """
    if n_draws < 2:
        raise ValueError(f"an audit round needs at least 2 draws, got {n_draws}")
    pool = np.asarray(pool, dtype=bool)
    weights = np.asarray(weights, dtype=np.float64)
    candidates = np.flatnonzero(pool)
    if candidates.size == 0:
        raise ValueError("no unmeasured block is left to audit")
    w = weights.reshape(-1)[candidates]
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("audit weights must be finite and >= 0")
    total = float(w.sum())
    q = np.full(w.size, 1.0 / w.size)
    if total > 0:
        q = (1.0 - uniform_share) * w / total + uniform_share * q
    drawn = np.random.default_rng(seed).choice(w.size, size=n_draws, replace=True, p=q)
    unique, draws = np.unique(drawn, return_counts=True)  # sorted flat index: raster order
    flat = candidates[unique]
    n_blocks = pool.shape[1]
    pairs = np.stack(np.divmod(flat, n_blocks), axis=1).astype(np.int64)
    return AuditPlan(pairs, draws.astype(np.int64), q[unique], int(n_draws))


@dataclass(frozen=True)
class AuditResult:
    """``r2`` the estimate, ``lower`` its lower bound, ``error`` the estimated summed squared
    error over every block the reconstruction has not seen (pool and check blocks), ``n_used``
    the draws with usable values."""

    r2: float
    lower: float
    error: float
    n_used: int


def _check_error(estimate: np.ndarray, check_pairs: Any, check_values: Any) -> float:
    if check_pairs is None or len(check_pairs) == 0:
        return 0.0
    return _check_terms(estimate, np.asarray(check_pairs), _numpy(check_values))[0]


def _spread(estimate: np.ndarray) -> float:
    return float(((estimate - estimate.mean(0, keepdims=True)) ** 2).sum())


def audit_r2(
    estimate_blocks: Any,
    plan: AuditPlan,
    values: Any,
    check_pairs: Any = None,
    check_values: Any = None,
    z: float = AUDIT_Z,
) -> AuditResult:
    """R^2 of the reconstruction from an audit round (see the module docstring).

    Parameters
    ----------
    estimate_blocks
        ``(P, n_blocks, F_b)`` current estimate, which has not seen the audited blocks.
    plan
        The round (:func:`plan_audit`).
    values
        ``(U, F_b)`` measured values of ``plan.pairs``; a block with NaN entries (a rejected
        reading) is scored on its finite entries, one with none is dropped from the mean.
    check_pairs, check_values
        Held-back check blocks (not in the pool); their errors are added exactly.
    z
        The lower bound lies ``z`` standard errors of the mean above the estimated error.

    Raises
    ------
    ValueError
        For values of the wrong shape, an empty plan or no usable audited block.
    """
    estimate = _finite_blocks("estimate_blocks", estimate_blocks, 3)
    values = _numpy(values)
    if len(plan.pairs) == 0 or values.shape != (len(plan.pairs), estimate.shape[2]):
        raise ValueError(
            f"audit values must have shape ({len(plan.pairs)}, {estimate.shape[2]}), got "
            f"{values.shape}"
        )
    finite = np.isfinite(values)
    error = np.where(
        finite, values - estimate[plan.pairs[:, 0], plan.pairs[:, 1]], 0.0
    )
    error = (error**2).sum(1)
    usable = finite.any(1)
    if not usable.any():
        raise ValueError("no audited block returned a usable value")
    # Each draw contributes err / q; a block drawn twice counts twice.
    terms = np.repeat(error[usable] / plan.probability[usable], plan.draws[usable])
    mean = float(terms.mean())
    sem = float(terms.std(ddof=1) / np.sqrt(terms.size)) if terms.size > 1 else mean
    known = _check_error(estimate, check_pairs, check_values)
    spread = _spread(estimate)
    return AuditResult(
        _r2_from(estimate, known + mean, spread),
        _r2_from(estimate, known + mean + z * sem, spread),
        known + mean,
        int(terms.size),
    )


def projected_r2(
    estimate_blocks: Any,
    uncertainty: Any,
    seen: Any,
    check_pairs: np.ndarray,
    check_values: Any,
    correction: float,
) -> float:
    """R^2 with the calibrated error (:func:`calibrated_error`) times ``correction``: the last
    audit round's error over the calibrated error at that round, carried forward.

    Why a correction of the calibrated error rather than of the weights: a refit of the
    reconstructor can rescale its variances several-fold between rounds, which a ratio to the
    raw variances would carry over, while the check blocks recalibrate the scale at every step.
    """
    error = calibrated_error(estimate_blocks, uncertainty, check_pairs, check_values, seen)
    return _r2_from(_numpy(estimate_blocks), correction * error)
