"""A fast Gaussian-process engine over a pixel grid, shared by every output.

All outputs (spectral components, or the features of one voltage block) share one kernel, so one
factorisation serves them all. The prior of every output is, up to a per-output scale that
cancels in the posterior mean,

    k(x, x') = (1 - white) * rho(|x - x'| / lengthscale) + white * [x == x'],

a unit-variance stationary correlation (Matern-5/2 by default, or RBF) plus a *white* part: the
fraction of a pixel's variance that is spatially uncorrelated but still real signal (on real PFM
maps about half). Each observation carries its own noise variance in the same relative units.

Sequential conditioning (the incremental Cholesky update). With observed pixels ``X`` and
``L L^T = K_XX + D``, keep over *all* grid pixels the factor ``A = K[:, X] L^-T`` (stored
transposed, ``(n, P)``), the posterior mean ``M`` ``(P, k)`` and variance ``v`` ``(P,)``. Adding
``y`` at pixel ``j`` with noise ``s2``::

    c = K[:, j] - A @ A[j]          # posterior covariance column of pixel j
    s = sqrt(v[j] + s2)
    a = c / s                       # the new column of A (new row of L, solved)
    v -= a**2;  M += outer(a, (y - M[j]) / s)

which costs O(P n + P k) and never refactorises. A rebuild from scratch (after a hyperparameter
refit) is one Cholesky and one triangular solve.

For large grids :class:`TiledSpatialGP` approximates the same posterior with overlapping tiles,
each an exact :class:`SpatialGP` over its window, predicting only in its core; no matrix spans
all pixels. :func:`make_spatial_gp` picks it automatically above ``max_exact_pixels``.

Precision. The factorisation, the kernel, the mean and the variance are float64: the updates
subtract nearly equal numbers, and an RBF kernel in float32 produces denormals that slow matrix
products many times over (tiny kernel values are flushed to zero for the same reason). Only the
stored factor ``A`` is float32 by default (``factor_dtype``): the update is one pass over it, bound
by memory bandwidth, and halving its bytes halved that pass (timings in ``docs/performance.md``,
"Measured in the code"), while the posterior moved by ~1e-4 of the prior scale in the mean and ~2e-6
in the variance after 500 updates (``tests/test_gp.py`` bounds both). Float32 round-off (~1e-6
absolute in a covariance) is harmless next to observation noise but not next to none: the first
observation with a relative noise below ``FLOAT32_MIN_NOISE`` (noise-free or nearly exact data)
switches the factor to float64 for good.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from reconstruct.base import resolve_device

KERNELS = ("matern52", "rbf")
_FLUSH = 1e-12  # kernel values below this are set to 0 (avoids denormals, changes nothing)
_MIN_NOISE = 1e-8  # relative noise floor: keeps K_XX + D positive definite
#: Observations less noisy than this (relative to the prior variance) need a float64 factor.
FLOAT32_MIN_NOISE = 1e-5


@dataclass(frozen=True)
class GPHyperparameters:
    """Kernel hyperparameters in relative units (prior variance 1 per output).

    Parameters
    ----------
    lengthscale
        Correlation length in pixels.
    white
        Fraction of the prior variance that is spatially uncorrelated, in ``[0, 1)``.
    kernel
        ``"matern52"`` or ``"rbf"``.
    """

    lengthscale: float = 3.0
    white: float = 0.1
    kernel: str = "matern52"

    def __post_init__(self) -> None:
        if not self.lengthscale > 0:
            raise ValueError(f"lengthscale must be > 0 pixels, got {self.lengthscale}")
        if not 0.0 <= self.white < 1.0:
            raise ValueError(f"white fraction must be in [0, 1), got {self.white}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the setting. Small dense
    factorisations (hyperparameter fits, k x k solves) ran far slower with two threads on busy
    cores, and gain nothing from threads anyway (``docs/performance.md``, "Measured in the
    code")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def correlation(dist: torch.Tensor, hyper: GPHyperparameters) -> torch.Tensor:
    """Prior covariance for pixel distances ``dist`` (any shape), white part included where
    the distance is exactly 0."""
    r = dist / hyper.lengthscale
    if hyper.kernel == "matern52":
        s5r = 5.0**0.5 * r
        rho = (1.0 + s5r + s5r * s5r / 3.0) * torch.exp(-s5r)
    else:
        rho = torch.exp(-0.5 * r * r)
    rho = torch.where(rho < _FLUSH, torch.zeros_like(rho), rho)
    cov = (1.0 - hyper.white) * rho
    if hyper.white > 0:
        cov = cov + hyper.white * (dist == 0).to(cov.dtype)
    return cov


def grid_coords(shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(X * Y, 2)`` float64 row/column coordinates in the project's row-major pixel order."""
    ii, jj = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return torch.stack([ii.reshape(-1), jj.reshape(-1)], 1).to(torch.float64).to(device)


def _as_noise(
    noise: float | Sequence[float] | torch.Tensor, n: int, device: torch.device
) -> torch.Tensor:
    out = torch.as_tensor(noise, dtype=torch.float64, device=device).reshape(-1)
    if out.numel() == 1:
        out = out.expand(n)
    if out.numel() != n:
        raise ValueError(f"need one noise variance per observation ({n}), got {out.numel()}")
    if not torch.isfinite(out).all() or (out < 0).any():
        raise ValueError("noise variances must be finite and >= 0")
    return out.clamp_min(_MIN_NOISE)


def _as_values(
    values: torch.Tensor | np.ndarray, n: int, n_outputs: int, device: torch.device
) -> torch.Tensor:
    """``values`` as a float64 ``(n, n_outputs)`` on ``device``. An empty set of observations
    (``n = 0``, e.g. a tile with nothing measured in its window yet) is a valid ``(0, k)``:
    it leaves the prior, which is what such a tile must predict."""
    vals = torch.as_tensor(values, dtype=torch.float64).to(device)
    if n == 0:
        if vals.numel():
            raise ValueError(f"got {vals.numel()} values for 0 observations")
        return vals.reshape(0, n_outputs)
    vals = vals.reshape(n, -1)
    if vals.shape[1] != n_outputs:
        raise ValueError(f"values have {vals.shape[1]} outputs, expected {n_outputs}")
    return vals


class SpatialGP:
    """Exact GP posterior over every grid pixel, updated one observation at a time.

    Parameters
    ----------
    coords
        ``(P, 2)`` pixel coordinates (in pixels).
    n_outputs
        ``k``, the number of outputs sharing the kernel.
    hyper
        Kernel hyperparameters.
    prior_mean
        ``(k,)`` prior mean of the outputs (default 0).
    factor_dtype
        Storage type of the factor ``A`` (see the module notes on precision).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ...

    Notes
    -----
    Observing the same pixel twice is allowed (two independent noisy looks at one latent value);
    the combined effect equals one observation with the precision-weighted mean, which is how
    callers replace a pixel's observation by a more precise one without a downdate.
    Memory: ``A`` holds ``n x P`` values (3600 pixels, 720 observations: 10 MB in float32).
    """

    def __init__(
        self,
        coords: torch.Tensor | np.ndarray,
        n_outputs: int,
        hyper: GPHyperparameters | None = None,
        *,
        prior_mean: torch.Tensor | np.ndarray | None = None,
        factor_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if factor_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"factor_dtype must be float32 or float64, got {factor_dtype}")
        self.factor_dtype = factor_dtype
        xy = torch.as_tensor(coords)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"coords must have shape (P, 2), got {tuple(xy.shape)}")
        if not torch.equal(xy, xy.round()):
            raise ValueError("coords must be integer grid positions (row, column)")
        self.coords = xy.to(torch.long).to(self.device)
        self.coords -= self.coords.min(0).values
        # Grid distances take few values: the kernel is read from a table of offsets, which is
        # far cheaper than evaluating exp/sqrt for every (pixel, observation) pair.
        self._extent = (int(self.coords[:, 0].max()) + 1, int(self.coords[:, 1].max()) + 1)
        # On a full row-major rectangle (the grid itself, or a tile window) the kernel row of a
        # pixel is a window of one (2X-1, 2Y-1) offset table: rows are copied, not gathered.
        self._full_grid = self.coords.shape[0] == self._extent[0] * self._extent[1] and bool(
            torch.equal(self.coords, grid_coords(self._extent, self.device).to(torch.long))
        )
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
        self.n_pixels = self.coords.shape[0]
        self.n_outputs = int(n_outputs)
        self.set_hyperparameters(hyper or GPHyperparameters())
        self.prior_mean = self._check_prior(prior_mean)
        self.reset()

    def set_hyperparameters(self, hyper: GPHyperparameters) -> None:
        """Change the kernel (the caller must :meth:`rebuild` afterwards)."""
        self.hyper = hyper
        di = torch.arange(self._extent[0], dtype=torch.float64, device=self.device)
        dj = torch.arange(self._extent[1], dtype=torch.float64, device=self.device)
        dist = torch.sqrt(di[:, None] ** 2 + dj[None, :] ** 2)
        table = correlation(dist, hyper)
        self._table = table.reshape(-1)
        if self._full_grid:
            # offsets[u, v] = k(|u - (X-1)|, |v - (Y-1)|); windows[a, b] = offsets[a:a+X, b:b+Y]
            # is pixel (X-1-a, Y-1-b)'s kernel row over the grid (a strided view, no copy).
            nx, ny = self._extent
            offsets = table[(torch.arange(2 * nx - 1, device=self.device) - (nx - 1)).abs()][
                :, (torch.arange(2 * ny - 1, device=self.device) - (ny - 1)).abs()
            ]
            self._windows = offsets.unfold(0, nx, 1).unfold(1, ny, 1)

    def _check_prior(self, prior_mean: torch.Tensor | np.ndarray | None) -> torch.Tensor:
        if prior_mean is None:
            return torch.zeros(self.n_outputs, dtype=torch.float64, device=self.device)
        pm = torch.as_tensor(prior_mean, dtype=torch.float64).to(self.device).reshape(-1)
        if pm.numel() != self.n_outputs:
            raise ValueError(f"prior_mean needs {self.n_outputs} entries, got {pm.numel()}")
        return pm

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every observation (keeps the hyperparameters and prior mean)."""
        self._at = torch.zeros(16, self.n_pixels, dtype=self.factor_dtype, device=self.device)
        self.n_obs = 0
        self.obs_pixels: list[int] = []
        self.mean = self.prior_mean.expand(self.n_pixels, -1).clone()
        self.variance = torch.ones(self.n_pixels, dtype=torch.float64, device=self.device)
        #: ``(a, delta)`` of the last :meth:`add`: the mean changed by ``outer(a, delta)``.
        self.last_update: tuple[torch.Tensor, torch.Tensor] | None = None

    def kernel_rows(self, pixels: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Prior covariance ``K[pixels, :]`` as a contiguous ``(m, P)``."""
        idx = torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        if self._full_grid:
            nx, ny = self._extent
            rows = self._windows[nx - 1 - self.coords[idx, 0], ny - 1 - self.coords[idx, 1]]
            return rows.reshape(idx.numel(), self.n_pixels)
        di = (self.coords[idx, :1] - self.coords[:, 0]).abs_()
        dj = (self.coords[idx, 1:] - self.coords[:, 1]).abs_()
        return self._table[di.mul_(self._extent[1]).add_(dj)]

    def kernel_columns(self, pixels: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Prior covariance ``K[:, pixels]`` as ``(P, m)`` (a transposed view)."""
        return self.kernel_rows(pixels).T

    def _check_pixel(self, pixel: int) -> int:
        if not 0 <= int(pixel) < self.n_pixels:
            raise IndexError(f"pixel {pixel} out of range [0, {self.n_pixels})")
        return int(pixel)

    def add(self, pixel: int, y: torch.Tensor | np.ndarray, noise: float) -> None:
        """Condition on one observation ``y`` ``(k,)`` at ``pixel`` with noise variance
        ``noise`` (relative units); O(P n + P k)."""
        j = self._check_pixel(pixel)
        y = torch.as_tensor(y, dtype=torch.float64).to(self.device).reshape(-1)
        if y.numel() != self.n_outputs:
            raise ValueError(f"observation has {y.numel()} outputs, expected {self.n_outputs}")
        if not torch.isfinite(y).all():
            raise ValueError(f"observation at pixel {j} contains NaN or inf")
        s2 = float(noise)  # a scalar: checked here, without building a tensor (hot path)
        if not (math.isfinite(s2) and s2 >= 0):
            raise ValueError("noise variances must be finite and >= 0")
        s2 = max(s2, _MIN_NOISE)
        if s2 < FLOAT32_MIN_NOISE:
            self._at = self._at.to(torch.float64)
        n = self.n_obs
        self._reserve(n + 1)
        col = self.kernel_rows([j])[0]
        if n:
            at = self._at[:n]
            # a_j @ A, not A^T @ a_j: the same product, but a row-vector times a row-major
            # matrix streams A once (faster: ``docs/performance.md``).
            col = col - (at[:, j] @ at).to(torch.float64)
        s = (self.variance[j] + s2).sqrt()
        a_new = col / s
        self._at[n] = a_new
        delta = (y - self.mean[j]) / s
        self.mean.addr_(a_new, delta)
        self.variance.sub_(a_new * a_new).clamp_(min=0.0)
        self.last_update = (a_new, delta)
        self.n_obs = n + 1
        self.obs_pixels.append(j)

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows of the factor, growing its storage geometrically
        (amortised O(P) per added observation)."""
        if rows <= self._at.shape[0]:
            return
        n = self.n_obs
        cap = max(rows, 2 * self._at.shape[0])
        grown = torch.empty(cap, self.n_pixels, dtype=self._at.dtype, device=self.device)
        grown[:n] = self._at[:n]
        self._at = grown

    def add_many(
        self,
        pixels: Sequence[int] | torch.Tensor,
        values: torch.Tensor | np.ndarray,
        noise: float | Sequence[float] | torch.Tensor,
    ) -> None:
        """Condition on ``m`` observations ``values`` ``(m, k)`` at distinct ``pixels`` at once:
        the same posterior as ``m`` calls of :meth:`add` up to round-off, for one pass over the
        factor instead of ``m`` (the block form of the update: the ``m`` posterior covariance
        rows ``C``, the Cholesky ``L_m`` of ``C[:, J] + D``, new rows ``L_m^-1 C``). Memory
        bound like :meth:`add`, so a batch of 8 costs about as much as two single updates.
        ``last_update`` becomes None (the change is not rank one)."""
        idx, vals, s2 = self._checked_observations(pixels, values, noise)
        m = idx.numel()
        if m == 0:
            return
        if float(s2.min()) < FLOAT32_MIN_NOISE:
            self._at = self._at.to(torch.float64)
        n = self.n_obs
        self._reserve(n + m)
        cov = self.kernel_rows(idx)  # (m, P)
        if n:
            at = self._at[:n]
            cov = cov - (at[:, idx].T @ at).to(torch.float64)
        block = cov[:, idx]
        block.diagonal().add_(s2)
        chol = torch.linalg.cholesky(block)
        a_new = torch.linalg.solve_triangular(chol, cov, upper=False)  # (m, P)
        delta = torch.linalg.solve_triangular(chol, vals - self.mean[idx], upper=False)
        self._at[n : n + m] = a_new
        self.mean.addmm_(a_new.T, delta)
        self.variance.sub_((a_new * a_new).sum(0)).clamp_(min=0.0)
        self.last_update = None
        self.n_obs = n + m
        self.obs_pixels.extend(int(p) for p in idx.tolist())

    def _checked_observations(
        self,
        pixels: Sequence[int] | torch.Tensor,
        values: torch.Tensor | np.ndarray,
        noise: float | Sequence[float] | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pixels, values, noise)`` as tensors on the model's device, after checking the
        pixels' range, the values' shape and finiteness, and the noise."""
        idx = torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        m = idx.numel()
        if m and (idx.min() < 0 or idx.max() >= self.n_pixels):
            raise IndexError(f"pixels out of range [0, {self.n_pixels})")
        vals = _as_values(values, m, self.n_outputs, self.device)
        if not torch.isfinite(vals).all():
            raise ValueError("values contain NaN or inf")
        return idx, vals, _as_noise(noise, m, self.device)

    def rebuild(
        self,
        pixels: Sequence[int] | torch.Tensor,
        values: torch.Tensor | np.ndarray,
        noise: float | Sequence[float] | torch.Tensor,
        hyper: GPHyperparameters | None = None,
        prior_mean: torch.Tensor | np.ndarray | None = None,
        capacity: int = 0,
    ) -> None:
        """Condition from scratch on ``values`` ``(n, k)`` at ``pixels`` (one Cholesky and one
        triangular solve, O(n^3 + P n^2)); optionally with new hyperparameters / prior mean.

        ``capacity``: rows of factor storage to allocate, for the observations expected before
        the next rebuild (default, or when smaller: ``n`` rounded up to a power of two). An
        :meth:`add` beyond the storage grows it, a copy of the whole factor into new memory
        (several times the cost of the update itself); rows not yet written cost address space
        only. The posterior does not depend on it."""
        if hyper is not None:
            self.set_hyperparameters(hyper)
        if prior_mean is not None:
            self.prior_mean = self._check_prior(prior_mean)
        idx, vals, s2 = self._checked_observations(pixels, values, noise)
        n = idx.numel()
        self.reset()
        if n == 0:
            return
        k_xp = self.kernel_rows(idx)  # (n, P)
        k_xx = k_xp[:, idx]  # a copy: the noise is added in place, without an n x n diagonal
        k_xx.diagonal().add_(s2)
        chol = torch.linalg.cholesky(k_xx)
        # The solve runs in the factor's storage type, straight into its storage (a float32
        # solve is faster and moved the posterior by < 1e-6: ``docs/performance.md``).
        # Rows of the storage past n are never read before :meth:`add` writes them.
        cap = max(16, 1 << (n - 1).bit_length(), int(capacity))
        dtype = torch.float64 if float(s2.min()) < FLOAT32_MIN_NOISE else self.factor_dtype
        self._at = torch.empty(cap, self.n_pixels, dtype=dtype, device=self.device)
        at = self._at[:n]
        torch.linalg.solve_triangular(chol.to(dtype), k_xp.to(dtype), upper=False, out=at)
        alpha = torch.linalg.solve_triangular(chol, vals - self.prior_mean, upper=False)
        # (alpha^T A)^T, not A^T alpha: the solve returns alpha column-major, and A^T alpha
        # then was many times slower (``docs/performance.md``).
        self.mean = self.prior_mean + (alpha.T.to(dtype) @ at).T.to(torch.float64)
        self.variance = (1.0 - (at * at).sum(0).to(torch.float64)).clamp_(min=0.0)
        self.n_obs = n
        self.obs_pixels = [int(p) for p in idx.tolist()]

    # ------------------------------------------------------------------ queries
    def covariance_columns(self, pixels: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Posterior covariance ``Sigma[:, pixels]`` as ``(P, m)``; O(P n m)."""
        idx = torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        cols = self.kernel_columns(idx)
        if self.n_obs:
            at = self._at[: self.n_obs]
            cols = cols - (at[:, idx].T @ at).T.to(torch.float64)
        return cols

    def column_square_sums(
        self, pixels: Sequence[int] | torch.Tensor | None = None, chunk: int = 256
    ) -> torch.Tensor:
        """``sum_x Sigma(x, j)^2`` for each candidate pixel ``j`` (all pixels when ``None``),
        batched in chunks of ``chunk`` candidates; O(P n m)."""
        idx = torch.arange(self.n_pixels, device=self.device) if pixels is None else (
            torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        )
        out = torch.empty(idx.numel(), dtype=torch.float64, device=self.device)
        for start in range(0, idx.numel(), chunk):
            cols = self.covariance_columns(idx[start : start + chunk])
            out[start : start + chunk] = (cols * cols).sum(0)
        return out

    def variance_reduction(
        self,
        pixels: Sequence[int] | torch.Tensor | None = None,
        noise: float | torch.Tensor = 0.0,
    ) -> torch.Tensor:
        """Total posterior variance (summed over all pixels, relative units, per output)
        removed by observing each candidate pixel with noise ``noise`` (scalar or one per
        candidate): ``sum_x Sigma(x, j)^2 / (v_j + noise)``; O(P n m)."""
        idx = torch.arange(self.n_pixels, device=self.device) if pixels is None else (
            torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        )
        s2 = _as_noise(noise, idx.numel(), self.device)
        return self.column_square_sums(idx) / (self.variance[idx] + s2)


class TiledSpatialGP:
    """Local approximation of :class:`SpatialGP` for large grids: overlapping tiles.

    The grid is cut into square *cores* of ``tile`` pixels; each core's exact GP sees the
    observations inside the core widened by ``halo`` pixels on every side, and predicts only in
    its core. An observation is added to every tile whose window holds it (at most 4 while
    ``halo <= tile / 2``). With a Matern-5/2 lengthscale of a few pixels, correlations beyond
    ~4 lengthscales are negligible, so a halo of 12 loses little
    (see ``benchmarks.reconstruction``).
    Same interface as :class:`SpatialGP` for ``add``, ``rebuild``, ``mean``, ``variance``,
    ``variance_reduction``.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        n_outputs: int,
        hyper: GPHyperparameters | None = None,
        *,
        tile: int = 32,
        halo: int = 12,
        prior_mean: torch.Tensor | np.ndarray | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        if tile < 1 or halo < 0:
            raise ValueError(f"need tile >= 1 and halo >= 0, got tile={tile}, halo={halo}")
        self.device = resolve_device(device)
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_pixels = self.shape[0] * self.shape[1]
        self.n_outputs = int(n_outputs)
        self.hyper = hyper or GPHyperparameters()
        coords = grid_coords(self.shape, self.device)
        pixel_ids = torch.arange(self.n_pixels, device=self.device).reshape(self.shape)
        self.tiles: list[SpatialGP] = []
        self._window: list[torch.Tensor] = []  # global pixel ids of each tile's window
        self._core_local: list[torch.Tensor] = []  # core pixels as window-local indices
        self._core_global: list[torch.Tensor] = []
        self._local_of: list[dict[int, int]] = []
        self._tiles_of: list[list[int]] = [[] for _ in range(self.n_pixels)]
        self._core_tile = torch.empty(self.n_pixels, dtype=torch.long, device=self.device)
        for r0 in range(0, self.shape[0], tile):
            for c0 in range(0, self.shape[1], tile):
                r1, c1 = min(r0 + tile, self.shape[0]), min(c0 + tile, self.shape[1])
                wr0, wc0 = max(r0 - halo, 0), max(c0 - halo, 0)
                wr1, wc1 = min(r1 + halo, self.shape[0]), min(c1 + halo, self.shape[1])
                window = pixel_ids[wr0:wr1, wc0:wc1].reshape(-1)
                local = torch.arange(window.numel(), device=self.device)
                local = local.reshape(wr1 - wr0, wc1 - wc0)
                core_local = local[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0].reshape(-1)
                t = len(self.tiles)
                self.tiles.append(
                    SpatialGP(
                        coords[window], n_outputs, self.hyper,
                        prior_mean=prior_mean, device=self.device,
                    )
                )
                self._window.append(window)
                self._core_local.append(core_local)
                self._core_global.append(window[core_local])
                self._core_tile[window[core_local]] = t
                self._local_of.append({int(g): i for i, g in enumerate(window.tolist())})
                for g in window.tolist():
                    self._tiles_of[g].append(t)
        self.reset()

    @property
    def prior_mean(self) -> torch.Tensor:
        return self.tiles[0].prior_mean

    @property
    def n_obs(self) -> int:
        return len(self.obs_pixels)

    def reset(self) -> None:
        """Forget every observation."""
        for t in self.tiles:
            t.reset()
        self.obs_pixels: list[int] = []
        self.mean = self.prior_mean.expand(self.n_pixels, -1).clone()
        self.variance = torch.ones(self.n_pixels, dtype=torch.float64, device=self.device)

    def _sync(self, t: int) -> None:
        tile = self.tiles[t]
        self.mean[self._core_global[t]] = tile.mean[self._core_local[t]]
        self.variance[self._core_global[t]] = tile.variance[self._core_local[t]]

    def add(self, pixel: int, y: torch.Tensor | np.ndarray, noise: float) -> None:
        """Condition every tile whose window holds ``pixel`` on ``y`` ``(k,)``."""
        if not 0 <= int(pixel) < self.n_pixels:
            raise IndexError(f"pixel {pixel} out of range [0, {self.n_pixels})")
        for t in self._tiles_of[int(pixel)]:
            self.tiles[t].add(self._local_of[t][int(pixel)], y, noise)
            self._sync(t)
        self.obs_pixels.append(int(pixel))

    def add_many(
        self,
        pixels: Sequence[int] | torch.Tensor,
        values: torch.Tensor | np.ndarray,
        noise: float | Sequence[float] | torch.Tensor,
    ) -> None:
        """Condition on several observations, one :meth:`add` each (a tile sees few)."""
        idx = torch.as_tensor(pixels, dtype=torch.long).reshape(-1).tolist()
        vals = _as_values(values, len(idx), self.n_outputs, self.device)
        s2 = _as_noise(noise, len(idx), self.device)
        for p, y, s in zip(idx, vals, s2.tolist(), strict=True):
            self.add(p, y, s)

    def rebuild(
        self,
        pixels: Sequence[int] | torch.Tensor,
        values: torch.Tensor | np.ndarray,
        noise: float | Sequence[float] | torch.Tensor,
        hyper: GPHyperparameters | None = None,
        prior_mean: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Condition every tile from scratch on its share of the observations."""
        if hyper is not None:
            self.hyper = hyper
        idx = torch.as_tensor(pixels, dtype=torch.long).reshape(-1).tolist()
        vals = _as_values(values, len(idx), self.n_outputs, self.device)
        s2 = _as_noise(noise, len(idx), self.device)
        members: list[list[int]] = [[] for _ in self.tiles]
        for i, p in enumerate(idx):
            if not 0 <= p < self.n_pixels:
                raise IndexError(f"pixel {p} out of range [0, {self.n_pixels})")
            for t in self._tiles_of[p]:
                members[t].append(i)
        for t, tile in enumerate(self.tiles):
            rows = torch.as_tensor(members[t], dtype=torch.long, device=self.device)
            local = [self._local_of[t][idx[i]] for i in members[t]]
            tile.rebuild(local, vals[rows], s2[rows], hyper=self.hyper, prior_mean=prior_mean)
        self.obs_pixels = list(idx)
        self.mean = self.prior_mean.expand(self.n_pixels, -1).clone()
        self.variance = torch.ones(self.n_pixels, dtype=torch.float64, device=self.device)
        for t in range(len(self.tiles)):
            self._sync(t)

    def column_square_sums(
        self, pixels: Sequence[int] | torch.Tensor | None = None, chunk: int = 256
    ) -> torch.Tensor:
        """As :meth:`SpatialGP.column_square_sums`, each candidate evaluated in the tile whose
        core holds it (covariance outside that tile's window is neglected)."""
        idx = torch.arange(self.n_pixels, device=self.device) if pixels is None else (
            torch.as_tensor(pixels, dtype=torch.long, device=self.device).reshape(-1)
        )
        out = torch.empty(idx.numel(), dtype=torch.float64, device=self.device)
        owner = self._core_tile[idx]
        for t in torch.unique(owner).tolist():
            sel = torch.nonzero(owner == t).reshape(-1)
            local = [self._local_of[t][int(g)] for g in idx[sel].tolist()]
            out[sel] = self.tiles[t].column_square_sums(local, chunk)
        return out

    variance_reduction = SpatialGP.variance_reduction


def make_spatial_gp(
    shape: tuple[int, int],
    n_outputs: int,
    hyper: GPHyperparameters | None = None,
    *,
    max_exact_pixels: int = 4096,
    prior_mean: torch.Tensor | np.ndarray | None = None,
    device: str | torch.device = "auto",
) -> SpatialGP | TiledSpatialGP:
    """An exact :class:`SpatialGP` up to ``max_exact_pixels`` grid pixels (64 x 64), a
    :class:`TiledSpatialGP` beyond, so no matrix ever spans every pixel of a large grid."""
    n_pixels = int(shape[0]) * int(shape[1])
    if n_pixels <= max_exact_pixels:
        return SpatialGP(grid_coords(shape), n_outputs, hyper, prior_mean=prior_mean, device=device)
    return TiledSpatialGP(shape, n_outputs, hyper, prior_mean=prior_mean, device=device)


def fit_hyperparameters(
    coords: torch.Tensor | np.ndarray,
    values: torch.Tensor | np.ndarray,
    noise: float | Sequence[float] | torch.Tensor = 0.0,
    *,
    kernel: str = "matern52",
    max_points: int = 400,
    lengthscales: Sequence[float] | None = None,
    whites: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8),
    seed: int = 0,
    start: GPHyperparameters | None = None,
) -> GPHyperparameters:
    """Exact marginal-likelihood fit of lengthscale and white fraction, deterministic.

    Each output gets its own amplitude, profiled out in closed form, so one Cholesky per
    candidate ``(lengthscale, white)`` serves all ``k`` outputs:
    ``log p = -n/2 sum_i log(y_i^T K^-1 y_i / n) - k/2 log|K| + const``. The search is a grid
    followed by one finer grid around the best lengthscale (no optimiser iterations: a few
    dozen Choleskys of at most ``max_points`` points). Values should be centred.

    Parameters
    ----------
    coords, values, noise
        ``(n, 2)`` pixel coordinates, ``(n, k)`` observations, and their noise variances
        relative to each output's prior variance (scalar or ``(n,)``).
    max_points
        Fit on a seeded random subsample of at most this many observations.
    start
        Warm start, e.g. the previous fit when refitting on more data: a hill climb on the
        fine grid from ``start`` (one fine step in lengthscale and 0.05 in white fraction per
        move, at most 8 moves) replaces the grid search. Measured on the 60 x 60 twin, over
        the refits while 40 % of the pixels were filled: 12-22 Choleskys instead of 53.
    """
    xy = torch.as_tensor(coords, dtype=torch.float64).reshape(-1, 2)
    y = torch.as_tensor(values, dtype=torch.float64).reshape(xy.shape[0], -1)
    s2 = _as_noise(noise, xy.shape[0], torch.device("cpu"))
    if xy.shape[0] < 3:
        raise ValueError(f"need at least 3 observations to fit hyperparameters, got {xy.shape[0]}")
    if xy.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(xy.shape[0], max_points, replace=False))
        keep_t = torch.as_tensor(keep)
        xy, y, s2 = xy[keep_t], y[keep_t], s2[keep_t]
    n, k = y.shape
    dist = torch.cdist(xy, xy)
    same = (dist == 0).to(torch.float64)  # where the white part applies (repeats included)
    rho_of: dict[float, torch.Tensor] = {}  # the correlation matrix per lengthscale, reused

    def score(hyper: GPHyperparameters) -> float:
        if hyper.lengthscale not in rho_of:
            rho_of[hyper.lengthscale] = correlation(dist, replace(hyper, white=0.0))
        cov = torch.add(rho_of[hyper.lengthscale], same, alpha=hyper.white / (1.0 - hyper.white))
        cov.mul_(1.0 - hyper.white).diagonal().add_(s2 + 1e-8)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info):
            return -np.inf
        z = torch.linalg.solve_triangular(chol, y, upper=False)
        quad = (z * z).sum(0).clamp_min(1e-300)
        logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
        return float(-0.5 * n * torch.log(quad / n).sum() - 0.5 * k * logdet)

    if lengthscales is None:
        lengthscales = np.geomspace(0.7, 24.0, 8)
    coarse_step = float(np.exp(np.diff(np.log(np.asarray(lengthscales, dtype=float))).mean()))
    ratio = coarse_step ** (1.0 / 3.0)  # the finer grid spans +-2/3 of a coarse step
    if start is not None and start.kernel == kernel:
        with single_thread():
            return _hill_climb(start, score, ratio, max_moves=8)
    with single_thread():
        best = max(
            (GPHyperparameters(float(ls), float(w), kernel) for ls in lengthscales for w in whites),
            key=score,
        )
    fine = [best.lengthscale * ratio**e for e in (-2, -1, 1, 2)]
    fine_w = {best.white, max(best.white - 0.05, 0.0), min(best.white + 0.05, 0.95)}
    candidates = [best] + [replace(best, lengthscale=ls, white=w) for ls in fine for w in fine_w]
    with single_thread():
        return max(candidates, key=score)


def _hill_climb(
    start: GPHyperparameters,
    score: Callable[[GPHyperparameters], float],
    ratio: float,
    max_moves: int,
) -> GPHyperparameters:
    """Move to the best of the 8 fine-grid neighbours until none is better."""
    scores: dict[tuple[float, float], float] = {}

    def cached(h: GPHyperparameters) -> float:
        key = (round(h.lengthscale, 12), round(h.white, 12))
        if key not in scores:
            scores[key] = score(h)
        return scores[key]

    best = start
    for _ in range(max_moves):
        neighbours = [
            replace(best, lengthscale=best.lengthscale * ratio**e, white=w)
            for e in (-1, 0, 1)
            for w in {best.white, max(best.white - 0.05, 0.0), min(best.white + 0.05, 0.95)}
        ]
        moved = max(neighbours, key=cached)
        if cached(moved) <= cached(best):
            break
        best = moved
    return best
