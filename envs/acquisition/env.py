"""The acquisition environment: choose (pixel, voltage block, read window) measurements against a
time budget."""

from __future__ import annotations

import time
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.acquisition.energy import energy_observation
from envs.acquisition.observation import ObservationSpec
from envs.acquisition.programs import allowed_actions, check_rule
from envs.acquisition.surprise import SurpriseTracker
from envs.acquisition.view import AcquisitionView
from envs.acquisition.windows import ReadWindows
from envs.data.dataset import DataError, Dataset
from envs.data.sources import DatasetSource
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument
from envs.instruments.memory import instrument_for, twin_of
from reconstruct.base import BlockLayout, Reconstructor, SegmentedLayout
from reconstruct.metrics import dynamics_r2
from reconstruct.scoring import ReferenceScorer

#: Rewards the environment can pay (see the class docstring).
REWARDS = ("auc", "rate")


class AcquisitionEnv(gym.Env[dict[str, np.ndarray], int]):
    """Adaptive spectroscopic acquisition: measure one pixel at one voltage block per step.

    Description
    -----------
    A scanning-probe instrument measures, at each pixel of an ``(X, Y)`` grid, the response after
    each of ``V`` voltage pulses (times e.g. 128 read-outs): a tensor ``(X, Y, V, *rest)``. The
    voltage axis is split into ``n_blocks`` blocks (:class:`reconstruct.BlockLayout`). Each step
    the agent picks one (pixel, block) to measure; the instrument returns it and charges its
    seconds from the :class:`envs.instruments.cost.CostModel` (pulses, reads, settling, tip
    travel, plus the algorithm's time); the reconstructor adds it and re-estimates the full
    tensor. The agent is paid for accuracy gained early in the time budget.

    The sample remembers its pulses. On the twin the instrument simulates every measurement
    from the state the pixel's earlier pulses left (:mod:`envs.instruments.memory`); a recorded
    file can only be replayed. Either way the env offers only the measurement programs whose
    values are the standard sequence's own (``programs="sequence"``, the default: each pixel's
    blocks in pulse order, :mod:`envs.acquisition.programs`); ``programs="free"`` with
    ``memory=False`` is the replay of a sample without memory, kept to reproduce results made
    under that assumption.

    Action Space
    ------------
    ``Discrete(P * n_blocks * n_windows)`` with ``P = X * Y``: action
    ``a = (pixel * n_blocks + block) * n_windows + window`` and ``pixel = row * Y + col``
    (:meth:`encode_action`, :meth:`decode_action`). With one read window (the default) this is
    ``pixel * n_blocks + block``. A window reads each curve of the block for its first
    ``read_windows.reads[window]`` time points (:mod:`envs.acquisition.windows`); the last window
    reads the whole curve. A longer window at a block read with a shorter one re-applies the
    pulses, is charged in full and adds the reads the block did not have. Plain Python or NumPy
    integers (also 0-d or one-element integer arrays) are accepted; anything else raises
    ``TypeError`` and an out-of-range index raises ``ValueError``. An action the program rule does
    not allow (under ``"sequence"``: any block but a pixel's next one in pulse order, and any block
    already measured; under ``"free"``: one that adds no reads) is a no-op: nothing is
    measured, the reward is ``-repeat_penalty``, ``info["repeated"]`` is True, and only the
    algorithm's per-decision time (``CostModel.algorithm_base_s``) is charged, so even a policy
    that ignores the mask runs out of budget. :meth:`action_masks` (bool, True = allowed)
    serves MaskablePPO, also through vector envs; ``info["action_mask"]`` carries the same as
    int8.

    Observation Space
    -----------------
    ``Dict`` of

    - ``"planes"``: ``Box(-1, 1, (C, X, Y), float32)``, channel-first, named and ordered by
      the env's :class:`envs.acquisition.observation.ObservationSpec` (``env.observation_spec``):
      the
      measured mask of each block, the reconstruction's leading spectral component maps, the
      predictive uncertainty of each block (with read windows: of each *unit*, a block's curve
      segment, ``unit = block * n_segments + segment``), the optional planes it names (local
      surprise, log pixel energy, calibrated energy) and the tip position (one-hot), always last.
    - ``"scalars"``: ``Box(0, 1, (3,), float32)``: fraction of the budget used (clipped at 1),
      fraction of units measured, and the recent change of the reconstruction (relative change
      of the component maps over the last step, sign-aligned, clipped at 1).

    Nothing in the observation comes from the ground truth or the unmeasured data.

    Rewards
    -------
    ``R2`` is the reconstruction's R^2 against the full reference tensor (the dataset's data,
    NaN entries ignored; privileged: known in replay and twin only), computed in block layout by
    the env's :class:`reconstruct.scoring.ReferenceScorer` (the reconstructor never holds the
    reference). With ``T`` the budget in seconds and ``t`` the seconds used after the
    step:

    - ``"auc"`` (default): ``(R2_after - R2_before) * max(T - t, 0) / T``. The gain is weighted by
      the budget still left when it arrives, so the undiscounted return equals the normalised
      area under the R^2-versus-seconds step curve above its starting value,
      ``auc_normalised(seconds, r2, T, start=R2_0) - R2_0`` (:mod:`reconstruct.metrics`). Unlike a
      sum of gain/seconds ratios, it cannot be inflated by many cheap steps.
    - ``"rate"``: ``(R2_after - R2_before) / step_seconds * pixel_seconds``, the gain per second
      in units of one full pixel's measurement time. Simple, but its sum favours many cheap
      steps; offered for comparison.

    An action the rule does not allow earns ``-repeat_penalty`` under either reward.

    Starting State
    --------------
    Each reset draws a dataset from the source (through ``self.np_random``; or
    ``options={"dataset": Dataset}``), puts the tip at pixel 0 (a live instrument's tip stays
    where it is) and, unless ``options={"initial_design": False}``, measures the
    initial design: every block of the pixels on a grid of stride ``initial_stride`` (offset by
    half a stride), in raster order. Its instrument seconds and the algorithm time of one batch
    update are charged, so the episode starts with ``seconds > 0`` and ``R2_0`` from that design.

    Episode End
    -----------
    ``terminated`` when the seconds used reach the budget, when ``stop_r2`` (if set) is reached,
    or when no measurement is left to take (every block measured; under ``"sequence"`` also
    blocks read with a short window, which may not be read again). ``truncated`` is never set by
    the environment itself, only by a ``TimeLimit`` wrapper. The final step's info holds
    ``"r2_truth"`` (R^2 against the noise-free truth) when the dataset has one, and for data
    with a time axis ``"r2_dynamics"`` and ``"r2_dynamics_truth"``, the dynamics R^2
    (:func:`reconstruct.metrics.dynamics_r2`: the relaxation part of each curve alone) against
    the data and the truth.

    Info
    ----
    ``"r2"``, ``"seconds"`` (total), ``"instrument_seconds"``, ``"algorithm_seconds"``,
    ``"n_measurements"`` (blocks measured, initial design included), ``"repeated"``,
    ``"nan_block"`` (the measured values held NaN: time charged, block marked measured, values
    not given to the reconstructor), ``"action_mask"`` (int8), ``"pixel"``, ``"block"`` and
    ``"window"`` of the step (-1 at reset). No wall-clock values unless
    ``cost={"algorithm_clock": "wall"}``.

    Arguments
    ---------
    The env receives its parts as objects; :func:`envs.acquisition.factory.make_env` builds them
    from the
    JSON-safe settings that ``gymnasium.make`` passes (:class:`envs.acquisition.factory.EnvConfig`).

    source
        A :class:`envs.data.sources.DatasetSource` to replay (one dataset per episode, drawn with
        ``self.np_random``), or a live :class:`envs.instruments.instrument.Instrument`: then there
        is no
        reference, ``info["r2"]`` is NaN and every reward is 0.
    reconstructor
        Any :class:`reconstruct.Reconstructor` built for the data's grid and spectral shape; its
        ``layout`` sets the voltage blocks. With read windows of more than one segment it is
        built on the units instead: ``read_windows.unit_layout(blocks)`` and
        ``read_windows.unit_spectral_shape(spectral_shape)``
        (:func:`envs.acquisition.factory.make_env`
        does this).
    cost_model
        The :class:`envs.instruments.cost.CostModel` that prices measurements and the algorithm's
        time.
    budget_fraction, budget_seconds
        The budget as a fraction of the full-raster time and/or in seconds (the smaller wins when
        both are given; ``budget_fraction`` defaults to 0.5 when neither is). Must be > 0 and
        larger than the initial design's cost.
    stop_r2
        Optional accuracy that ends the episode once reached.
    initial_stride
        Stride of the initial grid of fully measured pixels; 0 for no initial design.
    reward, repeat_penalty
        ``"auc"`` or ``"rate"``; penalty (>= 0) for an action the rule does not allow.
    memory
        Whether a replayed dataset is measured with its sample's memory
        (:func:`envs.instruments.memory.instrument_for`): None (default) simulates a twin's and
        replays a file; True insists (a file is an error); False replays, as a sample without
        memory. Not used with a live instrument, which is the sample itself.
    programs
        The program rule (:data:`envs.acquisition.programs.RULES`): ``"sequence"`` (default)
        or ``"free"``.
    read_windows
        The :class:`envs.acquisition.windows.ReadWindows` (or a list of reads per window); default
        one
        window, the whole curve.
    observation
        The :class:`envs.acquisition.observation.ObservationSpec` (component maps, optional
        planes); by
        default 3 component maps and no optional plane. With a ``surprise`` plane each step also
        predicts the chosen block before measuring it.
    render_mode
        ``None`` or ``"rgb_array"`` (mask, reconstructed map, uncertainty and true map).

    Attributes
    ----------
    reconstructor : reconstruct.Reconstructor
        The live reconstruction (policies may query it: uncertainty, estimates).
    layout : reconstruct.BlockLayout
        The voltage blocks.
    read_windows : envs.acquisition.windows.ReadWindows
        The read windows; ``n_windows`` of them.
    unit_layout : reconstruct.BlockLayout
        The reconstructor's layout: ``layout``, or its blocks split into curve segments.
    cost_model : envs.instruments.cost.CostModel
        Prices of this episode's measurements.
    instrument : envs.instruments.instrument.Instrument
        The episode's instrument: a replay of the dataset, or the live one.
    tip_pixel : int
        Flat index of the pixel under the tip.
    seconds_used, budget_seconds, full_raster_seconds : float
        Seconds charged so far, the episode's budget, and the full raster's instrument seconds.
    grid_shape : tuple of int
        ``(X, Y)``.
    n_blocks : int
        Blocks per pixel.
    measured : numpy.ndarray
        ``(P, n_blocks)`` bool, blocks read in full (NaN blocks included).
    segments_read : numpy.ndarray
        ``(P, n_blocks)`` int, curve segments read of each block (``n_segments`` = in full).
    dataset : envs.Dataset or None
        Privileged: the replayed data (and truth); None on a live instrument. Only an oracle
        policy may read it.
    reference_blocks : torch.Tensor or None
        Privileged: the data in block layout, ``(P, n_blocks, F_b)``, used for R^2.
    observation_spec : envs.acquisition.observation.ObservationSpec
        Names and order of the observation's planes and scalars.
    view : envs.acquisition.view.AcquisitionView
        The read-only view of the model state that policies read (no ground truth; a
        privileged policy asks it for :class:`envs.acquisition.view.PrivilegedView`).

    Held-back blocks
    ----------------
    An experiment that checks its own accuracy (the live loop's check blocks and audit rounds)
    measures blocks with :meth:`measure_held_back`: charged and counted as measured like a
    step's measurement, but kept from the reconstructor until :meth:`release_held_back` (if
    ever); :meth:`observe` then gives the observation. No step, no reward.

    Version History
    ---------------
    v0: initial version; the parts injected as objects, the observation named by a spec
    (the observation itself unchanged); read windows as an optional third action axis (with
    one window, the default, actions and observations are unchanged); held-back blocks; the
    sample's memory and the program rule (``memory=False, programs="free"`` gives the earlier
    replay's episodes).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        source: DatasetSource | Instrument,
        reconstructor: Reconstructor,
        cost_model: CostModel,
        *,
        budget_fraction: float | None = None,
        budget_seconds: float | None = None,
        stop_r2: float | None = None,
        initial_stride: int = 6,
        reward: str = "auc",
        repeat_penalty: float = 0.01,
        read_windows: ReadWindows | list[int] | None = None,
        observation: ObservationSpec | None = None,
        render_mode: str | None = None,
        memory: bool | None = None,
        programs: str = "sequence",
    ) -> None:
        super().__init__()
        self._check_arguments(
            budget_fraction,
            budget_seconds,
            stop_r2,
            initial_stride,
            reward,
            repeat_penalty,
            render_mode,
        )
        if budget_fraction is None and budget_seconds is None:
            budget_fraction = 0.5
        self.budget_fraction = None if budget_fraction is None else float(budget_fraction)
        self.budget_limit_seconds = None if budget_seconds is None else float(budget_seconds)
        self.stop_r2 = None if stop_r2 is None else float(stop_r2)
        self.initial_stride = int(initial_stride)
        self.reward_kind = reward
        self.repeat_penalty = float(repeat_penalty)
        self.render_mode = render_mode
        self.reconstructor = reconstructor
        self.unit_layout: BlockLayout = reconstructor.layout
        self.layout: BlockLayout = (
            reconstructor.layout.base
            if isinstance(reconstructor.layout, SegmentedLayout)
            else reconstructor.layout
        )
        self.n_blocks = self.layout.n_blocks
        self.programs = check_rule(programs, self.layout)
        if memory not in (None, True, False):
            raise ValueError(f"memory must be None (auto), True or False, got {memory!r}")
        self.memory = memory
        # (dataset, instrument) of the last episode: a twin with memory is rebuilt only for a
        # new dataset.
        self._instrument_of: tuple[Dataset, Instrument] | None = None
        self.device = reconstructor.device
        self.cost_model = cost_model

        if isinstance(source, DatasetSource):
            self.source: DatasetSource | None = source
            self.live_instrument: Instrument | None = None
            first = source.first()
            grid, spectral = first.spatial_shape, first.spectral_shape
            if memory is True and twin_of(first) is None:
                raise ValueError(
                    f"a recorded file has no memory to simulate ({first.source or first.path}): "
                    f"leave memory unset (a file is replayed) or set it to False"
                )
        else:
            self.source, self.live_instrument = None, source
            first = None
            grid = tuple(int(s) for s in source.grid_shape)
            spectral = tuple(int(s) for s in source.spectral_shape)
        self.grid_shape: tuple[int, int] = grid  # type: ignore[assignment]
        self.spectral_shape: tuple[int, ...] = tuple(spectral)
        self.n_pixels = self.grid_shape[0] * self.grid_shape[1]
        self._set_windows(read_windows)
        unit_spectral = self.read_windows.unit_spectral_shape(self.spectral_shape)
        if (
            tuple(reconstructor.spatial_shape) != self.grid_shape
            or tuple(reconstructor.spectral_shape) != unit_spectral
        ):
            raise ValueError(
                f"the reconstructor is built for {tuple(reconstructor.spatial_shape)} x "
                f"{tuple(reconstructor.spectral_shape)}, the data is {self.grid_shape} x "
                f"{self.spectral_shape}"
                + ("" if unit_spectral == self.spectral_shape else
                   f", which its read windows cut into units of {unit_spectral}")
            )
        self.initial_pixels = self._initial_design_pixels()
        if self.initial_pixels.size == self.n_pixels:
            raise ValueError(
                f"initial_stride={initial_stride} measures every pixel; nothing is left to choose"
            )
        self.n_units = self.unit_layout.n_blocks
        self.observation_spec = observation or ObservationSpec(self.n_units)
        if self.observation_spec.n_blocks != self.n_units:
            raise ValueError(
                f"the observation spec has {self.observation_spec.n_blocks} blocks, the layout "
                f"{self.n_units}" + ("" if self.n_units == self.n_blocks else " units")
            )
        self.n_components = self.observation_spec.n_components
        self.calibrate_energy = self.observation_spec.has("calibrated-energy")
        self.observe_energy = self.calibrate_energy or self.observation_spec.has("energy")
        self._surprise = (
            SurpriseTracker(self.grid_shape) if self.observation_spec.has("surprise") else None
        )
        self.observation_space = self.observation_spec.space(self.grid_shape)
        self.action_space = spaces.Discrete(self.n_pixels * self.n_blocks * self.n_windows)
        # Price and budget the first dataset now, so a bad configuration fails here.
        self._set_dataset(first)
        self._view = AcquisitionView(self)

    # ================================================================= configuration
    @staticmethod
    def _check_arguments(
        budget_fraction: float | None,
        budget_seconds: float | None,
        stop_r2: float | None,
        initial_stride: int,
        reward: str,
        repeat_penalty: float,
        render_mode: str | None,
    ) -> None:
        for name, value in (
            ("budget_fraction", budget_fraction),
            ("budget_seconds", budget_seconds),
        ):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name} must be a positive number of seconds/fraction, got {value}"
                )
        if stop_r2 is not None and not (np.isfinite(stop_r2) and stop_r2 <= 1):
            raise ValueError(f"stop_r2 must be a number <= 1, got {stop_r2}")
        if not isinstance(initial_stride, (int, np.integer)) or initial_stride < 0:
            raise ValueError(f"initial_stride must be an integer >= 0, got {initial_stride!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if not (np.isfinite(repeat_penalty) and repeat_penalty >= 0):
            raise ValueError(f"repeat_penalty must be >= 0, got {repeat_penalty}")
        if render_mode is not None and render_mode not in AcquisitionEnv.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {AcquisitionEnv.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )

    def _set_windows(self, read_windows: ReadWindows | list[int] | None) -> None:
        """Take the read windows and check that the reconstructor is built on their units."""
        windows = (
            read_windows
            if isinstance(read_windows, ReadWindows)
            else ReadWindows.parse(read_windows, self.spectral_shape)
        )
        n_times = self.spectral_shape[1] if len(self.spectral_shape) >= 2 else 1
        if windows.n_times != n_times:
            raise ValueError(
                f"read windows for curves of {windows.n_times} reads, the data has {n_times}"
            )
        if self.unit_layout != windows.unit_layout(self.layout):
            raise ValueError(
                f"the reconstructor's layout {self.unit_layout} does not fit read windows "
                f"{list(windows.reads)}: build it on read_windows.unit_layout(blocks) "
                f"({windows.unit_layout(self.layout)})"
            )
        self.read_windows = windows
        self.n_windows = windows.n_windows
        self.n_segments = windows.n_segments
        self._segment_reads = windows.segment_reads
        # What the instrument is asked to read: None for a whole curve, so instruments and data
        # without a time axis are asked exactly what they were asked before windows existed.
        self._instrument_reads = [None if r == n_times else r for r in windows.reads]

    def _initial_design_pixels(self) -> np.ndarray:
        """Flat indices of the initial grid, in raster order (empty for stride 0)."""
        if self.initial_stride == 0:
            return np.zeros(0, dtype=np.int64)
        offset = self.initial_stride // 2
        rows = np.arange(
            min(offset, self.grid_shape[0] - 1), self.grid_shape[0], self.initial_stride
        )
        cols = np.arange(
            min(offset, self.grid_shape[1] - 1), self.grid_shape[1], self.initial_stride
        )
        return (rows[:, None] * self.grid_shape[1] + cols[None, :]).reshape(-1)

    def _set_dataset(self, dataset: Dataset | None) -> None:
        """Make ``dataset`` the replayed data (None on a live instrument); price and budget the
        episode."""
        if dataset is not None:
            self._check_dataset(dataset)
        self.dataset = dataset
        self.full_raster_seconds = self.cost_model.full_raster_seconds(
            self.grid_shape, self.layout.n_voltages, self.layout
        )
        budgets = []
        if self.budget_fraction is not None:
            budgets.append(self.budget_fraction * self.full_raster_seconds)
        if self.budget_limit_seconds is not None:
            budgets.append(self.budget_limit_seconds)
        self.budget_seconds = float(min(budgets))
        self.pixel_seconds = self.cost_model.pixel_seconds(self.layout.n_voltages, self.n_blocks)
        initial = self._initial_design_seconds()
        if initial >= self.budget_seconds:
            raise ValueError(
                f"the budget of {self.budget_seconds:.1f} s does not cover the initial design "
                f"({initial:.1f} s for {self.initial_pixels.size} pixels): raise the budget or the "
                f"initial_stride"
            )
        smallest_block = int(self.layout.applied_counts.min())
        if self.cost_model.measurement_seconds(smallest_block, 0, 0, self.grid_shape) <= 0:
            raise ValueError("the cost model charges 0 s for a measurement; set a positive time")

    def _check_dataset(self, dataset: Any) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"options['dataset'] must be an envs.Dataset, got {type(dataset).__name__}"
            )
        if (
            dataset.spatial_shape != self.grid_shape
            or dataset.spectral_shape[0] != self.layout.n_voltages
        ):
            raise DataError(
                f"dataset of shape {dataset.shape} does not fit this environment: it needs grid "
                f"{self.grid_shape} and {self.layout.n_voltages} voltages"
            )
        if dataset.spectral_shape != self.spectral_shape:
            raise DataError(
                f"dataset spectral shape {dataset.spectral_shape} differs from the environment's "
                f"{self.spectral_shape}"
            )

    def _initial_design_seconds(self) -> float:
        """Instrument plus algorithm seconds of the initial design (as charged at reset)."""
        seconds, tip = 0.0, 0
        for pixel in self.initial_pixels:
            for block in range(self.n_blocks):
                seconds += self.cost_model.measurement_seconds(
                    self.layout.n_applied(block), tip, int(pixel), self.grid_shape
                )
                tip = int(pixel)
        n_initial = self.initial_pixels.size * self.n_blocks
        return seconds + (self.cost_model.algorithm_s(n_initial) if n_initial else 0.0)

    # ================================================================= action helpers
    def encode_action(self, pixel: int, block: int, window: int | None = None) -> int:
        """Flat action of (pixel, block, window): ``(pixel * n_blocks + block) * n_windows +
        window``; ``window`` defaults to the last, the whole curve."""
        window = self.n_windows - 1 if window is None else int(window)
        inside = 0 <= pixel < self.n_pixels and 0 <= block < self.n_blocks
        if not (inside and 0 <= window < self.n_windows):
            raise ValueError(
                f"(pixel {pixel}, block {block}, window {window}) outside "
                f"[0, {self.n_pixels}) x [0, {self.n_blocks}) x [0, {self.n_windows})"
            )
        return (int(pixel) * self.n_blocks + int(block)) * self.n_windows + window

    def decode_action(self, action: int) -> tuple[int, int, int]:
        """``(pixel, block, window)`` of a flat action."""
        cell, window = divmod(self._check_action(action), self.n_windows)
        pixel, block = divmod(cell, self.n_blocks)
        return pixel, block, window

    def _check_action(self, action: Any) -> int:
        """The action as a Python int, or a clear ``TypeError``/``ValueError``."""
        if isinstance(action, np.ndarray) and action.size == 1:
            action = (
                action.reshape(()).item() if np.issubdtype(action.dtype, np.integer) else action
            )
        if (
            isinstance(action, torch.Tensor)
            and action.numel() == 1
            and not action.is_floating_point()
        ):
            action = int(action.item())
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise TypeError(
                f"action must be an integer in [0, {self.action_space.n}), got {action!r} "
                f"({type(action).__name__})"
            )
        if not 0 <= int(action) < self.action_space.n:
            raise ValueError(f"action {action} out of range [0, {self.action_space.n})")
        return int(action)

    def action_masks(self) -> np.ndarray:
        """Bool ``(P * n_blocks * n_windows,)``: True for the actions the program rule allows
        (:mod:`envs.acquisition.programs`)."""
        return allowed_actions(
            self.programs, self.segments_read, self.read_windows.segments, self.n_segments
        ).reshape(-1)

    @property
    def exhausted(self) -> bool:
        """Whether no action the program rule allows is left: every block measured, or (under
        ``"sequence"``) every block either measured or closed by a shorter read window."""
        return not self.action_masks().any()

    def _allowed(self, pixel: int, block: int, window: int) -> bool:
        """Whether the rule allows this one action (the mask's entry, for one pixel only)."""
        row = allowed_actions(
            self.programs, self.segments_read[pixel : pixel + 1], self.read_windows.segments,
            self.n_segments,
        )
        return bool(row[0, block, window])

    @property
    def measured(self) -> np.ndarray:
        """``(P, n_blocks)`` bool: blocks read in full (NaN blocks included)."""
        return self.segments_read >= self.n_segments

    @property
    def unit_measured(self) -> np.ndarray:
        """``(P, n_units)`` bool: units (block curve segments) read, in the reconstructor's
        block order ``block * n_segments + segment``."""
        segment = np.arange(self.n_segments)
        return (segment[None, None, :] < self.segments_read[:, :, None]).reshape(self.n_pixels, -1)

    def window_gain(self, per_unit: np.ndarray | torch.Tensor) -> np.ndarray:
        """What each action adds of a per-unit quantity: ``(P * n_blocks * n_windows,)`` in
        action order, the sum of ``per_unit`` ``(P, n_units)`` over the segments the window
        would read that its block does not have yet, over ``n_segments``; 0 for actions that
        add nothing. With one segment this is ``per_unit`` itself at unmeasured blocks.

        Policies score actions with it: a mean variance per feature becomes the variance an
        action removes, per feature of a whole block; a squared error per unit, the error it
        removes (over ``n_segments``)."""
        if hasattr(per_unit, "detach"):
            per_unit = per_unit.detach().cpu().numpy()
        values = np.asarray(per_unit, dtype=np.float64).reshape(
            self.n_pixels, self.n_blocks, self.n_segments
        )
        cumulative = np.concatenate(
            [np.zeros((self.n_pixels, self.n_blocks, 1)), np.cumsum(values, axis=2)], axis=2
        )
        have = np.take_along_axis(cumulative, self.segments_read[:, :, None], axis=2)
        after = cumulative[:, :, self.read_windows.segments]  # (P, nb, n_windows)
        gain = np.where(self.action_masks().reshape(after.shape), after - have, 0.0)
        return (gain / self.n_segments).reshape(-1)

    def new_units(self, pixel: int, block: int, window: int) -> np.ndarray:
        """The reconstructor's units an action would add (empty for a repeat)."""
        have = int(self.segments_read[pixel, block])
        want = int(self.read_windows.segments[window])
        return block * self.n_segments + np.arange(have, max(want, have))

    def block_seconds(
        self, pixels: np.ndarray, block: int, window: int | None = None
    ) -> np.ndarray:
        """Seconds a measurement of ``block`` with read window ``window`` (default: the whole
        curve) at each of ``pixels`` would be charged now: travel from the current tip,
        settling, pulses and reads of the voltages the block applies (blocks of uneven layouts
        differ by one voltage), plus the model's algorithm time."""
        if not 0 <= int(block) < self.n_blocks:
            raise ValueError(f"block {block} out of range [0, {self.n_blocks})")
        window = self.n_windows - 1 if window is None else int(window)
        instrument = self.cost_model.measurement_seconds_many(
            self.layout.n_applied(int(block)),
            self.tip_pixel,
            np.asarray(pixels),
            self.grid_shape,
            self._instrument_reads[window],
        )
        return instrument + self.cost_model.algorithm_s(self.n_measurements + 1)

    def action_seconds(self) -> np.ndarray:
        """Seconds of every action from the current tip position, ``(P * n_blocks *
        n_windows,)`` in action order (travel and the model's algorithm time included)."""
        pixels = np.arange(self.n_pixels)
        table = np.empty((self.n_pixels, self.n_blocks, self.n_windows))
        for block in range(self.n_blocks):
            for window in range(self.n_windows):
                table[:, block, window] = self.block_seconds(pixels, block, window)
        return table.reshape(-1)

    @property
    def view(self) -> AcquisitionView:
        """The read-only view of the model state that policies read
        (:class:`envs.acquisition.view.AcquisitionView`), built once with the env."""
        return self._view

    @property
    def tip_pixel(self) -> int:
        """Flat index of the pixel under the tip."""
        return self.instrument.tip_pixel

    @property
    def n_measurements(self) -> int:
        """Blocks measured so far (initial design and NaN blocks included)."""
        return self._n_measured

    # ================================================================= episode
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and not isinstance(options, dict):
            raise ValueError(
                "reset options must be a dict (keys 'dataset', 'initial_design') or None, got "
                f"{type(options).__name__}"
            )
        options = dict(options or {})
        unknown = sorted(map(str, set(options) - {"dataset", "initial_design"}))
        if unknown:
            raise ValueError(
                f"unknown reset options {unknown}; the options are 'dataset' and 'initial_design'"
            )
        if not isinstance(options.get("initial_design", True), (bool, np.bool_)):
            raise ValueError(  # "no" would be truthy: only a bool says yes or no
                "reset option 'initial_design' must be True or False, got "
                f"{options['initial_design']!r}"
            )
        if self.source is not None:
            dataset = options["dataset"] if "dataset" in options else None
            if dataset is None:
                dataset = self.source.draw(self.np_random)
            self._set_dataset(dataset)
            self.instrument: Instrument = self._episode_instrument(dataset)
            self.reference_blocks: torch.Tensor | None = self._to_blocks(dataset.data)
            self._scorer: ReferenceScorer | None = ReferenceScorer(self.reference_blocks)
        else:
            if "dataset" in options:
                raise ValueError("a live instrument is its own data source: no 'dataset' option")
            self.instrument, self.reference_blocks = self.live_instrument, None
            self._scorer = None
        self.reconstructor.reset()
        self.segments_read = np.zeros((self.n_pixels, self.n_blocks), dtype=np.int64)
        self._n_measured = 0
        self._held_back: dict[tuple[int, int], np.ndarray] = {}
        # Under "sequence": the blocks measured on the way to each held-back block (released
        # with it, never with another held-back block of the pixel).
        self._way_to: dict[tuple[int, int], list[int]] = {}
        self.instrument_seconds = 0.0
        self.algorithm_seconds = 0.0
        self._pending_wall = 0.0
        if options.get("initial_design", True):
            self._measure_initial_design()
        self.r2_start = self.r2_now = self._reference_r2()
        self._previous_maps: torch.Tensor | None = None
        self._change = 0.0
        if self._surprise is not None:
            self._surprise.reset()
        observation = self._observation()
        self._last_return = time.perf_counter()
        return observation, self._info(
            -1, -1, -1, repeated=False, nan_block=False, terminated=False
        )

    def _episode_instrument(self, dataset: Dataset) -> Instrument:
        """The instrument of an episode on ``dataset``, its tip at pixel 0 and every pixel in
        its as-grown state. The twin with its memory is rebuilt only for a new dataset (it
        regenerates the sample's physics); for the same one its state is reset."""
        last = self._instrument_of
        if last is not None and last[0] is dataset and hasattr(last[1], "reset_state"):
            instrument = last[1]
            instrument.reset_state()
            instrument.tip_pixel = 0
            return instrument
        instrument = instrument_for(dataset, self.cost_model, self.memory, start_pixel=0)
        self._instrument_of = (dataset, instrument)
        return instrument

    def _reference_r2(self) -> float:
        """R^2 against the replayed data; NaN on a live instrument (no reference)."""
        if self._scorer is None:
            return float("nan")
        return self._scorer.score(self.reconstructor)

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state (what ``reset`` and ``step`` return)."""
        return self._observation(changed=True)

    def _to_blocks(self, tensor: np.ndarray) -> torch.Tensor:
        """A reference (data or truth) in the reconstructor's block layout (of units, with read
        windows). Spare slots are NaN, which scores ignore, so every voltage counts once in the
        R^2 however uneven the blocks."""
        return self.to_unit_blocks(tensor, spare=float("nan")).contiguous().to(self.device)

    def to_unit_blocks(
        self, tensor: np.ndarray | torch.Tensor, spare: float | None = None
    ) -> np.ndarray | torch.Tensor:
        """A tensor of the data's shape in the reconstructor's block layout ``(P, n_units,
        F_u)`` (:meth:`reconstruct.BlockLayout.to_blocks`; units are blocks without windows)."""
        if isinstance(tensor, np.ndarray):
            tensor = torch.from_numpy(tensor)
        if self.n_segments > 1:
            tensor = self.unit_layout.fold(tensor)
        return self.unit_layout.to_blocks(tensor, spare=spare)

    def estimate(self) -> torch.Tensor:
        """The reconstruction in the data's shape ``(X, Y, V, *rest)`` (read windows unfolded)."""
        estimate = self.reconstructor.estimate()
        return self.unit_layout.unfold(estimate) if self.n_segments > 1 else estimate

    def _unit_values(
        self, block: int, units: np.ndarray, values: np.ndarray
    ) -> tuple[list[int], list[np.ndarray]]:
        """A measurement's values ``(n_applied, reads, *more)`` cut into the given units of
        ``block`` (each ``(n_applied, segment_reads, *more)``)."""
        if self.n_segments == 1:
            return [int(block)], [values]
        length = self._segment_reads
        pieces = []
        for unit in units:
            segment = int(unit) - block * self.n_segments
            pieces.append(values[:, segment * length : (segment + 1) * length])
        return [int(u) for u in units], pieces

    def _measure_initial_design(self) -> None:
        """Measure every block of the initial pixels and add them in one batch update."""
        if self.initial_pixels.size == 0:
            return
        start = time.perf_counter()
        pixels, blocks, values = [], [], []
        every_segment = np.arange(self.n_segments)
        for pixel in self.initial_pixels:
            for block in range(self.n_blocks):
                vals, seconds = self.instrument.measure(int(pixel), self.layout.voltages(block))
                self.instrument_seconds += seconds
                self.segments_read[pixel, block] = self.n_segments
                self._n_measured += 1
                if np.isfinite(vals).all():
                    units, pieces = self._unit_values(
                        block, block * self.n_segments + every_segment, vals
                    )
                    pixels.extend([int(pixel)] * len(units))
                    blocks.extend(units)
                    values.extend(pieces)
        if pixels:
            self.reconstructor.add_many(pixels, blocks, values)  # blocks may differ in size
        if self.cost_model.algorithm_clock == "wall":
            self.algorithm_seconds += time.perf_counter() - start
        else:
            self.algorithm_seconds += self.cost_model.algorithm_s(self._n_measured)

    @property
    def seconds_used(self) -> float:
        """Instrument plus algorithm seconds charged so far in this episode."""
        return self.instrument_seconds + self.algorithm_seconds

    def step(
        self, action: Any
    ) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        pixel, block, window = self.decode_action(action)
        wall = self.cost_model.algorithm_clock == "wall"
        seconds_before = self.seconds_used
        units = self.new_units(pixel, block, window)
        repeated = units.size == 0 or not self._allowed(pixel, block, window)
        nan_block = False
        if repeated:
            self.algorithm_seconds += (
                self._wall_since_last_step() if wall else self.cost_model.algorithm_base_s
            )
            reward = -self.repeat_penalty
        else:
            self._expect_surprise(pixel, int(units[0]))
            voltages, reads = self.layout.voltages(block), self._instrument_reads[window]
            values, seconds = (
                self.instrument.measure(pixel, voltages)
                if reads is None
                else self.instrument.measure(pixel, voltages, reads)
            )
            self.instrument_seconds += seconds
            self.segments_read[pixel, block] = self.read_windows.segments[window]
            self._n_measured += 1
            unit_list, pieces = self._unit_values(block, units, values)
            nan_block = not all(bool(np.isfinite(piece).all()) for piece in pieces)
            if not nan_block:
                if len(unit_list) == 1:
                    self.reconstructor.add(pixel, unit_list[0], pieces[0])
                else:
                    self.reconstructor.add_many([pixel] * len(unit_list), unit_list, pieces)
            self._score_surprise()
            if wall:
                self.algorithm_seconds += self._wall_since_last_step()
            else:
                self.algorithm_seconds += self.cost_model.algorithm_s(self._n_measured)
            r2_before = self.r2_now
            if not nan_block:
                self.r2_now = self._reference_r2()
            gain = self.r2_now - r2_before
            if self.reference_blocks is None:
                reward = 0.0  # a live instrument: no reference, nothing to pay
            elif self.reward_kind == "auc":
                left = max(self.budget_seconds - self.seconds_used, 0.0)
                reward = gain * left / self.budget_seconds
            else:
                reward = gain / (self.seconds_used - seconds_before) * self.pixel_seconds
        mask = self.action_masks()  # once a step: the end test and the info both read it
        terminated = bool(
            self.seconds_used >= self.budget_seconds
            or not mask.any()
            or (self.stop_r2 is not None and self.r2_now >= self.stop_r2)
        )
        obs_start = time.perf_counter()
        observation = self._observation(changed=not repeated)
        info = self._info(
            pixel, block, window, repeated=repeated, nan_block=nan_block, terminated=terminated,
            mask=mask,
        )
        self._last_return = time.perf_counter()
        self._pending_wall = self._last_return - obs_start
        return observation, float(reward), terminated, False, info

    def _expect_surprise(self, pixel: int, block: int) -> None:
        """Note the prediction of the block about to be measured (the surprise plane scores it
        once the block has arrived, :meth:`_score_surprise`); nothing without that plane.
        ``block`` is the reconstructor's block: with read windows, the first unit the action
        adds."""
        if self._surprise is not None:
            # The model state is the one the last observation showed: its uncertainty is the
            # variance the prediction is judged against.
            variance = float(self._uncertainty[pixel, block])
            # With calibration, the covariate is the pixel's log energy that it showed.
            covariate = float(self._log_energy[pixel]) if self.calibrate_energy else None
            self._surprise.expect(self.reconstructor, pixel, block, variance, covariate)

    def _score_surprise(self) -> None:
        """Score the prediction noted by :meth:`_expect_surprise` against the reconstructor,
        which has the measured block now (or not, for a NaN block)."""
        if self._surprise is not None:
            self._surprise.record(self.reconstructor)

    # ================================================================= held-back blocks
    def measure_held_back(self, pixel: int, block: int) -> np.ndarray:
        """Measure every voltage of ``block`` at ``pixel`` in full, charge it as :meth:`step`
        charges a measurement, and hold its values back from the reconstructor.

        A held-back block counts as measured (masks, observation, ``n_measurements``) but the
        reconstruction does not see it until :meth:`release_held_back`; an experiment uses such
        blocks to check its own accuracy (e.g. the live loop's check blocks and audit rounds).
        Under the program rule ``"sequence"`` a block that is not the pixel's next one is
        reached the only way the sample allows: the blocks before it that the pixel lacks are
        measured first, in pulse order, and held back with it; ``release_held_back(...,
        way_only=True)`` gives them to the reconstructor while the block stays held back.
        Returns the values of ``block``, ``(n_applied, *rest)``, as the instrument gave them
        (NaN included). Call :meth:`observe` for the observation after the held-back blocks.

        Raises
        ------
        ValueError
            When ``(pixel, block)`` is out of range or already measured, or the rule cannot
            reach it (a pixel measured out of pulse order).
        """
        pixel, block = int(pixel), int(block)
        if not (0 <= pixel < self.n_pixels and 0 <= block < self.n_blocks):
            raise ValueError(
                f"(pixel {pixel}, block {block}) outside [0, {self.n_pixels}) x "
                f"[0, {self.n_blocks})"
            )
        if self.segments_read[pixel, block] > 0:
            raise ValueError(f"block {block} at pixel {pixel} is already measured")
        blocks = [block]
        if self.programs == "sequence":
            measured = self.segments_read[pixel] > 0
            first = int(measured.sum())
            if not measured[:first].all():
                raise ValueError(
                    f"pixel {pixel} was not measured in pulse order: block {block} cannot be "
                    f"reached under the program rule 'sequence'"
                )
            blocks = list(range(first, block + 1))
        for each in blocks:
            values, seconds = self.instrument.measure(pixel, self.layout.voltages(each))
            self.instrument_seconds += seconds
            self.segments_read[pixel, each] = self.n_segments
            self._n_measured += 1
            self._held_back[(pixel, each)] = values
            if self.cost_model.algorithm_clock == "wall":
                self.algorithm_seconds += self._wall_since_last_step()
                self._last_return, self._pending_wall = time.perf_counter(), 0.0
            else:
                self.algorithm_seconds += self.cost_model.algorithm_s(self._n_measured)
        if len(blocks) > 1:
            self._way_to[(pixel, block)] = blocks[:-1]
        return values

    def release_held_back(
        self, pairs: list[tuple[int, int]], way_only: bool = False
    ) -> list[tuple[int, int]]:
        """Give the held-back blocks ``pairs`` (``(pixel, block)``, in this order) to the
        reconstructor, one by one, each after the blocks measured on the way to it (under
        ``"sequence"``); with ``way_only`` only those, the blocks themselves staying held back.
        Blocks holding NaN stay out of the reconstructor, as in :meth:`step`. A pair already
        released is skipped, and no other held-back block of the pixel goes with a pair (a
        check block stays held back when a later block of its pixel is released). Nothing is
        charged here: the measurement was charged when it was held back, and with the wall
        clock the update's time falls to the next step. Returns the released blocks that held
        NaN (and so stayed out)."""
        left_out = []
        for pixel, block in pairs:
            pixel, block = int(pixel), int(block)
            for each in self._way_to.pop((pixel, block), []) + ([] if way_only else [block]):
                if (pixel, each) in self._held_back and not self._give_held_back(pixel, each):
                    left_out.append((pixel, each))
        return left_out

    def _give_held_back(self, pixel: int, block: int) -> bool:
        """One held-back block to the reconstructor; False when it holds NaN (left out)."""
        values = self._held_back.pop((pixel, block))
        units = block * self.n_segments + np.arange(self.n_segments)
        unit_list, pieces = self._unit_values(block, units, values)
        if not all(bool(np.isfinite(piece).all()) for piece in pieces):
            return False
        if len(unit_list) == 1:
            self.reconstructor.add(pixel, unit_list[0], pieces[0])
        else:
            self.reconstructor.add_many([pixel] * len(unit_list), unit_list, pieces)
        return True

    def _wall_since_last_step(self) -> float:
        """Wall seconds of the decision (since the last step returned), this step's update so
        far, and the building of the last observation (what the policy waited for)."""
        return time.perf_counter() - self._last_return + self._pending_wall

    def r2_truth(self) -> float:
        """R^2 of the current reconstruction against the noise-free truth (synthetic data only)."""
        if self.dataset is None or self.dataset.truth is None:
            raise DataError("this dataset has no noise-free truth (only synthetic data has one)")
        return ReferenceScorer(self._to_blocks(self.dataset.truth)).score(self.reconstructor)

    # ================================================================= observation and info
    def _observation(self, changed: bool = True) -> dict[str, np.ndarray]:
        grid = self.grid_shape
        mask = self.unit_measured.T.reshape(self.n_units, *grid).astype(np.float32)
        if changed or self._previous_maps is None:
            maps = (
                self.reconstructor.component_maps(self.n_components)
                .detach()
                .to("cpu", torch.float32)
            )
            maps = maps / maps.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None]
            self._change = self._map_change(maps)
            self._previous_maps = maps
            self._uncertainty = self.reconstructor.uncertainty().detach().cpu()
            if not (torch.isfinite(maps).all() and torch.isfinite(self._uncertainty).all()):
                # A policy must never be shown (or learn from) a broken reconstruction.
                raise FloatingPointError(
                    f"the {type(self.reconstructor).__name__} reconstruction is not finite "
                    f"after {self._n_measured} measurements"
                )
            uncertainty = self._uncertainty.to(torch.float32)
            uncertainty = uncertainty / uncertainty.max().clamp_min(1e-12)
            self._model_planes = (
                torch.cat([maps, uncertainty.T.reshape(self.n_units, *grid)])
                .clamp(-1.0, 1.0)
                .numpy()
            )
            if self._surprise is not None:
                self._surprise_plane = self._surprise.plane()[None]
            if self.observe_energy:
                tracker = self._surprise if self.calibrate_energy else None
                self._log_energy, plane = energy_observation(self.reconstructor, grid, tracker)
                self._energy_plane = plane[None]
        tip = np.zeros((1, *grid), dtype=np.float32)
        tip.reshape(-1)[self.tip_pixel] = 1.0
        n_maps = self.n_components
        groups = {
            "measured": mask,
            "component": self._model_planes[:n_maps],
            "uncertainty": self._model_planes[n_maps:],
            "tip": tip,
        }
        if self._surprise is not None:
            groups["surprise"] = self._surprise_plane
        if self.observe_energy:
            groups["calibrated-energy" if self.calibrate_energy else "energy"] = self._energy_plane
        planes = self.observation_spec.assemble(groups)
        scalars = np.array(
            [
                min(self.seconds_used / self.budget_seconds, 1.0),
                float(self.segments_read.sum()) / (self.segments_read.size * self.n_segments),
                self._change,
            ],
            dtype=np.float32,
        )
        return {"planes": planes, "scalars": scalars}

    def _map_change(self, maps: torch.Tensor) -> float:
        """Relative change of the (normalised) component maps since the last observation, with
        each map's sign aligned first (component signs are arbitrary)."""
        previous = self._previous_maps
        if previous is None:
            return 0.0
        signs = torch.sign((maps * previous).flatten(1).sum(1))
        signs[signs == 0] = 1.0
        aligned = maps * signs[:, None, None]
        change = (aligned - previous).norm() / previous.norm().clamp_min(1e-12)
        return float(min(change.item(), 1.0))

    def _info(
        self,
        pixel: int,
        block: int,
        window: int,
        *,
        repeated: bool,
        nan_block: bool,
        terminated: bool,
        mask: np.ndarray | None = None,
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "r2": self.r2_now,
            "seconds": self.seconds_used,
            "instrument_seconds": self.instrument_seconds,
            "algorithm_seconds": self.algorithm_seconds,
            "n_measurements": self._n_measured,
            "repeated": repeated,
            "nan_block": nan_block,
            "pixel": int(pixel),
            "block": int(block),
            "window": int(window),
            "action_mask": (self.action_masks() if mask is None else mask).astype(np.int8),
        }
        if terminated and self.dataset is not None:
            info.update(self.final_scores())
        return info

    def final_scores(self) -> dict[str, float]:
        """Privileged scores of the current reconstruction against the replayed data: the R^2
        against the noise-free truth (``r2_truth``, synthetic data only) and, for data with a
        time axis, the dynamics R^2 (:func:`reconstruct.metrics.dynamics_r2`) against the data
        (``r2_dynamics``) and the truth (``r2_dynamics_truth``)."""
        scores: dict[str, float] = {}
        dataset = self.dataset
        if dataset is None:
            return scores
        if dataset.truth is not None:
            scores["r2_truth"] = self.r2_truth()
        if len(self.spectral_shape) >= 2 and self.spectral_shape[-1] >= 2:
            estimate = self.estimate().detach().cpu().numpy()
            scores["r2_dynamics"] = dynamics_r2(dataset.data, estimate)
            if dataset.truth is not None:
                # Lost pixels are scored nowhere, against the truth as against the data.
                truth = np.where(np.isfinite(dataset.data), dataset.truth, np.nan)
                scores["r2_dynamics_truth"] = dynamics_r2(truth, estimate)
        return scores

    # ================================================================= rendering
    def render(self) -> np.ndarray | None:
        """``rgb_array``: panels of blocks measured per pixel, the reconstruction at the middle
        (voltage, time) entry, its uncertainty (that voltage's block) and the true map."""
        if self.render_mode != "rgb_array":
            return None
        middle = tuple(s // 2 for s in self.spectral_shape)
        block = int(self.layout.block_of_voltage[middle[0]])
        estimate = self.estimate()[(slice(None), slice(None), *middle)].detach().cpu().numpy()
        units = slice(block * self.n_segments, (block + 1) * self.n_segments)
        uncertainty = self.reconstructor.uncertainty()[:, units].mean(1).detach().cpu().numpy()
        if self.dataset is None:  # a live instrument: the estimate stands in for the truth
            truth = estimate.reshape(self.grid_shape)
        else:
            source = self.dataset.truth if self.dataset.truth is not None else self.dataset.data
            truth = source[(slice(None), slice(None), *middle)]
        grid = self.grid_shape
        return _panel_image(
            [
                (self.measured.sum(1).reshape(grid) / self.n_blocks, (0.0, 1.0)),
                (estimate.reshape(grid), _finite_range(truth)),
                (uncertainty.reshape(grid), None),
                (truth, _finite_range(truth)),
            ]
        )


def _finite_range(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def _panel_image(
    panels: list[tuple[np.ndarray, tuple[float, float] | None]], min_size: int = 128, gap: int = 4
) -> np.ndarray:
    """Maps side by side as one ``(H, W, 3)`` uint8 image (viridis, NaN grey, white gaps).

    Each panel is ``(map, (low, high))``; ``None`` scales the map to its own finite range.
    Maps are enlarged by whole pixels so the shorter side of the grid is at least ``min_size``.
    """
    from matplotlib import colormaps

    colormap = colormaps["viridis"]
    tiles = []
    for values, value_range in panels:
        values = np.asarray(values, dtype=np.float64)
        low, high = (
            value_range if value_range is not None else (_finite_range(values) or (0.0, 1.0))
        )
        scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
        rgb = (colormap(np.nan_to_num(scaled))[..., :3] * 255).astype(np.uint8)
        rgb[~np.isfinite(values)] = 128
        scale = max(1, -(-min_size // min(values.shape)))
        tiles.append(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)))
    height = max(t.shape[0] for t in tiles)
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row = []
    for tile in tiles:
        padded = np.full((height, tile.shape[1], 3), 255, dtype=np.uint8)
        padded[: tile.shape[0]] = tile
        row.extend([padded, spacer])
    return np.concatenate(row[:-1], axis=1)
