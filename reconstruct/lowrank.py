"""Low-rank spectral reconstructors: a learned spectral basis, per-pixel coefficients, and a
spatial model of the coefficients.

Model. Every pixel's full spectrum (all blocks, block layout flattened, ``F`` features) is
``mu + c_p B + residual``, with ``B`` ``(k, F)`` orthonormal rows learned from measured spectra
and ``k`` chosen by explained variance. A pixel measured at a set ``S`` of blocks gives a
ridge least-squares coefficient estimate ``c_p = (G_p + sigma_e^2 Lambda^-1)^-1 r_p`` with
``G_p = sum_{b in S} H_b``, ``H_b = B_b B_b^T`` and ``r_p = sum_{b in S} B_b (y_b - mu_b)``;
its noise, relative to the coefficients' prior variance, is
``sigma_e^2 tr(G_p^-1) / sum(lambda)``, so a pixel whose blocks pin the coefficients down
weighs more than one whose blocks do not. A spatial model then gives
coefficients at every pixel (smoothing partially measured ones too); the estimate is
``mu_b + c_p B_b`` for unmeasured blocks and the measured values for measured ones.

Why this model for partial spectra: every measured block, whatever its voltages, informs all
``k`` coefficients of its pixel, and through them the pixel's unmeasured blocks; independent
per-block GPs (sharing the kernel) only ever borrow from the same block at other pixels, so a
pixel measured at one block teaches them nothing about its other blocks.
``benchmarks.reconstruction``
measures the two side by side on the twin (``--compare-partial``).

Bootstrapping: until ``min_full_pixels`` pixels are fully measured there is no basis; the
estimate of an unmeasured block is then the mean of that block's measurements (the mean
spectrum, R^2 about 0), and its uncertainty the spread of those measurements.

The basis, the hyperparameters and the GP factor are refitted together when the number of
measurements has grown by ``refit_growth`` since the last refit (never at every step: the basis
costs more than the incremental update). By default a refit runs in the step that makes it
due; most of its time is the GP's Cholesky and triangular solve (``docs/performance.md``,
"Refits", has the timings and the command). With ``refit_mode="deferred"`` it runs
in a background thread while the current model keeps taking measurements, and is installed a
number of measurements later that grows with the data; the measurements made meanwhile are
brought into it (by the thread, and at the install those it has not reached), all but the
install step's own, which enters the installed model as an ordinary update
(:class:`~reconstruct.refit.DeferredRefit`). Between refits each measurement is one incremental GP
update: when a pixel already has an observation, the improved estimate enters as a
pseudo-observation whose precision is the gain in precision, which for a scalar-noise GP equals
replacing the old observation.

The reconstructor holds no reference to score against: it logs what changed in its estimate
(``changes``, :class:`~reconstruct.changes.ChangeLog`), and whoever holds a reference scores it
with a :class:`~reconstruct.scoring.ReferenceScorer`. Where the rest lives: the spectral basis in
:mod:`reconstruct.basis`, what each string option selects in :mod:`reconstruct.options`, the
deferred refit's thread in :mod:`reconstruct.refit`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from reconstruct.base import BlockLayout, Reconstructor
from reconstruct.basis import (
    _MAX_RIDGE,
    _MIN_RIDGE,
    SpectralBasis,
    cross_validated_errors,
    fit_basis,
)
from reconstruct.changes import ChangeLog
from reconstruct.checks import check_int, check_real, choose
from reconstruct.gp import (
    KERNELS,
    GPHyperparameters,
    SpatialGP,
    TiledSpatialGP,
    fit_hyperparameters,
    grid_coords,
    make_spatial_gp,
    single_thread,
)
from reconstruct.interpolate import inverse_distance_weights
from reconstruct.options import (
    BASIS_SOURCES,
    ERROR_CALIBRATIONS,
    REFIT_MODES,
    SMALL_SAMPLE_ERRORS,
)
from reconstruct.refit import DeferredRefit

_HUGE_NOISE = 1e12  # noise of an observation that carries (almost) no information


def _fraction(x: float) -> bool:
    return 0 < x <= 1
#: What a refit writes: the model state a deferred refit hands over when it is installed.
_REFIT_STATE = (
    "basis", "_basis_version", "_total_variance", "_single_block_error", "_unexplained",
    "_reported_single_block_error", "_reported_unexplained", "_block_gram", "_gram",
    "_mean_proj", "_proj", "_obs_coef", "_obs_noise", "hyper", "_fitted_hyper", "spatial",
    "_block_weight", "_pattern_error", "_pattern_bits",
)


class LowRankGP(Reconstructor):
    """Low-rank spectral completion with a shared-kernel spatial GP over the coefficients.

    Parameters
    ----------
    spatial_shape, spectral_shape, layout, device, dtype
        As :class:`~reconstruct.base.Reconstructor`.
    kernel
        ``"matern52"`` (default) or ``"rbf"``.
    explained, max_components
        The basis keeps the fewest components explaining ``explained`` of the variance, at most
        ``max_components``.
    min_full_pixels
        Fully measured pixels needed before the first basis (bootstrapping, see module notes).
    refit_growth
        Refit basis, hyperparameters and GP when the number of measurements has grown by this
        factor since the last refit.
    refit_mode, refit_lag
        ``"blocking"`` (default): a due refit runs in the step that makes it due.
        ``"deferred"``: it runs in a background thread on a snapshot of the ``n`` measurements so
        far while the current model keeps taking measurements (that one included), and is
        installed at measurement ``n + ceil(refit_lag * n)`` (earlier if the next refit is due
        first). The measurements made meanwhile enter the new model by the thread and at the
        install, the install step's own as an ordinary update
        (:class:`~reconstruct.options.DeferredRefits`, :class:`~reconstruct.refit.DeferredRefit`).
        Results depend only on the data and the seed, never on timing. The first basis is always
        fitted at once (there is no model to keep until then), and :meth:`refit` always blocks.
    small_sample_errors
        With fewer than ``2 (k + 2)`` complete spectra the two-fold cross-validation of a
        ``k``-component basis cannot run. ``"residual"`` (default): the in-sample residual
        stands in, for the fit's weights and the reported uncertainty alike (it reported far too
        little variance at partly measured pixels, ``docs/reconstruction.md``). ``"capped-cv"``:
        the reported uncertainty comes from a cross-validation of bases capped in rank
        (:class:`~reconstruct.options.CappedCrossValidation`).
    basis_from
        ``"full"`` (default): the basis is the principal components of fully measured pixels.
        ``"all"``: that basis, with its rank, is then refitted on every measured block,
        partly measured pixels included (:class:`~reconstruct.options.EveryBlockBasis`).
    error_calibration
        ``"none"`` (default): :meth:`uncertainty` reports the model's variance as it is.
        ``"online"``: it is calibrated on the model's own prediction errors so far
        (:class:`~reconstruct.options.OnlineCalibration`); the estimate is unchanged.
    max_basis_pixels, max_fit_points
        Sizes of the seeded subsamples for the basis and the hyperparameter fit.
    max_exact_pixels
        Grids larger than this use the tiled local GP.
    seed
        Seeds the subsamples.

    Every option is checked here (:mod:`reconstruct.options`): a wrong type or value raises a
    ``TypeError`` or ``ValueError`` naming the option and what it accepts.
    """

    name = "gp"
    #: Called by a deferred refit's thread before each piece of its work: a hook for tests
    #: that play a slow machine (results must not change).
    _refit_delay: Callable[[], None] | None = None

    def __init__(
        self,
        spatial_shape: tuple[int, int],
        spectral_shape: Sequence[int],
        layout: BlockLayout | None = None,
        *,
        kernel: str = "matern52",
        explained: float = 0.99,
        max_components: int = 12,
        min_full_pixels: int = 8,
        refit_growth: float = 1.5,
        refit_mode: str = "blocking",
        refit_lag: float = 0.2,
        small_sample_errors: str = "residual",
        error_calibration: str = "none",
        basis_from: str = "full",
        max_basis_pixels: int = 256,
        max_fit_points: int = 200,
        max_exact_pixels: int = 4096,
        seed: int = 0,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(spatial_shape, spectral_shape, layout, device=device, dtype=dtype)
        self.kernel = choose("kernel", kernel, {name: name for name in KERNELS})
        self.explained = check_real("explained", explained, "a fraction in (0, 1]", _fraction)
        self.max_components = check_int("max_components", max_components, 1)
        self.min_full_pixels = check_int("min_full_pixels", min_full_pixels, 2)
        self.refit_growth = check_real(
            "refit_growth", refit_growth, "a growth factor > 1", lambda x: x > 1
        )
        self._refit_lag = check_real("refit_lag", refit_lag, "a fraction > 0", lambda x: x > 0)
        self.refit_mode = refit_mode
        self._reported_errors = choose(
            "small_sample_errors", small_sample_errors, SMALL_SAMPLE_ERRORS
        )
        self._calibration = choose("error_calibration", error_calibration, ERROR_CALIBRATIONS)
        self._basis_source = choose("basis_from", basis_from, BASIS_SOURCES)
        self.max_basis_pixels = check_int("max_basis_pixels", max_basis_pixels, 2)
        self.max_fit_points = check_int("max_fit_points", max_fit_points, 3)
        self.max_exact_pixels = check_int("max_exact_pixels", max_exact_pixels, 1)
        self.seed = check_int("seed", seed, 0)
        self.hyper = GPHyperparameters(kernel=kernel)
        self.reset()

    # ------------------------------------------------------------------ options
    @property
    def refit_mode(self) -> str:
        """``"blocking"`` or ``"deferred"`` (see the class notes); may be changed between
        measurements."""
        return self._refits.name

    @refit_mode.setter
    def refit_mode(self, mode: str) -> None:
        self._refits = choose("refit_mode", mode, REFIT_MODES)(self._refit_lag)

    @property
    def refit_lag(self) -> float:
        return self._refit_lag

    @property
    def small_sample_errors(self) -> str:
        return self._reported_errors.name

    @property
    def error_calibration(self) -> str:
        return self._calibration.name

    @property
    def basis_from(self) -> str:
        return self._basis_source.name

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None:
            pending.cancel()
        self._pending: DeferredRefit | None = None
        self._replaced: list | None = None  # what the last install replaced, until freed
        self.measured.zero_()
        self.values = torch.zeros(
            self.n_pixels, self.n_blocks, self.block_features, dtype=self.dtype, device=self.device
        )
        # Sum of squares of every measured block, kept as blocks arrive (for pixel_energy).
        self._measured_energy = torch.zeros(
            self.n_pixels, self.n_blocks, dtype=torch.float64, device=self.device
        )
        self.basis: SpectralBasis | None = None
        self.spatial: SpatialGP | TiledSpatialGP | InverseDistanceCoefficients | None = None
        self._basis_version = 0
        self._n_at_refit = 0
        #: What changed since a scorer last looked (:mod:`reconstruct.scoring`).
        self.changes = ChangeLog()
        self.hyper = GPHyperparameters(kernel=self.kernel)
        self._fitted_hyper: GPHyperparameters | None = None  # warm start of the next fit
        #: The prediction errors the reported variance is calibrated on (``error_calibration``).
        self.calibration = self._calibration.new()
        self._calibrated_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def _make_spatial(self, k: int) -> SpatialGP | TiledSpatialGP | InverseDistanceCoefficients:
        return make_spatial_gp(
            self.spatial_shape,
            k,
            self.hyper,
            max_exact_pixels=self.max_exact_pixels,
            device=self.device,
        )

    def add(self, pixel: int, block: int, values: np.ndarray | torch.Tensor) -> None:
        vals = self._check_measurement(pixel, block, values)
        p, b = int(pixel), int(block)
        self._record_prediction(p, [(b, vals)])
        self._store(p, b, vals)
        if self.basis is None:
            if int(self.measured.all(1).sum()) >= self.min_full_pixels:
                self.refit()
            return
        self._update_model(p, [(b, vals.to(self.device))])

    def add_many(
        self,
        pixels: Sequence[int],
        blocks: Sequence[int],
        values: Sequence[np.ndarray] | np.ndarray,
    ) -> None:
        """Add several measurements; all blocks of one pixel enter the GP as one observation
        (a full spectrum given block by block costs one GP update, not ``n_blocks``).

        Every measurement is validated before any is stored, so bad input changes nothing."""
        checked = []
        seen: set[tuple[int, int]] = set()
        for p, b, v in zip(pixels, blocks, values, strict=True):
            key = (int(p), int(b))
            if key in seen:
                raise ValueError(f"pixel {key[0]} block {key[1]} appears twice in one batch")
            seen.add(key)
            checked.append((key, self._check_measurement(key[0], key[1], v)))
        n_after = self.n_measured + len(checked)
        pending = self._pending
        if (
            self.basis is None
            or n_after >= self.refit_growth * self._n_at_refit
            or (pending is not None and n_after >= pending.install_at)
        ):  # a refit starts or ends inside the batch: one at a time, so it does so on time
            for (p, b), vals in checked:
                self.add(p, b, vals)
            return
        by_pixel: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for (p, b), vals in checked:
            by_pixel.setdefault(p, []).append((b, vals.to(self.device)))
        for p, items in by_pixel.items():  # each predicted as it stood before the batch
            self._record_prediction(p, items)
        for (p, b), vals in checked:
            self._store(p, b, vals)
        for p, items in by_pixel.items():
            self._update_model(p, items)

    def _record_prediction(self, p: int, items: list[tuple[int, torch.Tensor]]) -> None:
        """With ``error_calibration="online"``: note how wrong the model was about blocks
        ``(block, values)`` of pixel ``p`` that are about to be stored, against the variance it
        stated for them (nothing before the first basis: there is no model to judge)."""
        calibration = self.calibration
        if calibration is None or self.basis is None:
            return
        pixel = torch.tensor([p], device=self.device)
        predicted = self._model_blocks(pixel)[0]
        variance = self._model_variance(pixel)[0]
        energy = float(self._pixel_energy(pixel)[0])
        partial = bool(self.measured[p].any())
        for b, vals in items:
            error = float((vals.to(self.device, torch.float64) - predicted[b]).square().mean())
            calibration.record(partial, float(variance[b]), energy, error)

    def _store(self, p: int, b: int, vals: torch.Tensor) -> None:
        """Keep one validated measurement: its values, mask and energy, and log it with the
        pixel's coefficients as they stand (where reading them costs nothing)."""
        stored = vals.to(device=self.device, dtype=self.dtype)
        self.values[p, b] = stored
        self._measured_energy[p, b] = stored.double().square().sum()
        self.measured[p, b] = True
        coef = None
        if self.basis is not None and not getattr(self.spatial, "lazy_mean", False):
            coef = self.coefficients()[p].clone()
        self.changes.stored(p, b, coef)

    def _refit_due(self) -> bool:
        return self.n_measured >= self.refit_growth * self._n_at_refit

    def _update_model(self, p: int, items: list[tuple[int, torch.Tensor]]) -> None:
        """After pixel ``p``'s blocks ``items`` were stored: install a pending refit when its
        measurement count is reached (or the next refit is due), else hand the blocks to it;
        then update the model in use incrementally with them, and start a refit when one is
        due. A blocking refit replaces the update (it holds these blocks). The installed model
        holds every measurement before this one (its thread had a step's time for the last),
        and takes this one here like any other (:class:`~reconstruct.refit.DeferredRefit`)."""
        pending = self._pending
        if pending is not None:
            if self.n_measured >= pending.install_at or self._refit_due():
                self._install_refit()
            else:
                pending.push(p, items)
        if self._refit_due() and not self._refits.deferred:
            self.refit()
            return
        self._add_to_spatial(p, items)
        if self._refit_due():
            self._start_refit()  # the snapshot holds these blocks too

    def _add_to_spatial(self, p: int, items: list[tuple[int, torch.Tensor]]) -> None:
        """Incremental update of pixel ``p`` after blocks ``(block, values)`` arrived."""
        observation = self._pixel_observation(p, items)
        if observation is None:
            return
        assert self.spatial is not None
        self.spatial.add(p, *observation)
        # SpatialGP reports its rank-one change; tiles and other models do not (recompute).
        update = getattr(self.spatial, "last_update", None)
        if update is None:
            self.changes.replaced()
        else:
            self.changes.moved(*update)

    def _add_batch_to_spatial(
        self, arrivals: list[tuple[int, list[tuple[int, torch.Tensor]]]]
    ) -> None:
        """Arrivals ``(pixel, [(block, values), ...])``, in order, in one spatial update: each
        pixel's blocks are combined into one observation (exact for the GP, as in
        :meth:`add_many`) and every pixel enters at once (:meth:`SpatialGP.add_many`: one pass
        over the factor). How a deferred refit catches up
        (:class:`~reconstruct.refit.DeferredRefit`)."""
        by_pixel: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for p, items in arrivals:
            for b, _ in items:
                self.measured[p, b] = True
            by_pixel.setdefault(p, []).extend(items)
        pixels, coefs, noises = [], [], []
        for p, items in by_pixel.items():
            observation = self._pixel_observation(p, items)
            if observation is not None:
                pixels.append(p)
                coefs.append(observation[0])
                noises.append(observation[1])
        if pixels:
            assert self.spatial is not None
            self.spatial.add_many(pixels, torch.stack(coefs), torch.tensor(noises))
            self.changes.replaced()

    def _pixel_observation(
        self, p: int, items: list[tuple[int, torch.Tensor]]
    ) -> tuple[torch.Tensor, float] | None:
        """Fold blocks ``(block, values)`` of pixel ``p`` into its coefficient estimate; return
        what the spatial model is to be given for it (None: nothing new)."""
        basis = self.basis
        assert basis is not None
        for b, vals in items:
            self._gram[p] += self._block_gram[b]
            self._proj[p] += basis.components[:, b] @ (vals - basis.mean[b])
        old_c, old_noise = self._obs_coef[p].clone(), float(self._obs_noise[p])
        new_c, new_noise = self._coefficients(self._gram[p : p + 1], self._proj[p : p + 1])
        new_noise = torch.maximum(new_noise, self._partial_noise(self.measured[p : p + 1]))
        self._obs_coef[p], self._obs_noise[p] = new_c[0], new_noise[0]
        return self._observation(new_c[0], float(new_noise[0]), old_c, old_noise)

    def _observation(
        self, coef: torch.Tensor, noise: float, old_coef: torch.Tensor, old_noise: float
    ) -> tuple[torch.Tensor, float] | None:
        """What the spatial model is given for a pixel whose estimate ``(coef, noise)``
        replaces ``(old_coef, old_noise)`` (``old_noise`` infinite: none yet); None when it
        carries no new information. For the GP this is one pseudo-observation with the
        gained precision: exact for a scalar-noise GP."""
        if not np.isfinite(old_noise):
            return coef, noise
        gain = 1.0 / noise - 1.0 / old_noise
        if gain <= 1.0 / _HUGE_NOISE:
            return None  # the new block adds no information about the coefficients
        pseudo_noise = 1.0 / gain
        return pseudo_noise * (coef / noise - old_coef / old_noise), pseudo_noise

    def _coefficients(
        self, gram: torch.Tensor, proj: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares coefficients ``(m, k)`` and relative noise ``(m,)`` from accumulated
        Gram matrices ``(m, k, k)`` and projections ``(m, k)``."""
        basis = self.basis
        assert basis is not None
        # MAP ridge sigma_e^2 / lambda_i: shrinks only directions the blocks leave undetermined,
        # and vanishes for an exactly low-rank field (exact recovery).
        ridge = (basis.residual / basis.variances.clamp_min(1e-300)).clamp(_MIN_RIDGE, _MAX_RIDGE)
        inv = torch.linalg.inv(gram + torch.diag(ridge))
        coef = (inv @ proj.unsqueeze(-1)).squeeze(-1)
        trace = torch.diagonal(inv, dim1=-2, dim2=-1).sum(-1)
        noise = basis.residual * trace / self._total_variance
        return coef, noise.clamp(max=_HUGE_NOISE)

    def _partial_noise(self, measured_rows: torch.Tensor) -> torch.Tensor:
        """Relative noise ``(m,)`` of coefficients fitted from partial spectra, from the
        cross-validated errors: the error of predicting the unmeasured blocks from the best
        measured block, beyond what no coefficient can predict, over the prior variance.
        Zero for fully measured pixels (their coefficients are projections, whose noise
        :meth:`_coefficients` gives). Without it a single block's coefficients count as nearly
        exact, and one badly determined pixel pulls its neighbours off (R^2 fell by 0.25 after
        one measurement on a 30 x 30 twin)."""
        basis = self.basis
        assert basis is not None
        rows = measured_rows.to(self.device)
        excess = (self._single_block_error - self._unexplained[None]).clamp_min(0.0)
        cost = (~rows).to(torch.float64) @ excess.T  # (m, from-block): error left per source
        cost = torch.where(rows, cost, torch.inf).amin(1)
        cost = torch.where(torch.isfinite(cost), cost, 0.0)
        return cost * self.block_features / self._total_variance

    # ------------------------------------------------------------------ refit
    def refit(self) -> None:
        """Refit now on every measurement so far, in either ``refit_mode`` (a pending deferred
        refit is dropped). See :meth:`_refit`; runs single-threaded (small factorisations, see
        :func:`~reconstruct.gp.single_thread`)."""
        self._drop_pending()
        self._replaced = None
        with single_thread():
            self._refit()

    def _start_refit(self) -> None:
        """A deferred refit is due: start it from a snapshot."""
        snapshot = copy.copy(self)  # shares the measured values: a stored block never changes
        snapshot.measured = self.measured.clone()
        snapshot.spatial = None  # the refit builds its own; this one stays in use meanwhile
        snapshot.changes = ChangeLog()  # nobody scores the snapshot
        snapshot._pending = None
        snapshot._replaced = None
        install_at = self.n_measured + self._refits.install_lag(self.n_measured)
        self._pending = DeferredRefit(snapshot, install_at, release=self._replaced)
        self._replaced = None
        self._n_at_refit = self.n_measured

    def _install_refit(self) -> None:
        """Replace the model by the pending refit's, waiting for it if it is not done. The
        replaced state is kept until the next refit's thread frees it
        (:class:`~reconstruct.refit.DeferredRefit`: freeing it here, or on a thread at once,
        made the install step slower)."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        model = pending.finish()
        replaced = []
        for name in _REFIT_STATE:
            if name in vars(model):  # _pattern_bits exists only with a pattern table
                replaced.append(vars(self).get(name))
                setattr(self, name, getattr(model, name))
        self._replaced = replaced
        self.changes.replaced()

    def __getstate__(self) -> dict:
        state = dict(vars(self))
        state["_replaced"] = None  # replaced state awaiting its release: not copied
        return state

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _refit(self) -> None:
        """Refit basis, per-pixel coefficients, GP hyperparameters, and rebuild the GP.

        Basis training spectra: fully measured pixels only, a seeded subsample of at most
        ``max_basis_pixels``. Partially measured pixels completed by the current estimate were
        tried and dropped: the completion carries the current basis' errors into the next
        basis, which then grows spurious components (an exactly rank-3 field ended with k = 4
        and visible errors, see ``tests/test_lowrank.py``)."""
        full = torch.nonzero(self.measured.all(1)).reshape(-1)
        if full.numel() < self.min_full_pixels:
            return
        rng = np.random.default_rng(self.seed + self._basis_version)
        train = full
        if train.numel() > self.max_basis_pixels:
            pick = np.sort(rng.choice(train.numel(), self.max_basis_pixels, replace=False))
            train = train[torch.as_tensor(pick)]
        spectra = self.values[train.to(self.device)].to(torch.float64)
        self._basis_version += 1
        self.basis = fit_basis(spectra, self.explained, self.max_components, self._basis_version)
        self.basis = self._basis_source.refine(
            self.basis, self.values, self.measured, self.max_basis_pixels, rng
        )
        self._total_variance = float(self.basis.variances.sum().clamp_min(1e-300))
        if spectra.shape[0] >= 2 * (self.basis.k + 2):
            self._single_block_error, self._unexplained = cross_validated_errors(
                spectra, self.explained, self.max_components, seed=self.seed + self._basis_version
            )
        else:  # too few spectra to hold half out: the in-sample residual is all there is
            self._single_block_error = torch.full(
                (self.n_blocks, self.n_blocks), self.basis.residual, dtype=torch.float64
            ).to(self.device)
            self._unexplained = torch.full(
                (self.n_blocks,), self.basis.residual, dtype=torch.float64
            ).to(self.device)
        # What the uncertainty reports; the fit's weights above stay as they are.
        self._reported_single_block_error, self._reported_unexplained = (
            self._reported_errors.reported(
                (self._single_block_error, self._unexplained),
                spectra,
                self.basis.k,
                self.explained,
                self.max_components,
                seed=self.seed + self._basis_version,
            )
        )
        basis = self.basis
        k = basis.k
        flat_b = basis.components.permute(1, 0, 2)  # (nb, k, F_b)
        self._block_gram = flat_b @ flat_b.transpose(1, 2)  # (nb, k, k)
        mask = self.measured.to(self.device, torch.float64)
        self._gram = (mask @ self._block_gram.reshape(self.n_blocks, -1)).reshape(-1, k, k)
        # Projections of the centred measured blocks, sum_b B_b (y_b - mu_b) over measured b,
        # block by block over the pixels that measured it: only measured blocks are read (a
        # deferred refit runs while other blocks are being written), and no centred copy of
        # the tensor is formed.
        observed = torch.nonzero(self.measured.any(1)).reshape(-1).to(self.device)
        mean_proj = torch.einsum("bf,kbf->bk", basis.mean, basis.components)  # (nb, k)
        self._mean_proj = mean_proj
        self._proj = torch.zeros(self.n_pixels, k, dtype=torch.float64, device=self.device)
        for b in range(self.n_blocks):
            rows = torch.nonzero(self.measured[:, b]).reshape(-1).to(self.device)
            raw = self.values[rows, b].to(torch.float64)
            self._proj.index_add_(0, rows, raw @ basis.components[:, b].T - mean_proj[b])
        coef, noise = self._coefficients(self._gram[observed], self._proj[observed])
        noise = torch.maximum(noise, self._partial_noise(self.measured[observed.cpu()]))
        self._obs_coef = torch.zeros(self.n_pixels, k, dtype=torch.float64, device=self.device)
        self._obs_noise = torch.full(
            (self.n_pixels,), np.inf, dtype=torch.float64, device=self.device
        )
        self._obs_coef[observed], self._obs_noise[observed] = coef, noise
        coords = grid_coords(self.spatial_shape)[observed.cpu()]
        if observed.numel() >= 3:
            self.hyper = self._fit_hyper(coords, coef, noise)
            # A fit on enough points is a good start for the next one (after more data); the
            # first fits, on a handful of pixels, are not.
            informed = observed.numel() >= self.max_fit_points // 2
            self._fitted_hyper = self.hyper if informed else None
        if self.spatial is None or self.spatial.n_outputs != k:
            self.spatial = self._make_spatial(k)
        if isinstance(self.spatial, SpatialGP):
            capacity = observed.numel() + self._measurements_until_replaced()
            self.spatial.rebuild(observed, coef, noise, hyper=self.hyper, capacity=capacity)
        else:
            self.spatial.rebuild(observed, coef, noise, hyper=self.hyper)
        self._cache_block_errors()
        self._n_at_refit = self.n_measured
        self.changes.replaced()

    def _measurements_until_replaced(self) -> int:
        """At most how many measurements a model refitted now takes before a refit replaces
        it: until the next refit is due, and with deferred refits until it is installed. Each
        adds at most one GP observation; the GP keeps room for them
        (:meth:`SpatialGP.rebuild`)."""
        total = self.n_pixels * self.n_blocks
        last = math.ceil(min(self.refit_growth * self.n_measured, total))  # as _refit_due
        last += self._refits.install_lag(last)  # as _start_refit
        return max(0, min(last, total) - self.n_measured)

    def _fit_hyper(
        self, coords: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
    ) -> GPHyperparameters:
        return fit_hyperparameters(
            coords,
            coef.cpu(),
            noise.cpu().clamp(max=1e6),
            kernel=self.kernel,
            max_points=self.max_fit_points,
            seed=self.seed,
            start=self._fitted_hyper,
        )

    def _model_blocks(self, pixels: torch.Tensor | slice) -> torch.Tensor:
        """``mu + c B`` at ``pixels``, ``(m, n_blocks, F_b)`` float64."""
        basis = self.basis
        assert basis is not None and self.spatial is not None
        coef = self.coefficients()[pixels]
        flat = coef @ basis.components.reshape(basis.k, -1)
        return flat.reshape(-1, self.n_blocks, self.block_features) + basis.mean

    # ------------------------------------------------------------------ outputs
    def coefficients(self) -> torch.Tensor:
        """``(P, k)`` spatial-model coefficients (posterior mean for the GP)."""
        assert self.spatial is not None
        return self.spatial.mean

    def pending_basis(self) -> tuple[SpectralBasis, torch.Tensor] | None:
        """The basis and block Gram matrices a deferred refit has fitted and will install, once
        its thread has fitted them (None otherwise): a scorer may prepare its terms for them
        meanwhile (:class:`~reconstruct.scoring.ReferenceScorer`)."""
        pending = self._pending
        if pending is None or not pending.refitted:
            return None
        return pending.model.basis, pending.model._block_gram

    @property
    def block_gram(self) -> torch.Tensor:
        """``(n_blocks, k, k)`` the Gram matrices ``H_b = B_b B_b^T`` of the basis' blocks."""
        return self._block_gram

    def _block_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bootstrapping fallback: per-block mean ``(nb, F_b)`` and mean variance ``(nb,)``
        of the measured values."""
        mask = self.measured.to(self.device, torch.float64)[..., None]
        counts = mask.sum(0)
        vals = self.values.to(torch.float64)
        mean = (vals * mask).sum(0) / counts.clamp_min(1.0)
        var = (((vals - mean) ** 2) * mask).sum(0) / (counts - 1).clamp_min(1.0)
        spread = torch.where(counts[:, 0] > 1, var.mean(-1), torch.ones_like(var[:, 0]))
        return mean, spread

    def predict_block(self, pixel: int, block: int) -> torch.Tensor:
        p, b = int(pixel), int(block)
        if self.measured[p, b]:
            return self.values[p, b]
        if self.basis is None:
            return self._block_means()[0][b].to(self.dtype)
        return self._model_blocks(torch.tensor([p], device=self.device))[0, b].to(self.dtype)

    def estimate_blocks(self) -> torch.Tensor:
        if self.basis is None:
            est = self._block_means()[0].expand(self.n_pixels, -1, -1)
        else:
            est = self._model_blocks(slice(None))
        est = est.to(self.dtype)
        return torch.where(self.measured.to(self.device)[..., None], self.values, est)

    def pixel_energy(self) -> torch.Tensor:
        """As :meth:`Reconstructor.pixel_energy`, from the coefficients: an unmeasured block
        ``mu_b + c B_b`` has ``|mu_b|^2 + 2 c . (B_b mu_b) + c^T (B_b B_b^T) c``, which costs
        ``O(P n_blocks k^2)`` instead of building the ``(P, n_blocks, F_b)`` estimate (timed
        against the generic path in ``docs/performance.md``, "The optional observation
        planes", with the command)."""
        if self.basis is None:
            return super().pixel_energy()
        return self._pixel_energy(slice(None))

    def _pixel_energy(self, pixels: torch.Tensor | slice) -> torch.Tensor:
        """:meth:`pixel_energy` at ``pixels`` (a basis exists)."""
        assert self.basis is not None
        c = self.coefficients()[pixels]  # (m, k) float64
        nb, k = self._block_gram.shape[:2]
        # c^T H_b c for every block, as one product: (m, k) x (k, nb k) (H_b symmetric).
        hc = (c @ self._block_gram.permute(1, 0, 2).reshape(k, nb * k)).view(-1, nb, k)
        quadratic = (hc * c[:, None]).sum(-1)
        model = quadratic + 2.0 * c @ self._mean_proj.T + self.basis.mean.square().sum(-1)
        measured = self.measured.to(self.device)[pixels]
        return torch.where(measured, self._measured_energy[pixels], model).sum(1)

    def uncertainty(self) -> torch.Tensor:
        """Predictive variance per (pixel, block), mean over the block's features; zero for
        measured blocks.

        - A pixel with no block measured: ``v_p * sum_i lambda_i |B_ib|^2 / F_b + u_b``, the GP
          variance projected through the block's part of the basis plus the block's
          cross-validated unexplained variance ``u_b`` (:func:`cross_validated_errors`), and at
          least the largest error of predicting the block from one other block.
        - A pixel with some blocks measured: the cross-validated error of predicting the block
          from the best of its measured blocks alone. Conservative when several blocks are
          measured; the in-sample model variance is far too small here (see
          :func:`cross_validated_errors`).

        With ``error_calibration="online"`` that variance is then calibrated on the model's
        prediction errors so far (:class:`~reconstruct.error_calibration.OnlineErrorCalibration`).
        """
        unmeasured = (~self.measured).to(self.device)
        if self.basis is None:
            spread = self._block_means()[1]
            return (spread.expand(self.n_pixels, -1) * unmeasured).to(self.dtype)
        if self.calibration is None:
            return (self._model_variance(slice(None)) * unmeasured).to(self.dtype)
        # Calibrated: kept until the next measurement or refit (an env step asks twice).
        key = (self.n_measured, self._basis_version)
        if self._calibrated_cache is None or self._calibrated_cache[0] != key:
            touched = self.measured.to(self.device).any(1, keepdim=True)
            var = self.calibration.calibrate(
                self._model_variance(slice(None)), self._pixel_energy(slice(None))[:, None], touched
            )
            self._calibrated_cache = (key, (var * unmeasured).to(self.dtype))
        return self._calibrated_cache[1].clone()

    def _model_variance(self, pixels: torch.Tensor | slice) -> torch.Tensor:
        """``(m, nb)`` float64: the model's own variance of every block of ``pixels`` as if
        unmeasured (a basis exists; see :meth:`uncertainty`)."""
        assert self.spatial is not None
        var = self.spatial.variance[pixels, None] * self._block_weight + self._reported_unexplained
        # A pixel with nothing measured is known no better than one measured at a single block.
        var = torch.maximum(var, self._reported_single_block_error.amax(0))
        measured = self.measured.to(self.device)[pixels]
        return torch.where(measured.any(1, keepdim=True), self._error_given_measured(measured), var)

    def error_given_measured(self, measured: torch.Tensor) -> torch.Tensor:
        """``(m, nb)`` the per-feature error of each block of a pixel whose measured blocks are
        the rows of ``measured`` ``(m, nb)`` bool: the cross-validated error of predicting it
        from the best measured block (0 where measured, ``inf`` for a row with none). A policy
        asks it what a measurement would teach about the rest of its pixel; before the first
        basis there is no such error, and every entry is ``inf``."""
        measured = torch.as_tensor(measured, dtype=torch.bool, device=self.device)
        if self.basis is None:
            return torch.where(measured, 0.0, torch.inf).to(torch.float64)
        return torch.where(measured, 0.0, self._error_given_measured(measured))

    def _error_given_measured(self, measured: torch.Tensor) -> torch.Tensor:
        """``(P, nb)`` cross-validated error of each block predicted from the best measured
        block of its pixel (``inf`` where none is measured). With few blocks, read from a
        table over the ``2^nb`` measured patterns made at the refit (the step's hot path)."""
        if self._pattern_error is not None:
            return self._pattern_error[measured.to(torch.long) @ self._pattern_bits]
        # Pixels share few measured patterns (read windows read prefixes of a block's curve
        # segments), so each distinct pattern is computed once: the (P, nb, nb) minimum was half
        # of a step's time with 64 units.
        nb = measured.shape[1]
        if nb <= 64:  # one int64 key per row (bit 63 wraps to the sign: still one key per row)
            bits = torch.ones(nb, dtype=torch.long, device=measured.device) << torch.arange(
                nb, device=measured.device
            )
            keys, first = torch.unique(measured.to(torch.long) @ bits, return_inverse=True)
            rows = torch.zeros(keys.numel(), dtype=torch.long, device=measured.device)
            rows[first] = torch.arange(measured.shape[0], device=measured.device)
            patterns, inverse = measured[rows], first
        else:
            patterns, inverse = torch.unique(measured, dim=0, return_inverse=True)
        errors = torch.where(
            patterns[:, :, None], self._reported_single_block_error[None], torch.inf
        ).amin(1)
        return errors[inverse]

    def _cache_block_errors(self) -> None:
        """Per-refit constants of :meth:`uncertainty`: each block's share of the coefficient
        variance, and the pattern table of :meth:`_error_given_measured`."""
        basis = self.basis
        assert basis is not None
        self._block_weight = (
            torch.einsum("k,kbf->b", basis.variances, basis.components**2) / self.block_features
        )
        self._pattern_error = None
        nb = self.n_blocks
        if nb <= 12:  # a table of 2^nb rows
            self._pattern_bits = (1 << torch.arange(nb, device=self.device)).to(torch.long)
            patterns = (torch.arange(1 << nb, device=self.device)[:, None] >> torch.arange(
                nb, device=self.device
            )) & 1
            self._pattern_error = self._error_given_measured(patterns.bool())  # via the where

    def variance_reduction(
        self, pixels: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predictive variance (squared data units, summed over every feature of every pixel)
        that measuring each block at each candidate pixel would remove, ``(m, n_blocks)``
        (all pixels when ``pixels`` is None); 0 for blocks already measured.

        The coefficients' posterior variance falls by ``S_p / (v_p + s)`` (``S_p`` the squared
        posterior covariance column of ``p``, ``s`` the noise of the block's pseudo-observation),
        scaled by the total coefficient variance; the block's own residual variance at ``p``
        is removed too. Costs O(P n m) through the GP; before the first basis: the block's
        spread of measured values times its size."""
        idx = (
            torch.arange(self.n_pixels)
            if pixels is None
            else (torch.as_tensor(pixels, dtype=torch.long).reshape(-1))
        )
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n_pixels):
            raise IndexError(f"candidate pixels out of range [0, {self.n_pixels})")
        unmeasured = (~self.measured[idx]).to(self.device, torch.float64)
        if self.basis is None:
            return self._block_means()[1] * self.block_features * unmeasured
        spatial = self.spatial
        if not hasattr(spatial, "column_square_sums"):
            raise NotImplementedError(f"{type(spatial).__name__} has no posterior covariance")
        basis = self.basis
        pix = idx.to(self.device)
        gram = self._gram[pix][:, None] + self._block_gram[None]  # (m, nb, k, k)
        _, noise_after = self._coefficients(
            gram.reshape(-1, basis.k, basis.k),
            torch.zeros(
                gram.shape[0] * self.n_blocks, basis.k, dtype=torch.float64, device=self.device
            ),
        )
        after = self.measured[idx][:, None, :] | torch.eye(self.n_blocks, dtype=torch.bool)[None]
        noise_after = torch.maximum(
            noise_after, self._partial_noise(after.reshape(-1, self.n_blocks))
        ).reshape(-1, self.n_blocks)
        old = self._obs_noise[pix][:, None]
        gain = (1.0 / noise_after - torch.where(torch.isfinite(old), 1.0 / old, 0.0)).clamp_min(
            1.0 / _HUGE_NOISE
        )
        sums = spatial.column_square_sums(pix)[:, None]
        reduction = sums / (spatial.variance[pix][:, None] + 1.0 / gain)
        # Plus the variance removed at the block itself: its own predictive variance.
        own = self.uncertainty()[idx.to(self.device)].to(torch.float64) * self.block_features
        total = reduction * float(basis.variances.sum()) + own
        return total * unmeasured

    def component_maps(self, n: int) -> torch.Tensor:
        """``(n, X, Y)`` maps of the first ``n`` coefficients (zeros beyond ``k`` or before the
        first basis)."""
        maps = torch.zeros(n, self.n_pixels, dtype=torch.float32, device=self.device)
        if self.basis is not None:
            q = min(n, self.basis.k)
            maps[:q] = self.coefficients()[:, :q].T.to(torch.float32)
        return maps.reshape(n, *self.spatial_shape)


class InverseDistanceCoefficients:
    """Cheap spatial model: inverse-distance weighting of the coefficients over the 8 nearest
    observed pixels (power 2, the ``idw`` baseline's weights); observed pixels keep their own.

    Same interface as the GP models for what :class:`LowRankGP` uses. Updates only store the
    coefficients; the map is recomputed on the next read (one k-d tree query, O(P log n)). The
    variance is a heuristic, ``1 - exp(-d / lengthscale)`` with ``d`` the distance to the
    nearest observed pixel (the observation's relative noise at ``d = 0``), for policies that
    want an uncertainty; there is no posterior covariance.

    Why not the nearest pixel's coefficients (the first version): on the 60 x 60 twin they
    gave R^2 0.19 / 0.30 at 10 / 20 % of pixels, below linear interpolation of the raw data
    (0.39 / 0.50); these weights give 0.44 / 0.57 (``benchmarks.reconstruction``).
    """

    #: The map is recomputed on the first read after a change: reading it is not free.
    lazy_mean = True

    def __init__(
        self,
        shape: tuple[int, int],
        n_outputs: int,
        lengthscale: float = 3.0,
        neighbours: int = 8,
        power: float = 2.0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self._coords = grid_coords(shape).numpy()
        self.n_pixels = self._coords.shape[0]
        self.n_outputs = n_outputs
        self.lengthscale = lengthscale
        self.neighbours, self.power = neighbours, power
        self.reset()

    def reset(self) -> None:
        self._coef = torch.zeros(
            self.n_pixels, self.n_outputs, dtype=torch.float64, device=self.device
        )
        self._noise = torch.zeros(self.n_pixels, dtype=torch.float64, device=self.device)
        self._observed = np.zeros(self.n_pixels, dtype=bool)
        self._mean = self._coef.clone()
        self._dist = torch.full((self.n_pixels,), np.inf, dtype=torch.float64, device=self.device)
        self._stale = False

    def add(self, pixel: int, y: torch.Tensor, noise: float) -> None:
        """Set pixel ``pixel``'s coefficients (replacing any earlier ones)."""
        self._coef[pixel] = torch.as_tensor(y, dtype=torch.float64, device=self.device)
        self._noise[pixel] = noise
        self._observed[pixel] = True
        self._stale = True

    def add_many(self, pixels: Sequence[int], values: torch.Tensor, noise: torch.Tensor) -> None:
        for p, y, s in zip(pixels, values, noise.tolist(), strict=True):
            self.add(int(p), y, s)

    def rebuild(
        self,
        pixels: torch.Tensor,
        values: torch.Tensor,
        noise: torch.Tensor,
        hyper: GPHyperparameters | None = None,
    ) -> None:
        self.reset()
        if hyper is not None:
            self.lengthscale = hyper.lengthscale
        idx = torch.as_tensor(pixels, dtype=torch.long).reshape(-1)
        self._coef[idx] = torch.as_tensor(values, dtype=torch.float64).to(self.device)
        self._noise[idx] = torch.as_tensor(noise, dtype=torch.float64).to(self.device)
        self._observed[idx.numpy()] = True
        self._stale = True

    def _refresh(self) -> None:
        if not self._stale:
            return
        known = np.flatnonzero(self._observed)
        weights, dist = inverse_distance_weights(
            self._coords[known], self._coords, self.neighbours, self.power
        )
        coef = self._coef[torch.as_tensor(known, device=self.device)].cpu().numpy()
        self._mean = torch.as_tensor(weights @ coef, device=self.device)
        self._dist = torch.as_tensor(dist, device=self.device)
        self._stale = False

    @property
    def mean(self) -> torch.Tensor:
        self._refresh()
        return self._mean

    @property
    def variance(self) -> torch.Tensor:
        self._refresh()
        far = 1.0 - torch.exp(-self._dist / self.lengthscale)
        return torch.where(self._dist == 0, self._noise / (1.0 + self._noise), far)


class LowRankCompletion(LowRankGP):
    """:class:`LowRankGP` with the coefficients at unmeasured pixels interpolated by inverse
    distance weighting (:class:`InverseDistanceCoefficients`) instead of a GP: no factor to
    update, no hyperparameter fit; pixels' own coefficients come from their measured blocks
    alone.
    ``variance_reduction`` is not available (no posterior covariance)."""

    name = "lowrank"

    def _make_spatial(self, k: int) -> InverseDistanceCoefficients:
        return InverseDistanceCoefficients(self.spatial_shape, k, device=self.device)

    def _observation(
        self, coef: torch.Tensor, noise: float, old_coef: torch.Tensor, old_noise: float
    ) -> tuple[torch.Tensor, float]:
        return coef, noise  # the model's add replaces: no pseudo-observation needed

    def _fit_hyper(
        self, coords: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
    ) -> GPHyperparameters:
        return self.hyper
