"""The acquisition environment: choose (pixel, voltage block) measurements against a time budget."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.cost import CostModel
from envs.dataset import DataError, Dataset
from envs.energy import energy_observation
from envs.instrument import ReplayInstrument
from envs.surprise import SurpriseTracker
from reconstruct.base import BlockLayout, Reconstructor

#: Rewards the environment can pay (see the class docstring).
REWARDS = ("auc", "rate")


class AcquisitionEnv(gym.Env[dict[str, np.ndarray], int]):
    """Adaptive spectroscopic acquisition: measure one pixel at one voltage block per step.

    Description
    -----------
    A scanning-probe instrument measures, at each pixel of an ``(X, Y)`` grid, the response after
    each of ``V`` voltage pulses (times e.g. 128 read-outs): a tensor ``(X, Y, V, *rest)``. The
    voltage axis is split into ``n_blocks`` blocks (:class:`reconstruct.BlockLayout`; by default
    each block spreads over the pulse sequence). Each step the agent picks one (pixel, block) to
    measure; the instrument (a replay of a recorded or synthetic :class:`envs.Dataset`) returns
    it and charges its seconds from the :class:`envs.cost.CostModel` (pulses, reads, settling,
    tip travel, plus the algorithm's time); the reconstructor adds it and re-estimates the full
    tensor. The agent is
    paid for accuracy gained early in the time budget.

    The replay assumes the recorded response is what a block would give; on a real instrument
    skipped pulses change the state the next pulse meets (see :mod:`envs.instrument`).

    Action Space
    ------------
    ``Discrete(P * n_blocks)`` with ``P = X * Y``: action ``a = pixel * n_blocks + block`` and
    ``pixel = row * Y + col`` (:meth:`encode_action`, :meth:`decode_action`). Plain Python or
    NumPy integers (also 0-d or one-element integer arrays) are accepted; anything else raises
    ``TypeError`` and an out-of-range index raises ``ValueError``. Measuring a block that was
    already measured is a no-op: nothing is measured, the reward is ``-repeat_penalty``,
    ``info["repeated"]`` is True, and only the algorithm's per-decision time
    (``CostModel.algorithm_base_s``) is charged, so even a policy that ignores the mask runs out
    of budget. :meth:`action_masks` (bool, True = not yet measured) serves MaskablePPO, also
    through vector envs; ``info["action_mask"]`` carries the same as int8.

    Observation Space
    -----------------
    ``Dict`` of

    - ``"planes"``: ``Box(-1, 1, (C, X, Y), float32)``, channel-first, ``C = 2 n_blocks +
      n_components + 1`` (``+ 1`` each with ``observe_surprise`` and ``observe_energy``): the
      measured mask of each block (0/1); the reconstruction's ``n_components`` leading spectral
      component maps (``reconstructor.component_maps``), each divided by its largest magnitude;
      the predictive uncertainty of each block (``reconstructor.uncertainty()``) divided by its
      largest value; with ``observe_surprise``, the local surprise (:mod:`envs.surprise`: the
      smoothed log ratio of each measured block's squared prediction error, predicted just
      before it was measured, to its predicted variance) divided by ``SURPRISE_PLANE_SCALE`` = 4
      and clipped to [-1, 1], 0 before the first step; with ``observe_energy``, the log of each
      pixel's estimated signal energy relative to the largest (:mod:`envs.energy`) divided by
      ``ENERGY_PLANE_SCALE`` = 8 and clipped to [-1, 0], times the fitted power of the energy
      with ``calibrate_energy`` (:func:`envs.energy.energy_exponent`); the tip position
      (one-hot), always last.
    - ``"scalars"``: ``Box(0, 1, (3,), float32)``: fraction of the budget used (clipped at 1),
      fraction of blocks measured, and the recent change of the reconstruction (relative change
      of the component maps over the last step, sign-aligned, clipped at 1).

    Nothing in the observation comes from the ground truth or the unmeasured data.

    Rewards
    -------
    ``R2`` is the reconstruction's R^2 against the full reference tensor (the dataset's data,
    NaN entries ignored; privileged: known in replay and twin only), computed in block layout by
    ``reconstructor.r2``. With ``T`` the budget in seconds and ``t`` the seconds used after the
    step:

    - ``"auc"`` (default): ``(R2_after - R2_before) * max(T - t, 0) / T``. The gain is weighted by
      the budget still left when it arrives, so the undiscounted return equals the normalised
      area under the R^2-versus-seconds step curve above its starting value,
      ``auc_normalised(seconds, r2, T, start=R2_0) - R2_0`` (:mod:`reconstruct.metrics`). Unlike a
      sum of gain/seconds ratios, it cannot be inflated by many cheap steps.
    - ``"rate"``: ``(R2_after - R2_before) / step_seconds * pixel_seconds``, the gain per second
      in units of one full pixel's measurement time. Simple, but its sum favours many cheap
      steps; offered for comparison.

    A repeated block earns ``-repeat_penalty`` under either reward.

    Starting State
    --------------
    Each reset draws a dataset (a twin seed from ``twin_seeds`` through ``self.np_random``, the
    loaded file, or ``options={"dataset": Dataset}``), puts the tip at pixel 0 and measures the
    initial design: every block of the pixels on a grid of stride ``initial_stride`` (offset by
    half a stride), in raster order. Its instrument seconds and the algorithm time of one batch
    update are charged, so the episode starts with ``seconds > 0`` and ``R2_0`` from that design.

    Episode End
    -----------
    ``terminated`` when the seconds used reach the budget, when ``target_r2`` (if set) is reached,
    or when every block is measured. ``truncated`` is never set by the environment itself, only
    by a ``TimeLimit`` wrapper. The final step's info holds ``"r2_truth"`` (R^2 against the
    noise-free truth) when the dataset has one.

    Info
    ----
    ``"r2"``, ``"seconds"`` (total), ``"instrument_seconds"``, ``"algorithm_seconds"``,
    ``"n_measurements"`` (blocks measured, initial design included), ``"repeated"``,
    ``"nan_block"`` (the measured values held NaN: time charged, block marked measured, values
    not given to the reconstructor), ``"action_mask"`` (int8), ``"pixel"`` and ``"block"`` of the
    step (-1 at reset). No wall-clock values unless ``cost={"algorithm_clock": "wall"}``.

    Arguments
    ---------
    data
        ``"twin"`` (synthetic relaxation twin; see ``twin_seeds`` and ``twin_overrides``),
        ``"twin:SEED"``, or a path to an h5/npy file read by :func:`envs.loaders.load_dataset`.
        A :class:`Dataset` instance also works (not JSON-safe: not for registration kwargs).
    twin_seeds
        An int (the same twin every reset) or ``[lo, hi)``: each reset draws a seed from that range
        with ``self.np_random``.
    twin_overrides
        JSON-safe dict of twin settings (e.g. ``{"grid": [16, 16], "n_times": 16}``).
    reconstructor, reconstructor_kwargs
        Name for :func:`reconstruct.registry.make_reconstructor` and its keyword arguments.
    device
        Passed to the reconstructor; ``"auto"`` picks CUDA when present.
    n_blocks, block_scheme
        The voltage blocks; ``n_blocks`` must divide the voltage axis (``ValueError`` otherwise);
        ``block_scheme`` is ``"spread"`` (default), ``"interleaved"`` or ``"contiguous"``
        (:class:`reconstruct.BlockLayout`).
    cost
        Cost-model parameters (``CostModel`` field names); ``reads`` and ``read_interval_s``
        default to the dataset's time axis when it has a time unit.
    budget_fraction, budget_seconds
        The budget as a fraction of the full-raster time and/or in seconds (the smaller wins when
        both are given; ``budget_fraction`` defaults to 0.5 when neither is). Must be > 0 and
        larger than the initial design's cost.
    target_r2
        Optional accuracy that ends the episode once reached.
    initial_stride
        Stride of the initial grid of fully measured pixels; 0 for no initial design.
    reward, repeat_penalty
        ``"auc"`` or ``"rate"``; penalty (>= 0) for a repeated block.
    n_components
        Component maps in the observation.
    observe_surprise
        Add the local-surprise plane to the observation (off by default: the layout that models
        trained before it expect). Each step then also predicts the chosen block before
        measuring it.
    observe_energy
        Add the log pixel-energy plane (:mod:`envs.energy`) to the observation, after the
        surprise plane (off by default, as for the surprise plane).
    calibrate_energy
        Multiply the energy plane by the power of the energy fitted to this sample's measured
        blocks (:func:`envs.energy.energy_exponent`: how strongly their surprise rises with
        their pixel's energy); needs ``observe_surprise`` and ``observe_energy``.
    render_mode
        ``None`` or ``"rgb_array"`` (mask, reconstructed map, uncertainty and true map).

    Attributes
    ----------
    reconstructor : reconstruct.Reconstructor
        The live reconstruction (policies may query it: uncertainty, estimates).
    layout : reconstruct.BlockLayout
        The voltage blocks.
    cost_model : envs.cost.CostModel
        Prices of this episode's measurements.
    instrument : envs.instrument.ReplayInstrument
        The replayed instrument.
    tip_pixel : int
        Flat index of the pixel under the tip.
    seconds_used, budget_seconds, full_raster_seconds : float
        Seconds charged so far, the episode's budget, and the full raster's instrument seconds.
    grid_shape : tuple of int
        ``(X, Y)``.
    n_blocks : int
        Blocks per pixel.
    measured : numpy.ndarray
        ``(P, n_blocks)`` bool, blocks measured (NaN blocks included).
    dataset : envs.Dataset
        Privileged: the replayed data (and truth). Only an oracle policy may read it.
    reference_blocks : torch.Tensor
        Privileged: the data in block layout, ``(P, n_blocks, F_b)``, used for R^2.

    Version History
    ---------------
    v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    #: No surprise plane unless ``__init__`` asks for one; class-level, so subclasses that set
    #: the state themselves (:class:`envs.experiment.LiveAcquisition`) observe as before.
    observe_surprise: bool = False
    _surprise: SurpriseTracker | None = None
    observe_energy: bool = False
    calibrate_energy: bool = False

    def __init__(
        self,
        data: str | Dataset = "twin",
        twin_seeds: int | Sequence[int] = 0,
        twin_overrides: dict[str, Any] | None = None,
        reconstructor: str = "gp",
        reconstructor_kwargs: dict[str, Any] | None = None,
        device: str = "auto",
        n_blocks: int = 4,
        block_scheme: str = "spread",
        cost: dict[str, Any] | None = None,
        budget_fraction: float | None = None,
        budget_seconds: float | None = None,
        target_r2: float | None = None,
        initial_stride: int = 6,
        reward: str = "auc",
        repeat_penalty: float = 0.01,
        n_components: int = 3,
        observe_surprise: bool = False,
        observe_energy: bool = False,
        calibrate_energy: bool = False,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self._check_arguments(
            budget_fraction,
            budget_seconds,
            target_r2,
            initial_stride,
            reward,
            repeat_penalty,
            n_components,
            render_mode,
            n_blocks,
        )
        if budget_fraction is None and budget_seconds is None:
            budget_fraction = 0.5
        self.budget_fraction = None if budget_fraction is None else float(budget_fraction)
        self.budget_limit_seconds = None if budget_seconds is None else float(budget_seconds)
        self.target_r2 = None if target_r2 is None else float(target_r2)
        self.initial_stride = int(initial_stride)
        self.reward_kind = reward
        self.repeat_penalty = float(repeat_penalty)
        self.n_components = int(n_components)
        self.observe_surprise = bool(observe_surprise)
        self.observe_energy = bool(observe_energy)
        self.calibrate_energy = bool(calibrate_energy)
        if self.calibrate_energy and not (self.observe_surprise and self.observe_energy):
            raise ValueError(
                "calibrate_energy fits the energy's power on the surprise of measured blocks: "
                "it needs observe_surprise=True and observe_energy=True"
            )
        self.render_mode = render_mode
        self._cost_overrides = dict(cost or {})
        self._base_cost = CostModel.from_dict(self._cost_overrides)

        self._data_spec = data
        self._twin_seeds = self._parse_twin_seeds(twin_seeds)
        self._twin_overrides = dict(twin_overrides or {})
        self._loaded: dict[Any, Dataset] = {}  # the last dataset per source key (one entry)
        first = self._draw_dataset(self._twin_seeds[0])

        self.grid_shape: tuple[int, int] = first.spatial_shape
        self.spectral_shape: tuple[int, ...] = first.spectral_shape
        self.n_pixels = first.n_pixels
        try:
            self.layout = BlockLayout(self.spectral_shape[0], int(n_blocks), str(block_scheme))
        except ValueError as err:
            raise ValueError(
                f"voltage blocks (n_blocks={n_blocks}, block_scheme={block_scheme!r}) do not fit "
                f"the data {first.shape}: {err}"
            ) from None
        self.n_blocks = self.layout.n_blocks
        self.initial_pixels = self._initial_design_pixels()
        if self.initial_pixels.size == self.n_pixels:
            raise ValueError(
                f"initial_stride={initial_stride} measures every pixel; nothing is left to choose"
            )

        from reconstruct.registry import make_reconstructor

        self.reconstructor: Reconstructor = make_reconstructor(
            reconstructor,
            self.grid_shape,
            self.spectral_shape,
            self.layout,
            device=device,
            **dict(reconstructor_kwargs or {}),
        )
        self.device = self.reconstructor.device

        self._surprise = SurpriseTracker(self.grid_shape) if self.observe_surprise else None
        n_channels = (
            2 * self.n_blocks
            + self.n_components
            + 1
            + int(self.observe_surprise)
            + int(self.observe_energy)
        )
        self.observation_space = spaces.Dict(
            {
                "planes": spaces.Box(-1.0, 1.0, (n_channels, *self.grid_shape), np.float32),
                "scalars": spaces.Box(0.0, 1.0, (3,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(self.n_pixels * self.n_blocks)
        # Check the budget against the first dataset now, so a bad configuration fails here.
        self._set_dataset(first)

    # ================================================================= configuration
    @staticmethod
    def _check_arguments(
        budget_fraction: float | None,
        budget_seconds: float | None,
        target_r2: float | None,
        initial_stride: int,
        reward: str,
        repeat_penalty: float,
        n_components: int,
        render_mode: str | None,
        n_blocks: int,
    ) -> None:
        for name, value in (
            ("budget_fraction", budget_fraction),
            ("budget_seconds", budget_seconds),
        ):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name} must be a positive number of seconds/fraction, got {value}"
                )
        if target_r2 is not None and not (np.isfinite(target_r2) and target_r2 <= 1):
            raise ValueError(f"target_r2 must be a number <= 1, got {target_r2}")
        if (
            isinstance(n_blocks, bool)
            or not isinstance(n_blocks, (int, np.integer))
            or n_blocks < 1
        ):
            raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}")
        if not isinstance(initial_stride, (int, np.integer)) or initial_stride < 0:
            raise ValueError(f"initial_stride must be an integer >= 0, got {initial_stride!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if not (np.isfinite(repeat_penalty) and repeat_penalty >= 0):
            raise ValueError(f"repeat_penalty must be >= 0, got {repeat_penalty}")
        if not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
        if render_mode is not None and render_mode not in AcquisitionEnv.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {AcquisitionEnv.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )

    @staticmethod
    def _parse_twin_seeds(twin_seeds: int | Sequence[int]) -> tuple[int, int]:
        """``[lo, hi)`` of twin seeds (an int ``s`` means ``[s, s + 1)``)."""
        if isinstance(twin_seeds, (int, np.integer)) and not isinstance(twin_seeds, bool):
            return int(twin_seeds), int(twin_seeds) + 1
        if isinstance(twin_seeds, Sequence) and len(twin_seeds) == 2:
            lo, hi = (int(s) for s in twin_seeds)
            if hi > lo:
                return lo, hi
        raise ValueError(
            f"twin_seeds must be an int or a [lo, hi) pair with hi > lo, got {twin_seeds!r}"
        )

    def _draw_dataset(self, twin_seed: int) -> Dataset:
        """The dataset of the configured source (twins for ``twin_seed``), cached per source."""
        spec = self._data_spec
        if isinstance(spec, Dataset):
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"data must be 'twin', 'twin:SEED', a file path or a Dataset, got {spec!r}"
            )
        if spec == "twin" or spec.startswith("twin:"):
            seed = twin_seed if spec == "twin" else int(spec.split(":", 1)[1])
            key: Any = ("twin", seed)
        else:
            key = ("file", spec)
        if key not in self._loaded:
            if key[0] == "twin":
                from envs.twin import twin_dataset

                dataset = twin_dataset(key[1], **self._twin_overrides)
            else:
                from envs.loaders import load_dataset

                dataset = load_dataset(spec)
            self._loaded = {key: dataset}
        return self._loaded[key]

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

    def _set_dataset(self, dataset: Dataset) -> None:
        """Make ``dataset`` the replayed data; price and budget the episode on it."""
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
        self.dataset = dataset
        self.cost_model = self._base_cost.for_axes(dataset.axes, self._cost_overrides)
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
        if self.cost_model.measurement_seconds(self.layout.block_size, 0, 0, self.grid_shape) <= 0:
            raise ValueError("the cost model charges 0 s for a measurement; set a positive time")

    def _initial_design_seconds(self) -> float:
        """Instrument plus algorithm seconds of the initial design (as charged at reset)."""
        seconds, tip = 0.0, 0
        for pixel in self.initial_pixels:
            for _ in range(self.n_blocks):
                seconds += self.cost_model.measurement_seconds(
                    self.layout.block_size, tip, int(pixel), self.grid_shape
                )
                tip = int(pixel)
        n_initial = self.initial_pixels.size * self.n_blocks
        return seconds + (self.cost_model.algorithm_s(n_initial) if n_initial else 0.0)

    # ================================================================= action helpers
    def encode_action(self, pixel: int, block: int) -> int:
        """Flat action of (pixel, block): ``pixel * n_blocks + block``."""
        if not (0 <= pixel < self.n_pixels and 0 <= block < self.n_blocks):
            raise ValueError(
                f"(pixel {pixel}, block {block}) outside "
                f"[0, {self.n_pixels}) x [0, {self.n_blocks})"
            )
        return int(pixel) * self.n_blocks + int(block)

    def decode_action(self, action: int) -> tuple[int, int]:
        """``(pixel, block)`` of a flat action."""
        pixel, block = divmod(self._check_action(action), self.n_blocks)
        return pixel, block

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
        """Bool ``(P * n_blocks,)``: True for blocks not yet measured (valid actions)."""
        return ~self.measured.reshape(-1)

    def block_seconds(self, pixels: np.ndarray, block: int) -> np.ndarray:
        """Seconds a measurement of ``block`` at each of ``pixels`` would be charged now: travel
        from the current tip, settling, pulses and reads, plus the model's algorithm time (every
        block has the same size, so ``block`` changes nothing but is checked)."""
        if not 0 <= int(block) < self.n_blocks:
            raise ValueError(f"block {block} out of range [0, {self.n_blocks})")
        instrument = self.cost_model.measurement_seconds_many(
            self.layout.block_size, self.tip_pixel, np.asarray(pixels), self.grid_shape
        )
        return instrument + self.cost_model.algorithm_s(self.n_measurements + 1)

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
        options = options or {}
        unknown = sorted(set(options) - {"dataset"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; the only option is 'dataset'")
        if "dataset" in options:
            dataset = options["dataset"]
        else:
            lo, hi = self._twin_seeds
            dataset = self._draw_dataset(int(self.np_random.integers(lo, hi)))
        self._set_dataset(dataset)

        self.instrument = ReplayInstrument(self.dataset, self.cost_model, start_pixel=0)
        self.reconstructor.reset()
        self.reference_blocks = self._to_blocks(self.dataset.data)
        self.measured = np.zeros((self.n_pixels, self.n_blocks), dtype=bool)
        self._n_measured = 0
        self.instrument_seconds = 0.0
        self.algorithm_seconds = 0.0
        self._pending_wall = 0.0
        self._measure_initial_design()
        self.r2_start = self.r2_now = float(self.reconstructor.r2(self.reference_blocks))
        self._previous_maps: torch.Tensor | None = None
        self._change = 0.0
        if self._surprise is not None:
            self._surprise.reset()
        observation = self._observation()
        self._last_return = time.perf_counter()
        return observation, self._info(-1, -1, repeated=False, nan_block=False, terminated=False)

    def _to_blocks(self, tensor: np.ndarray) -> torch.Tensor:
        return self.layout.to_blocks(torch.from_numpy(tensor)).contiguous().to(self.device)

    def _measure_initial_design(self) -> None:
        """Measure every block of the initial pixels and add them in one batch update."""
        if self.initial_pixels.size == 0:
            return
        start = time.perf_counter()
        pixels, blocks, values = [], [], []
        for pixel in self.initial_pixels:
            for block in range(self.n_blocks):
                vals, seconds = self.instrument.measure(int(pixel), self.layout.voltages(block))
                self.instrument_seconds += seconds
                self.measured[pixel, block] = True
                self._n_measured += 1
                if np.isfinite(vals).all():
                    pixels.append(int(pixel))
                    blocks.append(block)
                    values.append(vals)
        if pixels:
            self.reconstructor.add_many(pixels, blocks, np.stack(values))
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
        pixel, block = self.decode_action(action)
        wall = self.cost_model.algorithm_clock == "wall"
        seconds_before = self.seconds_used
        repeated = bool(self.measured[pixel, block])
        nan_block = False
        if repeated:
            self.algorithm_seconds += (
                self._wall_since_last_step() if wall else self.cost_model.algorithm_base_s
            )
            reward = -self.repeat_penalty
        else:
            if self._surprise is not None:
                # The model state is the one the last observation showed: its uncertainty is
                # the variance the prediction is judged against.
                variance = float(self._uncertainty[pixel, block])
                # With calibration, the covariate is the pixel's log energy that it showed.
                covariate = float(self._log_energy[pixel]) if self.calibrate_energy else None
                self._surprise.expect(self.reconstructor, pixel, block, variance, covariate)
            values, seconds = self.instrument.measure(pixel, self.layout.voltages(block))
            self.instrument_seconds += seconds
            self.measured[pixel, block] = True
            self._n_measured += 1
            nan_block = not bool(np.isfinite(values).all())
            if not nan_block:
                self.reconstructor.add(pixel, block, values)
            if self._surprise is not None:
                self._surprise.record(self.reconstructor)
            if wall:
                self.algorithm_seconds += self._wall_since_last_step()
            else:
                self.algorithm_seconds += self.cost_model.algorithm_s(self._n_measured)
            r2_before = self.r2_now
            if not nan_block:
                self.r2_now = float(self.reconstructor.r2(self.reference_blocks))
            gain = self.r2_now - r2_before
            if self.reward_kind == "auc":
                left = max(self.budget_seconds - self.seconds_used, 0.0)
                reward = gain * left / self.budget_seconds
            else:
                reward = gain / (self.seconds_used - seconds_before) * self.pixel_seconds
        terminated = bool(
            self.seconds_used >= self.budget_seconds
            or self._n_measured == self.measured.size
            or (self.target_r2 is not None and self.r2_now >= self.target_r2)
        )
        obs_start = time.perf_counter()
        observation = self._observation(changed=not repeated)
        info = self._info(
            pixel, block, repeated=repeated, nan_block=nan_block, terminated=terminated
        )
        self._last_return = time.perf_counter()
        self._pending_wall = self._last_return - obs_start
        return observation, float(reward), terminated, False, info

    def _wall_since_last_step(self) -> float:
        """Wall seconds of the decision (since the last step returned), this step's update so
        far, and the building of the last observation (what the policy waited for)."""
        return time.perf_counter() - self._last_return + self._pending_wall

    def r2_truth(self) -> float:
        """R^2 of the current reconstruction against the noise-free truth (synthetic data only)."""
        if self.dataset.truth is None:
            raise DataError("this dataset has no noise-free truth (only synthetic data has one)")
        return float(self.reconstructor.r2(self._to_blocks(self.dataset.truth)))

    # ================================================================= observation and info
    def _observation(self, changed: bool = True) -> dict[str, np.ndarray]:
        grid = self.grid_shape
        mask = self.measured.T.reshape(self.n_blocks, *grid).astype(np.float32)
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
            uncertainty = self._uncertainty.to(torch.float32)
            uncertainty = uncertainty / uncertainty.max().clamp_min(1e-12)
            self._model_planes = (
                torch.cat([maps, uncertainty.T.reshape(self.n_blocks, *grid)])
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
        parts = [mask, self._model_planes[:n_maps], self._model_planes[n_maps:]]
        if self._surprise is not None:
            parts.append(self._surprise_plane)
        if self.observe_energy:
            parts.append(self._energy_plane)
        planes = np.concatenate([*parts, tip]).astype(np.float32, copy=False)
        scalars = np.array(
            [
                min(self.seconds_used / self.budget_seconds, 1.0),
                self._n_measured / self.measured.size,
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
        self, pixel: int, block: int, *, repeated: bool, nan_block: bool, terminated: bool
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
            "action_mask": self.action_masks().astype(np.int8),
        }
        if terminated and self.dataset.truth is not None:
            info["r2_truth"] = self.r2_truth()
        return info

    # ================================================================= rendering
    def render(self) -> np.ndarray | None:
        """``rgb_array``: panels of blocks measured per pixel, the reconstruction at the middle
        (voltage, time) entry, its uncertainty (that voltage's block) and the true map."""
        if self.render_mode != "rgb_array":
            return None
        middle = tuple(s // 2 for s in self.spectral_shape)
        block, position = self._block_position(middle[0])
        rest = int(np.prod(self.spectral_shape[1:], dtype=np.int64))
        within = int(np.ravel_multi_index(middle[1:], self.spectral_shape[1:])) if rest > 1 else 0
        feature = position * rest + within
        estimate = self.reconstructor.estimate_blocks()[:, block, feature].detach().cpu().numpy()
        uncertainty = self.reconstructor.uncertainty()[:, block].detach().cpu().numpy()
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

    def _block_position(self, voltage: int) -> tuple[int, int]:
        """Block holding ``voltage`` and its position within the block."""
        for block in range(self.n_blocks):
            where = np.flatnonzero(self.layout.voltages(block) == voltage)
            if where.size:
                return block, int(where[0])
        raise IndexError(f"voltage {voltage} is in no block")


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
