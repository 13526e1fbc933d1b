"""Build an acquisition environment from JSON-safe settings: the one place its parts are made.

``gymnasium.make("PFMAcquisition/Relaxation-v0", **settings)`` calls :func:`make_env`, and so
do ``train.py``, ``evaluate.py``, the live loop and every study: a data spec, a reconstructor
name or a cost override means the same thing everywhere. :class:`EnvConfig` holds the settings
(every field JSON-safe, so a run's configuration can be saved and read back); :func:`make_env`
turns them into a :class:`~envs.data.sources.DatasetSource`, a
:class:`~reconstruct.Reconstructor`, a :class:`~envs.instruments.cost.CostModel` and an
:class:`~envs.acquisition.observation.ObservationSpec`, and hands them to
:class:`~envs.acquisition.env.AcquisitionEnv`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envs.acquisition.env import AcquisitionEnv
from envs.acquisition.observation import ObservationSpec
from envs.acquisition.programs import check_rule, default_block_scheme
from envs.acquisition.windows import ReadWindows
from envs.data.dataset import Dataset
from envs.data.sources import DatasetSource, parse_spec
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument
from envs.instruments.memory import memory_setting
from reconstruct.base import BlockLayout
from reconstruct.registry import make_reconstructor


@dataclass
class EnvConfig:
    """Settings of an acquisition environment.

    Attributes
    ----------
    data
        A data spec (:mod:`envs.data.sources`: ``"twin"``, ``"twin:SEED"``, a file path) or, in code
        only, a :class:`Dataset` or a live :class:`~envs.instruments.instrument.Instrument` (the
        env then measures through it, with no reference and no reward; the twin settings are
        not used).
    twin_seeds
        For ``"twin"``: an int (the same twin every reset) or ``[lo, hi)``, drawn from at each
        reset.
    twin_overrides
        Twin settings (:class:`envs.data.twin.TwinConfig` fields, e.g. ``{"grid": [16, 16]}``).
    reconstructor, reconstructor_kwargs, device
        Name for :func:`reconstruct.registry.make_reconstructor`, its options, and its device
        (``"auto"`` picks CUDA when present).
    n_blocks, block_scheme
        The voltage blocks (:class:`reconstruct.BlockLayout`): ``n_blocks`` from 1 to the number
        of voltages; when it does not divide the voltage axis, block sizes differ by one.
        ``block_scheme`` None (default) takes the one the program rule asks for
        (:func:`envs.acquisition.programs.default_block_scheme`: contiguous under
        ``"sequence"``, spread under ``"free"``).
    memory, programs
        The sample's memory (``"auto"``: a twin's measurements are simulated from each
        pixel's state, a file is replayed; ``"on"``; ``"off"``: a replay, as a sample without
        memory; :func:`envs.instruments.memory.instrument_for`) and the program rule
        (:data:`envs.acquisition.programs.RULES`: ``"sequence"``, the default, or ``"free"``).
        ``memory="off", programs="free"`` reproduces results made before the memory was
        simulated.
    cost
        Cost-model parameters (:class:`envs.instruments.cost.CostModel` fields); ``reads`` and
        ``read_interval_s`` default to the data's time axis when it has a time unit.
    budget_fraction, budget_seconds, stop_r2, initial_stride, reward, repeat_penalty
        As for :class:`envs.acquisition.env.AcquisitionEnv`.
    read_windows
        Reads per window a measurement may choose from
        (:class:`envs.acquisition.windows.ReadWindows`),
        ascending, the last the whole curve, e.g. ``[16, 128]``; ``None`` (default): one window,
        the whole curve, and the actions are (pixel, block) as without windows.
    n_components, planes
        Component maps and optional planes (names from
        :data:`envs.acquisition.observation.OPTIONAL_PLANES`)
        of the observation.
    render_mode
        ``None`` or ``"rgb_array"``.
    """

    data: str | Dataset | Instrument = "twin"
    twin_seeds: int | list[int] = 0
    twin_overrides: dict[str, Any] = field(default_factory=dict)
    reconstructor: str = "gp"
    reconstructor_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    n_blocks: int = 4
    block_scheme: str | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    budget_fraction: float | None = None
    budget_seconds: float | None = None
    stop_r2: float | None = None
    initial_stride: int = 6
    reward: str = "auc"
    repeat_penalty: float = 0.01
    read_windows: list[int] | None = None
    n_components: int = 3
    planes: list[str] = field(default_factory=list)
    render_mode: str | None = None
    memory: str = "auto"
    programs: str = "sequence"

    @classmethod
    def for_data(
        cls,
        data: str | Dataset,
        twin_seeds: int | list[int] = 0,
        grid: int | None = None,
        n_times: int | None = None,
        **settings: Any,
    ) -> EnvConfig:
        """Settings for a data source; for the twin, a square grid of ``grid`` pixels a side
        and ``n_times`` read-outs per pulse (None or 0: the twin's own defaults). Other data
        ignores the twin's settings."""
        if isinstance(data, str) and parse_spec(data).is_twin:
            overrides = dict(settings.pop("twin_overrides", {}))
            if grid:
                overrides["grid"] = [int(grid), int(grid)]
            if n_times:
                overrides["n_times"] = int(n_times)
            settings.update(twin_seeds=twin_seeds, twin_overrides=overrides)
        return cls.from_kwargs(data=data, **settings)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EnvConfig:
        """A config from keyword arguments, with a clear error for an unknown one."""
        cls._check_names(kwargs)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with ``changes`` (an unknown name is an error)."""
        self._check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments (JSON-safe unless ``data`` is a Dataset)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def _check_names(cls, kwargs: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown env setting(s) {unknown}; the settings are {sorted(known)}")


def make_env(config: EnvConfig | None = None, **kwargs: Any) -> AcquisitionEnv:
    """The acquisition environment of ``config`` (or of keyword settings, or both: keywords
    override the config's fields)."""
    config = (config or EnvConfig()).replace(**kwargs)
    source: DatasetSource | Instrument
    if isinstance(config.data, (str, Dataset)):
        source = DatasetSource(config.data, config.twin_seeds, config.twin_overrides)
        first = source.first()
        grid, spectral, axes = first.spatial_shape, first.spectral_shape, first.axes
    else:
        source = config.data
        grid = tuple(int(s) for s in source.grid_shape)
        spectral = tuple(int(s) for s in source.spectral_shape)
        axes = list(source.axes)
    n_blocks = config.n_blocks
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}")
    memory = memory_setting(config.memory)
    if memory is not None and not isinstance(config.data, (str, Dataset)):
        raise ValueError("a live instrument is the sample itself: its memory cannot be set")
    scheme = config.block_scheme or default_block_scheme(check_rule(config.programs))
    try:
        layout = BlockLayout(spectral[0], n_blocks, str(scheme))
    except ValueError as err:
        raise ValueError(
            f"voltage blocks (n_blocks={n_blocks}, block_scheme={scheme!r}) do not "
            f"fit the data {(*grid, *spectral)}: {err}"
        ) from None
    cost_model = CostModel.from_dict(config.cost).for_axes(axes, config.cost)
    windows = ReadWindows.parse(config.read_windows, spectral)
    # The reconstructor sees each block's curve segments as blocks of their own (units).
    unit_layout = windows.unit_layout(layout)
    observation = ObservationSpec(unit_layout.n_blocks, config.n_components, tuple(config.planes))
    reconstructor = make_reconstructor(
        config.reconstructor,
        grid,
        windows.unit_spectral_shape(spectral),
        unit_layout,
        device=config.device,
        **dict(config.reconstructor_kwargs),
    )
    return AcquisitionEnv(
        source,
        reconstructor,
        cost_model,
        budget_fraction=config.budget_fraction,
        budget_seconds=config.budget_seconds,
        stop_r2=config.stop_r2,
        initial_stride=config.initial_stride,
        reward=config.reward,
        repeat_penalty=config.repeat_penalty,
        read_windows=windows,
        observation=observation,
        render_mode=config.render_mode,
        memory=memory,
        programs=config.programs,
    )
