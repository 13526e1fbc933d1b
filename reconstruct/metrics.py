"""Accuracy metrics for reconstructions, and summaries of accuracy-versus-time curves.

Every tensor metric takes a ``reference`` (the measured tensor, or the noise-free truth) and an
``estimate`` of the same shape, as NumPy arrays or torch tensors (CPU or GPU). The leading
``spatial_axes`` axes are the pixel axes; every remaining index is one *channel* (e.g. one
(voltage, time) pair). Two layouts are common:

- block layout ``(P, n_blocks, F_b)``: one pixel axis, ``spatial_axes=1`` (the default, which
  is what :meth:`reconstruct.base.Reconstructor.r2` passes);
- image layout ``(X, Y, V, T)``: two pixel axes, ``spatial_axes=2``.

NaN entries of the reference are ignored everywhere (sums of squares and channel means); a
non-finite estimate at a finite reference entry is an error. Sums are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(values: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    """A tensor view of ``values``; read-only NumPy arrays (e.g. broadcasts) are copied, since
    torch cannot wrap them safely."""
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = np.array(values)
    return torch.as_tensor(values, device=device)


def _as_float64_pair(
    reference: ArrayLike, estimate: ArrayLike, spatial_axes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes; return (reference, estimate, finite-reference mask) as float64 tensors
    on the reference's device, with NaN reference entries and their estimates set to 0."""
    ref = _as_tensor(reference)
    est = _as_tensor(estimate, device=ref.device)
    if tuple(ref.shape) != tuple(est.shape):
        raise ValueError(
            f"reference has shape {tuple(ref.shape)} but estimate has shape {tuple(est.shape)}; "
            "they must match"
        )
    if not 1 <= spatial_axes <= ref.ndim:
        raise ValueError(
            f"spatial_axes={spatial_axes} must be between 1 and the number of axes ({ref.ndim})"
        )
    # Private float64 copies: everything below works in place to keep memory at two tensors.
    ref = ref.to(torch.float64, copy=True)
    est = est.to(torch.float64, copy=True)
    valid = torch.isfinite(ref)
    if not bool(valid.any()):
        raise ValueError("reference holds no finite entry: nothing to score against")
    invalid = ~valid
    if bool((~torch.isfinite(est) & valid).any()):
        raise ValueError("estimate contains NaN or inf where the reference is finite")
    ref.masked_fill_(invalid, 0.0)
    est.masked_fill_(invalid, 0.0)
    return ref, est, valid


def _squared_terms(
    reference: ArrayLike, estimate: ArrayLike, spatial_axes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared errors and squared deviations from the per-channel spatial mean, elementwise
    (0 at NaN reference entries), both float64 of the input's shape."""
    ref, est, valid = _as_float64_pair(reference, estimate, spatial_axes)
    dims = tuple(range(spatial_axes))
    counts = valid.sum(dim=dims, keepdim=True).to(torch.float64)
    # A channel with no finite reference entry contributes nothing; avoid 0/0 for its mean.
    mean = ref.sum(dim=dims, keepdim=True) / counts.clamp_min(1.0)
    sq_err = est.sub_(ref).square_()  # both are 0 at NaN reference entries
    sq_dev = ref.sub_(mean).square_().masked_fill_(~valid, 0.0)
    return sq_err, sq_dev


def _r2_from_sums(sse: torch.Tensor, ss_ref: torch.Tensor) -> torch.Tensor:
    """``1 - sse / ss_ref`` elementwise; where ``ss_ref == 0`` (a constant reference) the
    score is 1 for an exact estimate and 0 otherwise, so the result is always finite."""
    safe = torch.where(ss_ref > 0, ss_ref, torch.ones_like(ss_ref))
    r2 = 1.0 - sse / safe
    degenerate = torch.where(sse == 0, torch.ones_like(sse), torch.zeros_like(sse))
    return torch.where(ss_ref > 0, r2, degenerate)


def r2_score(reference: ArrayLike, estimate: ArrayLike, spatial_axes: int = 1) -> float:
    """Coefficient of determination with the per-channel spatial mean as the baseline.

    ``R^2 = 1 - SSE / SS_ref`` with ``SSE = sum (reference - estimate)^2`` and
    ``SS_ref = sum (reference - mean_c)^2``, where ``mean_c`` is the mean of the reference over
    the pixel axes for each channel ``c``. An estimate that equals the mean spectrum at every
    pixel therefore scores exactly 0, a perfect one 1; worse-than-mean estimates are negative.

    Parameters
    ----------
    reference, estimate
        Arrays or tensors of the same shape; NaN entries of ``reference`` are ignored.
    spatial_axes
        How many leading axes are pixel axes: 1 for block layout ``(P, n_blocks, F_b)``,
        2 for image layout ``(X, Y, V, ...)``.

    Returns
    -------
    float
        The score. If the reference is constant in space for every channel (``SS_ref == 0``),
        1.0 for an exact estimate and 0.0 otherwise.
    """
    sq_err, sq_dev = _squared_terms(reference, estimate, spatial_axes)
    return float(_r2_from_sums(sq_err.sum(), sq_dev.sum()))


def r2_per_axis(
    reference: ArrayLike, estimate: ArrayLike, axis: int, spatial_axes: int = 1
) -> np.ndarray:
    """R^2 for each index along ``axis`` (e.g. each voltage or each read-out time).

    Entry ``k`` is ``1 - SSE_k / SS_ref_k`` with both sums taken over every entry whose index
    along ``axis`` is ``k``; deviations are from the same per-channel spatial mean as in
    :func:`r2_score`, so the scores are comparable with it. ``axis`` may be negative; a pixel
    axis is allowed too (giving R^2 per grid row, say). Indices whose reference is all NaN get
    NaN; indices with a constant reference follow the rule of :func:`r2_score`.

    Returns
    -------
    numpy.ndarray
        float64 array of length ``reference.shape[axis]``.
    """
    sq_err, sq_dev = _squared_terms(reference, estimate, spatial_axes)
    ndim = sq_err.ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for a {ndim}-axis tensor")
    axis %= ndim
    others = tuple(d for d in range(ndim) if d != axis)
    ref = _as_tensor(reference)
    present = torch.isfinite(ref).to(torch.int64).sum(dim=others).cpu().numpy() > 0
    if others:
        sse, ss_ref = sq_err.sum(dim=others), sq_dev.sum(dim=others)
    else:
        sse, ss_ref = sq_err, sq_dev
    scores = _r2_from_sums(sse, ss_ref).cpu().numpy()
    scores[~present] = np.nan
    return scores


def rmse(reference: ArrayLike, estimate: ArrayLike) -> float:
    """Root-mean-square error over the finite entries of ``reference``."""
    ref, est, valid = _as_float64_pair(reference, estimate, 1)
    return float(torch.sqrt((ref - est).square().sum() / valid.sum()))


def _value_range(reference: ArrayLike) -> float:
    """``max - min`` of the finite entries of ``reference``."""
    ref = _as_tensor(reference)
    finite = ref[torch.isfinite(ref)].to(torch.float64)
    if finite.numel() == 0:
        raise ValueError("reference holds no finite entry: nothing to score against")
    return float(finite.max() - finite.min())


def nrmse(reference: ArrayLike, estimate: ArrayLike) -> float:
    """RMSE divided by the reference's value range (``max - min`` of its finite entries).

    The range, rather than the standard deviation, is the normaliser so that NRMSE does not
    restate R^2; a constant reference (range 0) gives 0 for an exact estimate, else inf.
    """
    err, span = rmse(reference, estimate), _value_range(reference)
    if span == 0:
        return 0.0 if err == 0 else math.inf
    return err / span


def psnr(reference: ArrayLike, estimate: ArrayLike) -> float:
    """Peak signal-to-noise ratio in dB, ``20 log10(range / RMSE)``, with the range of
    :func:`nrmse`; ``inf`` for an exact estimate."""
    err, span = rmse(reference, estimate), _value_range(reference)
    if err == 0:
        return math.inf
    if span == 0:
        return -math.inf
    return 20.0 * math.log10(span / err)


# ------------------------------------------------------------------ accuracy-versus-time curves
def _check_curve(
    seconds: Sequence[float], accuracy: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a curve; return it as float64 arrays."""
    t = np.asarray(seconds, dtype=np.float64).reshape(-1)
    a = np.asarray(accuracy, dtype=np.float64).reshape(-1)
    if t.shape != a.shape:
        raise ValueError(f"seconds has {t.size} entries but accuracy has {a.size}; they must match")
    if not (np.isfinite(t).all() and np.isfinite(a).all()):
        raise ValueError("seconds and accuracy must be finite")
    if t.size and t[0] < 0:
        raise ValueError(f"seconds must be >= 0, got {t[0]}")
    if np.any(np.diff(t) < 0):
        raise ValueError("seconds must be non-decreasing (one entry per measurement, in order)")
    return t, a


def auc_normalised(
    seconds: Sequence[float],
    accuracy: Sequence[float],
    total_seconds: float,
    start: float | None = None,
) -> float:
    """Normalised area under an accuracy-versus-time step curve.

    The curve is a step function: ``accuracy[i]`` is reached at ``seconds[i]`` and holds until
    ``seconds[i + 1]`` (the last value holds until ``total_seconds``); before ``seconds[0]`` the
    curve is ``start``. The area from 0 to ``total_seconds`` is divided by ``total_seconds``,
    so a curve at a constant value ``a`` gives ``a``, and a policy that reaches R^2 = 1 at once
    gives 1. Measurements after ``total_seconds`` are ignored. Values are not clipped: negative
    accuracies lower the area.

    Parameters
    ----------
    seconds
        Cumulative time of each accuracy value, non-decreasing, >= 0.
    accuracy
        The accuracy (e.g. R^2) reached at each of ``seconds``.
    total_seconds
        The budget the curve is integrated over (> 0), e.g. the full-raster time.
    start
        The accuracy before the first measurement; ``None`` means 0.0 (the score of the mean
        spectrum, the least one can claim to know).

    Returns
    -------
    float
        ``(1 / total_seconds) * integral_0^total_seconds accuracy(t) dt``.
    """
    t, a = _check_curve(seconds, accuracy)
    if not (np.isfinite(total_seconds) and total_seconds > 0):
        raise ValueError(f"total_seconds must be a positive finite number, got {total_seconds}")
    first = 0.0 if start is None else float(start)
    # Knots: 0, then every measurement time (clipped to the budget), then the budget's end.
    knots = np.concatenate([[0.0], np.minimum(t, total_seconds), [float(total_seconds)]])
    levels = np.concatenate([[first], a])
    return float(np.sum(np.diff(knots) * levels) / total_seconds)


def seconds_to_reach(
    seconds: Sequence[float], accuracy: Sequence[float], target: float
) -> float | None:
    """The first time at which the accuracy is at least ``target``.

    Returns ``seconds[i]`` for the smallest ``i`` with ``accuracy[i] >= target``, or ``None``
    when the curve never reaches it. Later drops below the target do not matter.
    """
    t, a = _check_curve(seconds, accuracy)
    hits = np.flatnonzero(a >= target)
    return float(t[hits[0]]) if hits.size else None


def relaxation_part(tensor: ArrayLike, time_axis: int = -1) -> torch.Tensor:
    """Each curve minus its mean over time: the relaxation that follows a pulse, without the
    level it relaxes around. NaN entries stay NaN and are left out of the curve's mean."""
    values = _as_tensor(tensor).to(torch.float64)
    if values.ndim < 2:
        raise ValueError(
            f"a tensor with a time axis has >= 2 axes, got shape {tuple(values.shape)}"
        )
    finite = torch.isfinite(values)
    count = finite.sum(dim=time_axis, keepdim=True).clamp_min(1)
    mean = torch.where(finite, values, 0.0).sum(dim=time_axis, keepdim=True) / count
    return values - mean


def dynamics_r2(
    reference: ArrayLike, estimate: ArrayLike, spatial_axes: int = 2, time_axis: int = -1
) -> float:
    """R^2 of the relaxation alone: :func:`r2_score` of :func:`relaxation_part` of both.

    The tensor R^2 is dominated by the level after each pulse and stays high while every
    relaxation curve is flat; this score is 0 for an estimate that knows only the grid's mean
    relaxation (for each voltage and read-out), below 0 for flat curves at the right levels, and
    1 for the exact relaxation at every pixel. Image layout ``(X, Y, V, T)`` by default.

    Raises
    ------
    ValueError
        When the tensors have no time axis (fewer than ``spatial_axes + 2`` axes, or a time axis
        of length 1).
    """
    ref = _as_tensor(reference)
    if ref.ndim < spatial_axes + 2 or ref.shape[time_axis] < 2:
        raise ValueError(
            f"the dynamics accuracy needs a time axis of >= 2 read-outs after the voltage axis; "
            f"the data has shape {tuple(ref.shape)}"
        )
    return r2_score(
        relaxation_part(ref, time_axis), relaxation_part(estimate, time_axis), spatial_axes
    )


def dynamics_r2_per_voltage(
    reference: ArrayLike, estimate: ArrayLike, voltage_axis: int = 2, time_axis: int = -1
) -> np.ndarray:
    """:func:`dynamics_r2` of each voltage's map alone (image layout ``(X, Y, V, T)`` by
    default): where in the pulse sequence the relaxation is recovered, and where not."""
    ref = _as_tensor(reference)
    if ref.ndim < 4 or ref.shape[time_axis] < 2:
        raise ValueError(
            f"the dynamics accuracy needs a time axis of >= 2 read-outs after the voltage axis; "
            f"the data has shape {tuple(ref.shape)}"
        )
    return r2_per_axis(
        relaxation_part(ref, time_axis), relaxation_part(estimate, time_axis), voltage_axis, 2
    )
