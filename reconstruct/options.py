"""The strategies behind LowRankGP's string switches.

Each string switch of :class:`~reconstruct.lowrank.LowRankGP` selects one small object, chosen
once in its constructor (:func:`~reconstruct.checks.choose` over the tables below), so that
the model's code calls one method where it would otherwise compare strings:

- ``refit_mode`` (:data:`REFIT_MODES`): when a due refit is installed;
- ``small_sample_errors`` (:data:`SMALL_SAMPLE_ERRORS`): what the reported uncertainty rests on
  when too few complete spectra can be held out;
- ``basis_from`` (:data:`BASIS_SOURCES`): which spectra the basis is fitted on;
- ``error_calibration`` (:data:`ERROR_CALIBRATIONS`): whether the reported variance is
  calibrated on the model's own prediction errors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reconstruct.basis import SpectralBasis, cross_validated_errors, refine_basis
from reconstruct.error_calibration import OnlineErrorCalibration


# ---------------------------------------------------------------------- refit_mode
class BlockingRefits:
    """``refit_mode="blocking"``: a due refit runs in the step that makes it due."""

    name = "blocking"
    deferred = False

    def __init__(self, lag: float) -> None:
        self.lag = lag

    def install_lag(self, n_measured: int) -> int:
        """Measurements between a refit's start and its install: none."""
        return 0


class DeferredRefits(BlockingRefits):
    """``refit_mode="deferred"``: a due refit runs in a background thread on a snapshot of the
    ``n`` measurements so far, and is installed ``ceil(lag * n)`` measurements later (at least
    one; :class:`~reconstruct.refit.DeferredRefit`). A refit costs more the more is measured,
    so the lag grows with ``n``."""

    name = "deferred"
    deferred = True

    def install_lag(self, n_measured: int) -> int:
        return max(1, math.ceil(self.lag * n_measured))


#: ``refit_mode``: the schedule, built with the ``refit_lag``.
REFIT_MODES: dict[str, type[BlockingRefits]] = {
    "blocking": BlockingRefits,
    "deferred": DeferredRefits,
}


# ---------------------------------------------------------------------- small_sample_errors
class ResidualErrors:
    """``small_sample_errors="residual"``: with too few complete spectra for the two-fold
    cross-validation, the in-sample residual stands in for the reported uncertainty as it does
    for the fit's weights."""

    name = "residual"

    def reported(
        self,
        fit_errors: tuple[torch.Tensor, torch.Tensor],
        spectra: torch.Tensor,
        k: int,
        explained: float,
        max_components: int,
        seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(single_block, unexplained)`` errors the uncertainty reports, given those the
        fit uses (:func:`~reconstruct.basis.cross_validated_errors`) and the ``spectra`` of a
        ``k``-component basis."""
        return fit_errors


class CappedCrossValidation(ResidualErrors):
    """``small_sample_errors="capped-cv"``: with fewer than ``2 (k + 2)`` complete spectra the
    reported uncertainty comes from a cross-validation whose folds' bases are capped at
    ``n // 2 - 2`` components (from 6 spectra on), while the fit keeps the residual (so an
    exactly low-rank field is still recovered exactly)."""

    name = "capped-cv"

    def reported(self, fit_errors, spectra, k, explained, max_components, seed):
        n = spectra.shape[0]
        capped = min(max_components, n // 2 - 2)
        if n < 2 * (k + 2) and capped >= 1:
            return cross_validated_errors(spectra, explained, capped, seed=seed)
        return fit_errors


#: ``small_sample_errors``: the strategy.
SMALL_SAMPLE_ERRORS: dict[str, ResidualErrors] = {
    "residual": ResidualErrors(),
    "capped-cv": CappedCrossValidation(),
}


# ---------------------------------------------------------------------- basis_from
class FullSpectraBasis:
    """``basis_from="full"``: the basis is the principal components of fully measured pixels."""

    name = "full"

    def refine(
        self,
        basis: SpectralBasis,
        values: torch.Tensor,
        measured: torch.Tensor,
        max_basis_pixels: int,
        rng: np.random.Generator,
    ) -> SpectralBasis:
        """The basis to use, from ``basis`` fitted on complete spectra, the reconstructor's
        ``values`` ``(P, nb, F_b)`` and ``measured`` ``(P, nb)`` mask (CPU)."""
        return basis


class EveryBlockBasis(FullSpectraBasis):
    """``basis_from="all"``: the basis of complete spectra, with its rank, is refitted on every
    measured block, partly measured pixels included (:func:`~reconstruct.basis.refine_basis`),
    on a seeded subsample of at most ``4 * max_basis_pixels`` observed pixels, fully measured
    ones first."""

    name = "all"

    def refine(self, basis, values, measured, max_basis_pixels, rng):
        observed = torch.nonzero(measured.any(1)).reshape(-1)
        limit = 4 * max_basis_pixels
        if observed.numel() > limit:
            is_full = measured[observed].all(1)
            full, partial = observed[is_full], observed[~is_full]
            full = full[: limit // 2]
            room = limit - full.numel()
            pick = np.sort(rng.choice(partial.numel(), min(room, partial.numel()), replace=False))
            observed = torch.cat([full, partial[torch.as_tensor(pick, dtype=torch.long)]])
        rows = measured[observed]
        device = values.device
        return refine_basis(
            basis, values[observed.to(device)], rows.to(device), rows.all(1).to(device)
        )


#: ``basis_from``: the strategy.
BASIS_SOURCES: dict[str, FullSpectraBasis] = {"full": FullSpectraBasis(), "all": EveryBlockBasis()}


# ---------------------------------------------------------------------- error_calibration
class Uncalibrated:
    """``error_calibration="none"``: the reported variance is the model's own."""

    name = "none"

    def new(self) -> OnlineErrorCalibration | None:
        """A fresh calibration for an episode (None: none)."""
        return None


class OnlineCalibration(Uncalibrated):
    """``error_calibration="online"``: before each block is added, its prediction and the
    model's variance for it are noted; the reported variance is then calibrated on those
    prediction errors, per pixel kind and with the pixel's estimated energy as a covariate
    (:class:`~reconstruct.error_calibration.OnlineErrorCalibration`). The estimate itself is
    unchanged."""

    name = "online"

    def new(self) -> OnlineErrorCalibration:
        return OnlineErrorCalibration()


#: ``error_calibration``: the strategy.
ERROR_CALIBRATIONS: dict[str, Uncalibrated] = {
    "none": Uncalibrated(),
    "online": OnlineCalibration(),
}
