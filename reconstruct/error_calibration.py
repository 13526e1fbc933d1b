"""A reconstructor's error model, calibrated on its own predictions of the blocks it was given.

Before a block is measured the reconstructor predicts it and states a variance for it; once the
block is measured, the mean squared difference between prediction and measurement is one
honest sample of the error it makes on blocks it has not seen (no ground truth enters). This
module keeps the most recent such samples and fits, by least squares in log space,

    log error = a_kind + beta * log variance + gamma * log energy,

fitted separately for each ``kind``: whether the block's pixel had nothing measured
(``empty``) or some other block measured (``partial``). ``variance`` is the model's own
(uncalibrated) variance and ``energy`` the estimated sum of squares of the pixel's spectrum.
The calibrated variance of any unmeasured block is then
``exp(a_kind) variance^beta energy^gamma``.

Why these terms:

- the level: the model's variance comes from a cross-validation over a few dozen complete
  spectra, and was measured 2x too large on some twins and 50x too small at partly measured
  pixels on others (``docs/reconstruction.md``, "Does the reconstruction know its own error?");
  each kind gets its own level;
- the energy: the stationary spatial model gives every pixel far from measurements the same
  variance, while the error grows with how strongly a pixel responds on the twin (the log
  surprise's slope on the log energy was 1.2-1.9) and not on the real BE-PFM file (-0.12). Fitted
  per sample, the slope follows the data in hand;
- ``beta`` lets the data say how far the model's own ranking of its blocks is to be believed.

Every coefficient is shrunk towards the uncalibrated model (``a = 0``, ``beta = 1``,
``gamma = 0``), so with few samples nothing changes; the levels are then set so that, per kind,
the mean calibrated variance of the recorded blocks equals their mean squared error (a fit in
log space alone would aim at the geometric mean, which is smaller). The model improves as data
arrive, so old samples say less about its error now: each sample is weighted by
``exp(-age / (memory * n))``, its age counted in samples and ``n`` the samples recorded so far
(the memory grows with the data, as the model's improvement slows), and only the last
``window`` are kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Pixel kinds of an unmeasured block, in the order of the fitted levels.
KINDS: tuple[str, ...] = ("empty", "partial")
#: Bounds of the fitted exponents (beyond them a few samples would reorder every block).
BETA_RANGE: tuple[float, float] = (0.25, 1.5)
GAMMA_RANGE: tuple[float, float] = (-1.0, 2.0)
_FLOOR = 1e-30  # below any squared error in data units worth a logarithm


class OnlineErrorCalibration:
    """Recent prediction errors of a reconstructor and the error model fitted to them.

    Parameters
    ----------
    window
        Samples kept (the most recent).
    shrinkage
        Prior weight, in samples, of the uncalibrated model on each coefficient: a coefficient
        moves halfway to its least-squares value when the samples' spread in its covariate
        (in log units, summed over samples) equals ``shrinkage``.
    min_samples
        Samples of a kind needed before its level is fitted (until then it stays at 0).
    memory
        Decay length of the sample weights, as a fraction of the samples recorded so far.
    """

    def __init__(
        self,
        window: int = 512,
        shrinkage: float = 8.0,
        min_samples: int = 8,
        memory: float = 0.3,
    ) -> None:
        if window < 2 or shrinkage < 0 or min_samples < 1 or not memory > 0:
            raise ValueError(
                "need window >= 2, shrinkage >= 0, min_samples >= 1 and memory > 0"
            )
        self.memory = float(memory)
        self.window = int(window)
        self.shrinkage = float(shrinkage)
        self.min_samples = int(min_samples)
        self.reset()

    def reset(self) -> None:
        """Forget every sample (a new episode)."""
        # A ring of the last `window` samples: kind, log variance, log energy, log error, and
        # the sample's number (its age is counted from it).
        self._ring = np.zeros((self.window, 5))
        self._fitted: np.ndarray | None = None
        self._n_recorded = 0  # every sample ever recorded (the ring keeps the last)

    @property
    def n_samples(self) -> int:
        return min(self._n_recorded, self.window)

    def record(self, partial: bool, variance: float, energy: float, error: float) -> None:
        """One block predicted with model ``variance`` at a pixel of estimated ``energy`` (both
        before it was measured), whose mean squared prediction error turned out ``error``.
        Non-finite or non-positive entries are skipped (nothing to learn from them)."""
        if not (
            math.isfinite(variance) and math.isfinite(energy) and math.isfinite(error)
            and variance > 0 and energy > 0 and error >= 0
        ):
            return
        self._ring[self._n_recorded % self.window] = (
            float(bool(partial)), math.log(variance), math.log(energy),
            math.log(max(error, _FLOOR)), self._n_recorded,
        )
        self._n_recorded += 1
        self._fitted = None

    def coefficients(self) -> np.ndarray:
        """``(2, 5)``: per kind (rows, :data:`KINDS`) the level, the exponents ``beta`` of the
        model variance and ``gamma`` of the energy, and the weighted mean log variance and log
        energy of its samples, around which the exponents act (so that a shrunk fit stays
        near the uncalibrated model). A kind with fewer than ``min_samples`` samples keeps the
        uncalibrated model (0, 1, 0)."""
        if self._fitted is None:
            self._fitted = self._fit()
        return self._fitted

    def _fit(self) -> np.ndarray:
        fitted = np.zeros((len(KINDS), 5))
        fitted[:, 1] = 1.0
        if not self._n_recorded:
            return fitted
        samples = self._ring[: self.n_samples]
        age = self._n_recorded - 1 - samples[:, 4]
        weights = np.exp(-age / (self.memory * self._n_recorded))
        for k in range(len(KINDS)):
            rows = samples[:, 0] == k
            if int(rows.sum()) >= self.min_samples:
                fitted[k] = self._fit_kind(samples[rows, 1:4], weights[rows])
        return fitted

    def _fit_kind(self, logs: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """One kind's ``(level, beta, gamma, centre_var, centre_energy)`` from its samples'
        ``(log variance, log energy, log error)`` rows and their weights."""
        x, log_error = logs[:, :2], logs[:, 2]
        centre = weight @ x / weight.sum()
        # Exponents: weighted ridge on the deviations from the weighted means, towards
        # beta = 1 and gamma = 0; the target is the log error over the model variance.
        target = log_error - x[:, 0]
        dx, dy = x - centre, target - weight @ target / weight.sum()
        wx = dx * weight[:, None]
        # Least squares, not solve: a covariate without spread (e.g. one variance for every
        # block) gets slope 0 instead of a singular system.
        gram = wx.T @ dx + self.shrinkage * np.eye(2)
        slope = np.linalg.lstsq(gram, wx.T @ dy, rcond=None)[0]
        beta = float(np.clip(1.0 + slope[0], *BETA_RANGE))
        gamma = float(np.clip(slope[1], *GAMMA_RANGE))
        # The level by moments: mean calibrated variance = mean squared error, shrunk towards
        # 0 like the exponents (the samples' weight against `shrinkage`).
        shape = x[:, 0] + (beta - 1.0) * dx[:, 0] + gamma * dx[:, 1]
        level = _log_mean_exp(log_error, weight) - _log_mean_exp(shape, weight)
        n = float(weight.sum())
        return np.array([level * n / (n + self.shrinkage), beta, gamma, *centre])

    def calibrate(
        self, variance: torch.Tensor, energy: torch.Tensor, partial: torch.Tensor
    ) -> torch.Tensor:
        """Calibrated variance (float64) of blocks with model ``variance`` at pixels of
        ``energy`` (broadcastable tensors on one device), ``partial`` True where the pixel has
        some block measured. Zero (and non-positive) variances stay zero: a measured block has
        no error to state."""
        variance = variance.to(torch.float64)
        log_var = variance.clamp_min(_FLOOR).log()
        log_energy = energy.to(torch.float64).clamp_min(_FLOOR).log()
        # Per kind: level + log_var + (beta - 1)(log_var - centre_var) + gamma (log_energy -
        # centre_energy), as offset + beta log_var + gamma log_energy.
        by_kind = []
        for level, beta, gamma, centre_var, centre_energy in self.coefficients().tolist():
            offset = level - (beta - 1.0) * centre_var - gamma * centre_energy
            by_kind.append(log_var * beta + (log_energy * gamma + offset))
        log_calibrated = torch.where(partial, by_kind[1], by_kind[0])
        return torch.where(variance > 0, log_calibrated.exp(), 0.0)


def _log_mean_exp(values: np.ndarray, weight: np.ndarray) -> float:
    """``log(sum(w exp(v)) / sum(w))``, without overflow."""
    top = float(values.max())
    return top + float(np.log(weight @ np.exp(values - top) / weight.sum()))
