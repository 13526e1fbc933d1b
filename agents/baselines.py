"""Baseline acquisition policies: the references every learned policy is measured against.

All of them act through the same :class:`agents.policy.Policy` interface and read the env only
through its read-only view (``self.view``, :class:`envs.acquisition.view.AcquisitionView`). The
model-based ones read the reconstruction (its posterior uncertainty) and the prices of actions;
``greedy-oracle`` and ``structure-oracle`` read the ground truth (through a
:class:`envs.acquisition.view.PrivilegedView`) and are upper references only.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.policy import Policy
from envs.acquisition.surprise import SURPRISE_SIGMA, SURPRISE_WEIGHT, SurpriseTracker
from envs.acquisition.view import AcquisitionView, PrivilegedView


def serpentine_pixels(grid_shape: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices in serpentine (boustrophedon) order: rows alternate direction, so the
    tip always moves to a neighbouring pixel."""
    nx, ny = grid_shape
    order = np.arange(nx * ny).reshape(nx, ny)
    order[1::2] = order[1::2, ::-1]
    return order.reshape(-1)


def staggered_blocks(pixels: np.ndarray, n_cols: int, n_blocks: int) -> np.ndarray:
    """``(len(pixels), n_blocks)``: column ``q`` is the block ``(i + 2 j + q) mod n_blocks``
    of pixel ``(i, j)``. Every row is a permutation of the blocks, and for ``n_blocks >= 3``
    the first ``q`` columns of 4-neighbouring pixels never share a block at the same column,
    so a design that measures each pixel's first few columns shows every voltage in every
    small neighbourhood."""
    rows, cols = np.divmod(np.asarray(pixels), n_cols)
    return (rows[:, None] + 2 * cols[:, None] + np.arange(n_blocks)[None, :]) % n_blocks


def whole_curve_actions(view: AcquisitionView, cells: np.ndarray) -> np.ndarray:
    """Actions that read (pixel, block) cells ``pixel * n_blocks + block`` in full (the last read
    window; the cells themselves without windows)."""
    return np.asarray(cells) * view.n_windows + view.n_windows - 1


def _masked_argmax(scores: np.ndarray, action_mask: np.ndarray) -> int:
    """Index of the largest score among valid actions (ties: lowest index, so runs repeat)."""
    scores = np.where(action_mask, np.nan_to_num(scores, nan=-np.inf, posinf=np.inf), -np.inf)
    best = int(np.argmax(scores))
    if not action_mask[best]:
        raise RuntimeError("no valid action left")
    return best


def block_errors(view: PrivilegedView) -> np.ndarray:
    """Privileged: the squared reconstruction error against the env's reference data that each
    action would remove, summed over the entries it reads that its block does not have yet
    (lost entries ignored), flat in action order."""
    reference = view.reference_blocks()
    estimate = view.model.estimate_blocks()
    per_unit = np.nansum((reference - estimate) ** 2, axis=2)
    return view.window_gain(per_unit) * view.n_segments


def first_new_unit(view: AcquisitionView, action: int) -> tuple[int, int]:
    """``(pixel, unit)``: the pixel of ``action`` and the first reconstructor unit it adds (its
    block, without read windows)."""
    pixel, block, window = view.decode_action(action)
    return pixel, int(view.new_units(pixel, block, window)[0])


class RandomPolicy(Policy):
    """Uniformly random among the blocks not yet measured."""

    name = "random"

    def act(self, observation, action_mask):
        return int(self.rng.choice(np.flatnonzero(action_mask)))


class OrderedPolicy(Policy):
    """Follows a fixed action order: each step the first action of the order not taken yet
    that the mask allows. An action the mask forbids for now (under the program rule
    ``"sequence"``, a pixel's later block before its earlier ones) keeps its place and is taken
    once it is allowed; where the mask only ever closes actions (``"free"``), this is the
    order with the taken and closed actions skipped."""

    def action_order(self) -> np.ndarray:
        raise NotImplementedError

    def reset(self, env, seed=None):
        super().reset(env, seed)
        self._order = self.action_order()
        self._taken = np.zeros(len(self._order), dtype=bool)
        self._cursor = 0  # every position before it is taken (or closed for good)

    def act(self, observation, action_mask):
        mask = np.asarray(action_mask, dtype=bool)
        rest = self._order[self._cursor :]
        open_ = mask[rest] & ~self._taken[self._cursor :]
        if not open_.any():
            return _masked_argmax(np.zeros(len(mask)), mask)
        position = self._cursor + int(np.argmax(open_))
        self._taken[position] = True
        while self._cursor < len(self._order) and self._taken[self._cursor]:
            self._cursor += 1
        return int(self._order[position])


class RasterPolicy(OrderedPolicy):
    """Serpentine scan measuring every block of a pixel before moving on: the full-measurement
    reference whose time defines 100 %."""

    name = "raster"

    def action_order(self) -> np.ndarray:
        nb = self.view.n_blocks
        pixels = serpentine_pixels(self.view.grid_shape)
        cells = (pixels[:, None] * nb + np.arange(nb)[None, :]).reshape(-1)
        return whole_curve_actions(self.view, cells)


class StaticSubsamplePolicy(OrderedPolicy):
    """A fixed design chosen without looking at the data.

    Serpentine passes over the whole grid; pass ``q`` measures at pixel ``(i, j)`` the block
    ``(i + 2 j + q) mod n_blocks``. After one pass every pixel has one block, neighbouring pixels
    holding different blocks, so the low-rank completion sees every voltage in every
    neighbourhood; later passes fill in further blocks. Together with the environment's initial
    grid of fully measured pixels (which gives the spectral basis) this is the classic
    "sparse full spectra + everywhere a few voltages" design.
    """

    name = "static-subsample"

    def action_order(self) -> np.ndarray:
        nb = self.view.n_blocks
        pixels = serpentine_pixels(self.view.grid_shape)
        cells = pixels[:, None] * nb + staggered_blocks(pixels, self.view.grid_shape[1], nb)
        # pass q: column q of every pixel, in serpentine order
        return whole_curve_actions(self.view, cells.T.reshape(-1))


class UncertaintyPolicy(Policy):
    """Measures the block with the largest posterior variance ("uncertainty exploration").

    With read windows, an action's score is the variance it removes from the reads it takes and
    from the rest of those curves
    (:meth:`envs.acquisition.view.AcquisitionView.window_values`)."""

    name = "gp-uncertainty"

    def scores(self) -> np.ndarray:
        """Posterior variance each action would remove (per feature of a whole block)."""
        uncertainty = self.view.model.uncertainty().detach().cpu().numpy()
        return self.view.window_values(uncertainty)

    def act(self, observation, action_mask):
        return _masked_argmax(self.scores(), action_mask)


class UncertaintyPerSecondPolicy(UncertaintyPolicy):
    """Posterior variance divided by the block's seconds, tip travel included (cost-aware)."""

    name = "gp-uncertainty-per-second"

    def scores(self) -> np.ndarray:
        return super().scores() / self.view.action_seconds()


class SurprisePerSecondPolicy(UncertaintyPerSecondPolicy):
    """``gp-uncertainty-per-second`` that also goes where the model has been wrong.

    Before each measurement the policy notes the model's prediction of the block and its
    predictive variance; once the block is measured, the log ratio of the mean squared
    prediction error to that variance ("surprise": 0 when the model is as wrong as it expected,
    positive where it was more wrong) is recorded at the pixel. A Gaussian-weighted average of
    those log ratios around each pixel (``sigma`` pixels) scales the cost-aware uncertainty score
    by ``exp(weight * local surprise)``. The bookkeeping is
    :class:`envs.acquisition.surprise.SurpriseTracker`,
    which the acquisition env's surprise plane and the PPO policy's prior share. Only what the
    instrument has measured and what the model predicted enters: no ground truth.

    Why: the uncertainty planes say how far a pixel is from measurements, not where the
    reconstruction is actually wrong, which is what the privileged oracle exploits. The
    measured effect of the surprise weight is in ``docs/results.md``.
    """

    name = "gp-surprise-per-second"

    @classmethod
    def from_argument(cls, argument: str | None) -> Policy:
        """``NAME`` or ``NAME:WEIGHT`` (the weight of the local surprise)."""
        return cls() if argument is None else cls(float(argument))

    def __init__(self, weight: float = SURPRISE_WEIGHT, sigma: float = SURPRISE_SIGMA) -> None:
        super().__init__()
        if not weight >= 0 or not sigma > 0:
            raise ValueError(f"need weight >= 0 and sigma > 0, got {weight} and {sigma}")
        self.weight, self.sigma = float(weight), float(sigma)

    def reset(self, env, seed=None):
        super().reset(env, seed)
        self.tracker = SurpriseTracker(self.view.grid_shape, self.sigma)

    def local_surprise(self) -> np.ndarray:
        """``(P,)`` Gaussian-weighted mean log surprise around each pixel (0 with no data)."""
        return self.tracker.local_surprise()

    def pixel_factor(self) -> np.ndarray:
        """``(P,)`` factor on every block's score of a pixel: ``exp(weight * local surprise)``."""
        return np.exp(self.weight * self.local_surprise())

    def act(self, observation, action_mask):
        model = self.view.model
        self.tracker.record(model)  # the block chosen last time is measured by now
        uncertainty = model.uncertainty().detach().cpu().numpy()
        scores = self.view.window_values(uncertainty) / self.view.action_seconds()
        scores = scores * np.repeat(self.pixel_factor(), self.view.n_blocks * self.view.n_windows)
        action = _masked_argmax(scores, action_mask)
        pixel, unit = first_new_unit(self.view, action)
        variance = float(uncertainty[pixel, unit])
        self.tracker.expect(model, pixel, unit, variance, self.surprise_covariate(pixel))
        return action

    def surprise_covariate(self, pixel: int) -> float | None:
        """A covariate of the chosen pixel for the tracker to relate to its surprise (none)."""
        return None


class EnergySurprisePerSecondPolicy(SurprisePerSecondPolicy):
    """``gp-surprise-per-second`` that also weighs each pixel by how strongly it responds.

    The score is further multiplied by the pixel's estimated signal energy (the sum of squares
    of its reconstructed spectrum, :func:`envs.acquisition.energy.pixel_energy`), so that it
    estimates the block's expected squared error per second: posterior variance (where the data are
    far) times the energy (how large the response, and with it the error, is there) times the
    surprise factor (where the model has been wrong), over the block's seconds.

    Why: the posterior variance of a stationary GP does not see the response's amplitude, while
    the twin's pixel-scale disorder scales a pixel's whole spectrum, so the reconstruction is
    most wrong where the response is strong. It is a twin-specific signal: where weak pixels are
    not where the error is small (as on the real BE-PFM file) it misleads; the calibrated
    variant below fits how much the energy matters. Measurements: ``docs/results.md``.
    """

    name = "gp-energy-surprise-per-second"

    def energy_exponent(self) -> float:
        """The power of the pixel energy in the score: 1 (the error scales with the energy)."""
        return 1.0

    def pixel_factor(self) -> np.ndarray:
        from envs.acquisition.energy import pixel_energy, relative_log_energy

        # Energy over the largest (floored as the PPO prior's plane is): the same argmax as the
        # energy itself, and the same scores as a score-map policy started from this heuristic.
        self._log_energy = relative_log_energy(pixel_energy(self.view.model))
        return super().pixel_factor() * np.exp(self.energy_exponent() * self._log_energy)

    def surprise_covariate(self, pixel: int) -> float:
        """The pixel's relative log energy when it was chosen."""
        return float(self._log_energy[pixel])


class CalibratedEnergySurprisePolicy(EnergySurprisePerSecondPolicy):
    """``gp-energy-surprise-per-second`` with the energy's power fitted to the sample as it is
    measured.

    Whether a strongly responding pixel is also a badly predicted one depends on the sample: on
    the twin it is (the measured blocks' log surprise rises with their pixel's log energy with
    slope 1.2-1.9 on five 16 x 16 seeds), on the real BE-PFM file it is not (slope -0.12;
    ``python -m studies.energy_power`` measures both, ``models/README.md``). So the score's power of
    the energy is that slope, fitted by least squares over the episode's own measurements,
    shrunk towards 0 while they are few and clipped to [0, 1]
    (:func:`envs.acquisition.energy.energy_exponent`):
    the policy starts as ``gp-surprise-per-second`` and becomes ``gp-energy-surprise-per-second``
    where the data show that the error follows the energy.
    """

    name = "gp-calibrated-energy-per-second"

    def energy_exponent(self) -> float:
        from envs.acquisition.energy import energy_exponent

        return energy_exponent(self.tracker)


class StructureOraclePolicy(Policy):
    """Privileged, twin only: knows the sample's structure but not its pixel-scale disorder.

    At reset it regenerates the episode's twin from its seed and settings with
    ``pinning_disorder=0``: the same domains, walls and smooth parameter fields, without the
    pixel-scale pinning disorder, the instrument's effects and noise. It then measures the block
    with the largest ``(squared error of the current estimate against that structure + the
    block's posterior variance x its entries) / seconds``: the greedy oracle's criterion, with
    the unknowable disorder replaced by the model's own variance. It bounds what a policy that
    infers everything spatially predictable about the sample, and nothing else, could gain; the
    gap to ``greedy-oracle`` is the part that no observation can give.
    """

    name = "structure-oracle"
    privileged = True

    def reset(self, env, seed=None):
        super().reset(env, seed)
        from envs.data.twin import TWIN_GENERATORS, TwinConfig, make_twin

        dataset = self.view.dataset
        attrs = dataset.attrs
        if attrs.get("generator") not in TWIN_GENERATORS:
            raise ValueError(
                "structure-oracle needs twin data (it regenerates the twin without disorder); "
                f"this episode replays {dataset.path or 'other data'}"
            )
        config = {**attrs["config"], "pinning_disorder": 0.0}
        structure = make_twin(int(attrs["seed"]), TwinConfig(**config)).dataset.truth
        blocks = self.view.to_unit_blocks(torch.from_numpy(structure))
        self.structure_blocks = blocks.double().cpu().numpy()

    def act(self, observation, action_mask):
        model = self.view.model
        estimate = np.asarray(model.estimate_blocks(), dtype=np.float64)
        error = np.square(self.structure_blocks - estimate).sum(axis=2)
        variance = model.uncertainty().detach().double().cpu().numpy()
        expected = self.view.window_gain(error + variance * estimate.shape[2])
        return _masked_argmax(expected / self.view.action_seconds(), action_mask)


class VarianceReductionPolicy(UncertaintyPolicy):
    """Measures the block that most reduces the total (integrated) posterior variance.

    Exact integrated variance reduction costs O(P n) per candidate pixel through the GP, so it
    is evaluated for the ``candidates`` pixels with the largest pointwise variance (a candidate
    with little variance of its own removes little elsewhere). Reconstructors without a
    ``variance_reduction`` method fall back to the pointwise variance.
    """

    name = "variance-reduction"

    @classmethod
    def from_argument(cls, argument: str | None) -> Policy:
        """``variance-reduction`` or ``variance-reduction:CANDIDATES``."""
        return cls() if argument is None else cls(int(argument))

    def __init__(self, candidates: int = 64) -> None:
        super().__init__()
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.candidates = candidates

    def scores(self) -> np.ndarray:
        """With read windows, a window's reduction is the sum of its units' single-unit
        reductions: an upper bound, since the units share the pixel's coefficients."""
        pointwise = super().scores()
        model = self.view.model
        if not model.supports("variance_reduction"):
            return pointwise
        n_pixels = self.view.n_pixels
        # Candidates by the reconstruction's own variance (a lost block, which the env counts as
        # taken, still shows its variance here and keeps its pixel a candidate).
        per_pixel = model.uncertainty().detach().cpu().numpy().reshape(n_pixels, -1).max(1)
        m = min(self.candidates, per_pixel.size)
        pixels = np.sort(np.argpartition(-per_pixel, m - 1)[:m])
        reduction = np.zeros((n_pixels, self.view.n_units))
        reduction[pixels] = model.variance_reduction(pixels).detach().cpu().numpy()
        scores = np.full((n_pixels, self.view.n_blocks * self.view.n_windows), -np.inf)
        scores[pixels] = self.view.window_gain(reduction).reshape(n_pixels, -1)[pixels]
        return scores.reshape(-1)


class GreedyOraclePolicy(Policy):
    """Privileged upper reference: reads the true data and measures the block whose current
    reconstruction error per second (travel included) is largest, a one-step greedy lookahead that
    counts the error removed at the measured block itself (measuring a block makes its error
    zero). It ignores what the measurement teaches about neighbours, so it is a strong but not an
    optimal reference."""

    name = "greedy-oracle"
    privileged = True

    def act(self, observation, action_mask):
        return _masked_argmax(block_errors(self.view) / self.view.action_seconds(), action_mask)


def evenly_spread_pixels(grid_shape: tuple[int, int], count: int) -> np.ndarray:
    """``count`` distinct flat pixel indices spread evenly over the grid, ascending.

    Each row ``i`` gets its share of the points (``round((i + 1) c / X) - round(i c / X)``, so
    the total is exact), evenly spaced along the row and shifted by the golden ratio's
    fractional part times ``i`` of the spacing, so that successive rows do not line their
    points up in columns: a sheared lattice, like a Kronecker low-discrepancy set."""
    nx, ny = grid_shape
    if not 0 <= count <= nx * ny:
        raise ValueError(f"cannot pick {count} of {nx * ny} pixels")
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    per_row = np.diff(np.round(np.arange(nx + 1) * count / nx).astype(np.int64))
    chosen = []
    for row, n in enumerate(per_row):
        if n:
            shift = (row * golden) % 1.0
            chosen.append(row * ny + np.floor((np.arange(n) + shift) * ny / n).astype(np.int64))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


class StaticBasisPolicy(OrderedPolicy):
    """The static "spectral basis + a few voltages everywhere" design, fixed in advance.

    A fraction ``full_fraction`` of the pixels, spread evenly over the grid
    (:func:`evenly_spread_pixels`), is measured at every block: those spectra give the low-rank
    reconstructors their spectral basis. Every other pixel is measured at ``blocks_per_pixel``
    blocks, the first columns of :func:`staggered_blocks`, so that neighbouring pixels hold
    different blocks; the reconstructor's least squares on the basis gives their
    coefficients. One serpentine pass visits every pixel once and measures its design blocks
    there (no travel back). Pixels the environment's initial design already completed count as
    measured and are skipped.

    With read windows, the full pixels read whole curves and the other pixels' design blocks
    are read with ``reads`` reads per curve (default: the shortest window): the basis carries
    the relaxation, a short window pins a pixel's coefficients.

    Should the budget outlast the design, further serpentine passes add the next staggered
    block at every partly measured pixel (``static-subsample``'s later passes), so the policy
    keeps filling in blocks in the same even pattern, with the same window; after them, passes
    read the partly read blocks to the end.

    Spec: ``static-basis`` (10 % full, 1 block elsewhere), ``static-basis:FRACTION``,
    ``static-basis:FRACTION,BLOCKS`` (e.g. ``static-basis:0.05,2``) or
    ``static-basis:FRACTION,BLOCKS,READS`` (e.g. ``static-basis:0.1,2,16``).
    """

    name = "static-basis"

    @classmethod
    def from_argument(cls, argument: str | None) -> Policy:
        """``static-basis[:FRACTION[,BLOCKS[,READS]]]``."""
        if argument is None:
            return cls()
        parts = argument.split(",")
        if len(parts) > 3:
            raise ValueError(f"static-basis takes FRACTION[,BLOCKS[,READS]], got {argument!r}")
        try:
            fraction = float(parts[0])
            blocks = int(parts[1]) if len(parts) >= 2 else 1
            reads = int(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise ValueError(
                f"static-basis takes FRACTION[,BLOCKS[,READS]] (e.g. 0.1,1,16), got {argument!r}"
            ) from None
        return cls(fraction, blocks, reads)

    def __init__(
        self, full_fraction: float = 0.1, blocks_per_pixel: int = 1, reads: int | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= full_fraction <= 1.0:
            raise ValueError(f"full_fraction must be in [0, 1], got {full_fraction}")
        if blocks_per_pixel < 1:
            raise ValueError(f"blocks_per_pixel must be >= 1, got {blocks_per_pixel}")
        if reads is not None and reads < 1:
            raise ValueError(f"static-basis reads must be >= 1, got {reads}")
        self.full_fraction = float(full_fraction)
        self.blocks_per_pixel = int(blocks_per_pixel)
        self.reads = reads

    @property
    def label(self) -> str:
        """``static-basis`` with its arguments when they are not the defaults (so two designs
        can be compared in one run)."""
        if (self.full_fraction, self.blocks_per_pixel, self.reads) == (0.1, 1, None):
            return self.name
        argument = f"{self.full_fraction:g},{self.blocks_per_pixel}"
        return f"{self.name}:{argument}" + ("" if self.reads is None else f",{self.reads}")

    def partial_window(self) -> int:
        """The read window of the partly measured pixels' blocks."""
        windows = self.view.read_windows
        if self.reads is None:
            return 0
        if self.reads not in windows.reads:
            raise ValueError(
                f"static-basis reads {self.reads}: the env's read windows are {list(windows.reads)}"
            )
        return windows.reads.index(self.reads)

    def full_pixels(self) -> np.ndarray:
        """The design's fully measured pixels (flat indices, ascending)."""
        nx, ny = self.view.grid_shape
        return evenly_spread_pixels((nx, ny), int(round(self.full_fraction * nx * ny)))

    def action_order(self) -> np.ndarray:
        nb = self.view.n_blocks
        if self.blocks_per_pixel > nb:
            raise ValueError(
                f"blocks_per_pixel {self.blocks_per_pixel} exceeds the env's {nb} blocks"
            )
        pixels = serpentine_pixels(self.view.grid_shape)
        if self.view.programs == "sequence":
            # A sample with memory: a pixel's blocks can only come in pulse order.
            blocks = np.broadcast_to(np.arange(nb), (len(pixels), nb))
        else:
            blocks = staggered_blocks(pixels, self.view.grid_shape[1], nb)
        cells = pixels[:, None] * nb + blocks
        is_full = np.isin(pixels, self.full_pixels())
        n_windows = self.view.n_windows
        window = np.where(is_full, n_windows - 1, self.partial_window())[:, None]
        actions = cells * n_windows + window
        n_design = np.where(is_full, nb, self.blocks_per_pixel)
        design = actions[np.arange(nb)[None, :] < n_design[:, None]]  # pixel by pixel
        later_passes = actions[~is_full, self.blocks_per_pixel :].T.reshape(-1)
        order = [design, later_passes]
        if window.min() < n_windows - 1:  # then read the partly read blocks to the end
            order.append(whole_curve_actions(self.view, cells[~is_full].T.reshape(-1)))
        return np.concatenate(order)
