"""Statistics that say how realistic (and how hard) a spectroscopic image tensor is.

The same numbers are computed on the synthetic twin in its realism tests and on real data, so the
two can be compared:

- :func:`spectral_variance_shares`: how much of the variance a few spectral components carry
  along the unfolding ``(pixels) x (spectral entries)``;
- :func:`spatial_statistics`: for one 2-D map, the lag-1 spatial autocorrelation, the fraction of
  the pixel variance that is spatially uncorrelated (the "nugget") and the 1/e decay length of the
  correlated rest;
- :func:`interpolation_r2`: how well plain linear interpolation from a random subset of fully
  measured pixels reproduces the tensor (a high score means the data is trivially redundant in
  space);
- :func:`realism_report`: all of them for a :class:`~envs.data.dataset.Dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import griddata

from envs.data.dataset import DataError, Dataset
from reconstruct.metrics import r2_score


def _unfold(tensor: np.ndarray) -> np.ndarray:
    """Unfold ``(X, Y, *spectral)`` to float64 ``(pixels, channels)``, complete pixels only."""
    tensor = np.asarray(tensor)
    if tensor.ndim < 3:
        raise DataError(
            f"expected a tensor (X, Y, *spectral) with >= 3 axes, got shape {tensor.shape}"
        )
    matrix = tensor.reshape(tensor.shape[0] * tensor.shape[1], -1).astype(np.float64)
    complete = np.isfinite(matrix).all(axis=1)
    if complete.sum() < 2:
        raise DataError("fewer than two pixels have a complete spectrum; cannot compute statistics")
    return matrix[complete]


def spectral_variance_shares(
    tensor: np.ndarray, n_components: int = 10, seed: int = 0, power_iterations: int = 2
) -> np.ndarray:
    """Cumulative share of the centred variance carried by the leading spectral components.

    The tensor is unfolded to ``(pixels, spectral entries)``, each column is centred on its
    spatial mean, and the leading singular values are found with a seeded randomised range
    finder (power iterations make it accurate to well below 0.1 % of the variance here). The
    shares are computed from the projection onto the found subspace, so they never overstate the
    exact values.

    Parameters
    ----------
    tensor
        Array ``(X, Y, *spectral)``; pixels with any NaN are left out.
    n_components
        How many leading components to report.
    seed
        Seed of the random test matrix.
    power_iterations
        Subspace iterations of the range finder.

    Returns
    -------
    numpy.ndarray
        ``shares[k - 1]`` is the variance fraction carried by the first ``k`` components.
    """
    matrix = _unfold(tensor)
    matrix -= matrix.mean(axis=0)
    total = float(np.vdot(matrix, matrix))  # BLAS dot: no squared copy of the matrix
    if total == 0.0:
        raise DataError("the tensor has no spatial variance: every pixel holds the same spectrum")
    rank = min(n_components, *matrix.shape)
    width = min(rank + 10, *matrix.shape)
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(matrix @ rng.standard_normal((matrix.shape[1], width)))
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(matrix.T @ basis)
        basis, _ = np.linalg.qr(matrix @ basis)
    # (matrix.T @ basis).T rather than basis.T @ matrix: the same product, several times faster
    singular = np.linalg.svd((matrix.T @ basis).T, compute_uv=False)[:rank]
    return np.cumsum(singular**2) / total


def components_for_share(tensor: np.ndarray, share: float = 0.95, max_components: int = 20) -> int:
    """Fewest spectral components carrying at least ``share`` of the variance.

    Returns ``max_components + 1`` when even ``max_components`` components fall short.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    shares = spectral_variance_shares(tensor, max_components)
    reached = np.nonzero(shares >= share)[0]
    return int(reached[0]) + 1 if reached.size else max_components + 1


@dataclass(frozen=True)
class SpatialStatistics:
    """Spatial correlation summary of one 2-D map.

    Attributes
    ----------
    lag1_autocorrelation
        Mean autocorrelation at the four nearest-neighbour offsets.
    uncorrelated_fraction
        Share of the pixel variance with no spatial correlation (1 minus the amplitude of the
        exponential fitted to the autocorrelation at lags >= 1).
    correlation_length_px
        1/e decay length of the correlated part, in pixels.
    """

    lag1_autocorrelation: float
    uncorrelated_fraction: float
    correlation_length_px: float


def autocorrelation_by_distance(image: np.ndarray, max_lag: int = 10) -> np.ndarray:
    """Radially averaged spatial autocorrelation of a 2-D map at integer distances.

    NaN pixels are left out: each offset's covariance is normalised by the number of pixel pairs
    that are both measured there (computed with FFTs, zero-padded so nothing wraps around).

    Parameters
    ----------
    image
        2-D map; NaN marks missing pixels.
    max_lag
        Largest distance (pixels) to report.

    Returns
    -------
    numpy.ndarray
        ``acf[r]`` for ``r = 0 .. max_lag`` (``acf[0] == 1``); distances are rounded to the
        nearest integer.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise DataError(f"expected a 2-D map, got shape {image.shape}")
    mask = np.isfinite(image)
    if mask.sum() < 4:
        raise DataError("the map has fewer than 4 measured pixels")
    values = np.where(mask, image - image[mask].mean(), 0.0)
    variance = float(np.mean(values[mask] ** 2))
    if variance == 0.0:
        raise DataError("the map is constant: its autocorrelation is undefined")
    shape = [2 * s for s in image.shape]
    spectrum = np.fft.rfft2(values, shape)
    counts_spectrum = np.fft.rfft2(mask.astype(np.float64), shape)
    covariance = np.fft.irfft2(np.abs(spectrum) ** 2, shape)
    pairs = np.fft.irfft2(np.abs(counts_spectrum) ** 2, shape)
    lag_i = np.fft.fftfreq(shape[0], 1.0 / shape[0])
    lag_j = np.fft.fftfreq(shape[1], 1.0 / shape[1])
    distance = np.rint(np.hypot(lag_i[:, None], lag_j[None, :])).astype(int)
    usable = (pairs > 0.5) & (distance <= max_lag)
    correlation = covariance[usable] / np.round(pairs[usable]) / variance
    sums = np.bincount(distance[usable], weights=correlation, minlength=max_lag + 1)
    counts = np.bincount(distance[usable], minlength=max_lag + 1)
    return sums[: max_lag + 1] / np.maximum(counts[: max_lag + 1], 1)


def spatial_statistics(image: np.ndarray, max_lag: int = 10) -> SpatialStatistics:
    """Lag-1 autocorrelation, uncorrelated fraction and correlation length of one 2-D map.

    The autocorrelation at distances ``1 .. max_lag`` is fitted by ``a * exp(-r / L)``
    (least squares, ``L`` on a logarithmic grid from 0.5 to 100 pixels and ``a`` in closed form,
    kept in [0, 1]); the correlated share is ``a`` and the rest of the variance is spatially
    uncorrelated.

    Parameters
    ----------
    image
        2-D map; NaN marks missing pixels.
    max_lag
        Largest distance (pixels) used in the fit.

    Returns
    -------
    SpatialStatistics
    """
    acf = autocorrelation_by_distance(image, max_lag)
    lags = np.arange(1, max_lag + 1, dtype=np.float64)
    target = acf[1:]
    best = (np.inf, 0.0, 1.0)
    # The correlated share is a fraction of the variance, so the amplitude is kept in [0, 1];
    # a decay much shorter than a pixel cannot be told from the uncorrelated part.
    for length in np.geomspace(0.5, 100.0, 400):
        shape = np.exp(-lags / length)
        amplitude = float(np.clip(shape @ target / (shape @ shape), 0.0, 1.0))
        error = float(np.sum((target - amplitude * shape) ** 2))
        if error < best[0]:
            best = (error, amplitude, float(length))
    _, amplitude, length = best
    return SpatialStatistics(
        lag1_autocorrelation=float(acf[1]),
        uncorrelated_fraction=1.0 - amplitude,
        correlation_length_px=length,
    )


def interpolation_r2(
    tensor: np.ndarray,
    fraction: float = 0.2,
    seed: int = 0,
    reference: np.ndarray | None = None,
) -> float:
    """R^2 of linear interpolation from a random subset of fully measured pixels.

    Pixels are chosen uniformly among those with a complete spectrum; every other pixel gets
    :func:`scipy.interpolate.griddata` linear interpolation of the whole spectrum, with the
    nearest sampled pixel outside their convex hull. The score is
    :func:`reconstruct.metrics.r2_score` (``1 - SSE / SS`` around the per-channel spatial mean)
    over every pixel, sampled ones included.

    Parameters
    ----------
    tensor
        Array ``(X, Y, *spectral)`` the samples are taken from.
    fraction
        Share of pixels sampled, in (0, 1).
    seed
        Seed of the pixel choice.
    reference
        Tensor to score against (default: ``tensor`` itself); e.g. the noise-free truth.

    Returns
    -------
    float
        The R^2 score.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    tensor = np.asarray(tensor)
    nx, ny = tensor.shape[:2]
    flat = tensor.reshape(nx * ny, -1)
    complete = np.nonzero(np.isfinite(flat).all(axis=1))[0]
    n_samples = max(3, int(round(fraction * nx * ny)))
    if complete.size < n_samples:
        raise DataError(
            f"only {complete.size} complete pixels, fewer than the {n_samples} to sample"
        )
    chosen = np.random.default_rng(seed).choice(complete, size=n_samples, replace=False)
    points = np.stack(np.unravel_index(chosen, (nx, ny)), axis=1).astype(np.float64)
    grid = np.stack(np.unravel_index(np.arange(nx * ny), (nx, ny)), axis=1).astype(np.float64)
    samples = flat[chosen].astype(np.float64)
    estimate = griddata(points, samples, grid, method="linear")
    outside = ~np.isfinite(estimate).all(axis=1)
    if outside.any():
        estimate[outside] = griddata(points, samples, grid[outside], method="nearest")
    reference = tensor if reference is None else np.asarray(reference)
    return r2_score(reference, estimate.reshape(tensor.shape), spatial_axes=2)


def map_indices(spectral_shape: tuple[int, ...], n_per_axis: int = 3) -> list[tuple[int, ...]]:
    """Spectral indices of representative single-channel maps: first, middle and last per axis."""
    per_axis = [sorted({0, size // 2, size - 1})[:n_per_axis] for size in spectral_shape]
    grids = np.meshgrid(*per_axis, indexing="ij")
    return [tuple(int(g) for g in combo) for combo in zip(*(g.ravel() for g in grids), strict=True)]


def realism_report(dataset: Dataset, n_components: int = 8, seed: int = 0) -> dict[str, Any]:
    """All realism statistics of a dataset as a flat dict of plain numbers.

    Keys: ``components_for_95pct`` and ``share_top_{n_components}`` (spectral low-rank of the
    truth when present, else of the data), ``truth_explains_data`` (R^2 of truth against data,
    only with truth), median ``lag1_autocorrelation``, ``uncorrelated_fraction`` and
    ``correlation_length_px`` over the maps of :func:`map_indices`, and ``interp_r2_20pct``
    (against the data, and ``interp_r2_20pct_vs_truth`` when truth is present).
    """
    low_rank_source = dataset.truth if dataset.truth is not None else dataset.data
    shares = spectral_variance_shares(low_rank_source, max(n_components, 20), seed=seed)
    reached = np.nonzero(shares >= 0.95)[0]
    report: dict[str, Any] = {
        "components_for_95pct": int(reached[0]) + 1 if reached.size else f"> {len(shares)}",
        f"share_top_{n_components}": float(shares[n_components - 1]),
    }
    if dataset.truth is not None:
        report["truth_explains_data"] = r2_score(dataset.data, dataset.truth, spatial_axes=2)
    maps = [
        dataset.data[(slice(None), slice(None), *idx)]
        for idx in map_indices(dataset.spectral_shape)
    ]
    stats = [spatial_statistics(image) for image in maps]
    report["lag1_autocorrelation"] = float(np.median([s.lag1_autocorrelation for s in stats]))
    report["uncorrelated_fraction"] = float(np.median([s.uncorrelated_fraction for s in stats]))
    report["correlation_length_px"] = float(np.median([s.correlation_length_px for s in stats]))
    report["interp_r2_20pct"] = interpolation_r2(dataset.data, 0.2, seed=seed)
    if dataset.truth is not None:
        report["interp_r2_20pct_vs_truth"] = interpolation_r2(
            dataset.data, 0.2, seed=seed, reference=dataset.truth
        )
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m studies.realism --data twin:0``: print the realism statistics of a data spec."""
    import argparse

    from envs.data.sources import open_data

    parser = argparse.ArgumentParser(prog="python -m studies.realism", description=__doc__)
    parser.add_argument("--data", default="twin:0", help="data spec: twin, twin:SEED or a file")
    args = parser.parse_args(argv)
    for name, value in realism_report(open_data(args.data)).items():
        print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")


if __name__ == "__main__":
    main()
