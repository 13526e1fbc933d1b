"""Where has the reconstruction been wrong? The "surprise" of measured blocks, kept per pixel.

Before a block is measured, the model predicts it and states its predictive variance; once it
is measured, the log ratio of the mean squared prediction error to that variance is the block's
*surprise*: 0 when the model was as wrong as it expected, positive where it was more wrong,
negative where it was over-cautious. A Gaussian-weighted average of those log ratios around each
pixel is the *local surprise*. Only what the instrument measured and what the model predicted
enter: no ground truth.

Why: the uncertainty planes say how far a pixel is from measurements, not where the
reconstruction is actually wrong, which is what the privileged oracle exploits. The heuristic
``gp-surprise-per-second`` (:class:`agents.baselines.SurprisePerSecondPolicy`) scales the
cost-aware uncertainty score by ``exp(SURPRISE_WEIGHT * local surprise)``; the acquisition env
(``observe_surprise=True``) shows the local surprise to a policy as one observation plane; the
score-map PPO policy starts from that heuristic. All three use :class:`SurpriseTracker`, so the
quantity is computed one way only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Width (pixels) of the Gaussian that spreads each block's surprise over its neighbourhood.
SURPRISE_SIGMA = 1.5
#: Weight of the local surprise in the log score of ``gp-surprise-per-second`` (the best of
#: 0.1, 0.25, 0.5 and 1 on held-out seeds; see :class:`agents.baselines.SurprisePerSecondPolicy`).
SURPRISE_WEIGHT = 0.25
#: The observation plane is ``clip(local surprise / SURPRISE_PLANE_SCALE, -1, 1)``. Measured on
#: 16 x 16 twins (seeds 100 100-100 102, 32 read-outs to budget 0.3 and 128 read-outs to R^2
#: 0.95) every local surprise lay in [-3.01, 2.98], so with 4 the plane is linear in practice
#: and a policy can read the surprise back exactly (``SURPRISE_PLANE_SCALE * plane``).
SURPRISE_PLANE_SCALE = 4.0


class SurpriseTracker:
    """Log surprise of every measured block, and its local average per pixel.

    Use per step: :meth:`expect` before the measurement (the model's prediction and variance of
    the chosen block), :meth:`record` after it (reads the measured values back from the
    reconstructor); :meth:`local_surprise` or :meth:`plane` at any time.

    Parameters
    ----------
    grid_shape
        ``(X, Y)`` of the scan grid.
    sigma
        Gaussian width of the local average, in pixels.
    """

    def __init__(self, grid_shape: tuple[int, int], sigma: float = SURPRISE_SIGMA) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
        self.sigma = float(sigma)
        self.reset()

    def reset(self) -> None:
        """Forget every recorded surprise (a new episode)."""
        self._pending: tuple[int, int, np.ndarray, float, float | None] | None = None
        self._log_ratio_sum = np.zeros(self.grid_shape)
        self._count = np.zeros(self.grid_shape)
        self._covariates: list[float] = []  # per recorded block with a covariate, and ...
        self._covariate_log_ratios: list[float] = []  # ... its log surprise

    def expect(
        self,
        reconstructor: Any,
        pixel: int,
        block: int,
        variance: float,
        covariate: float | None = None,
    ) -> None:
        """Note the model's prediction of ``(pixel, block)`` and its predictive ``variance``
        (``reconstructor.uncertainty()[pixel, block]``), before the block is measured; and,
        optionally, a ``covariate`` of the block known now (e.g. its pixel's relative log
        energy), whose relation to the surprise :meth:`covariate_slope` estimates."""
        predicted = reconstructor.predict_block(pixel, block).detach().cpu().double().numpy()
        self._pending = (int(pixel), int(block), predicted, float(variance), covariate)

    def record(self, reconstructor: Any) -> bool:
        """Add the surprise of the block noted by :meth:`expect`, now that the reconstructor
        holds its measured values. Returns False (and records nothing) when nothing is pending
        or the block was not measured (e.g. its values were NaN)."""
        if self._pending is None:
            return False
        pixel, block, predicted, variance, covariate = self._pending
        self._pending = None
        if not bool(reconstructor.measured[pixel, block]):
            return False
        measured = reconstructor.predict_block(pixel, block).detach().cpu().double().numpy()
        ratio = float(np.mean((measured - predicted) ** 2)) / max(variance, 1e-12)
        log_ratio = float(np.log(ratio + 1e-6))
        cell = np.unravel_index(pixel, self.grid_shape)
        self._log_ratio_sum[cell] += log_ratio
        self._count[cell] += 1.0
        if covariate is not None and np.isfinite(covariate):
            self._covariates.append(float(covariate))
            self._covariate_log_ratios.append(log_ratio)
        return True

    def covariate_records(self) -> tuple[np.ndarray, np.ndarray]:
        """The recorded covariates and their blocks' log surprises, in recording order."""
        return np.asarray(self._covariates), np.asarray(self._covariate_log_ratios)

    def covariate_slope(self, shrinkage: float) -> float:
        """Least-squares slope of the recorded log surprises on their covariates, shrunk
        towards 0: ``sum(dx dy) / (sum(dx^2) + shrinkage)`` with ``dx, dy`` the deviations
        from the means; 0 with fewer than two records. ``shrinkage`` is in squared covariate
        units: the covariate spread that the data must show before the slope is believed."""
        if len(self._covariates) < 2:
            return 0.0
        x, y = self.covariate_records()
        dx = x - x.mean()
        return float(dx @ (y - y.mean()) / (dx @ dx + shrinkage))

    def local_surprise(self) -> np.ndarray:
        """``(P,)`` Gaussian-weighted mean log surprise around each pixel (0 with no data)."""
        from scipy.ndimage import gaussian_filter

        # One call over both maps (no smoothing across them): the same numbers as two calls,
        # in two thirds of the time; this runs at every env step with the surprise plane.
        stacked = np.stack([self._count, self._log_ratio_sum])
        weight, total = gaussian_filter(stacked, (0.0, self.sigma, self.sigma), mode="constant")
        return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), 0.0).reshape(-1)

    def plane(self) -> np.ndarray:
        """``(X, Y)`` float32 observation plane: local surprise over ``SURPRISE_PLANE_SCALE``,
        clipped to [-1, 1]."""
        scaled = self.local_surprise().reshape(self.grid_shape) / SURPRISE_PLANE_SCALE
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)
