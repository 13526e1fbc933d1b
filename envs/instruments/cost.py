"""The time-cost model of a spectroscopic measurement: instrument seconds plus algorithm seconds.

One measurement is one pixel at one voltage block, read for a window of ``r`` reads (all
``reads`` by default, :mod:`envs.acquisition.windows`). Its instrument time is

    n_voltages * (pulse_s + r * read_interval_s)          pulses and read-outs
    + settle_s                                            settling after the tip lands
    + distance(from_pixel, to_pixel) * travel_s_per_pixel  tip travel, distance in pixel pitches

and the algorithm's time for the decision and the reconstruction update that follows is, by
default, the deterministic model ``algorithm_s(n) = algorithm_base_s + algorithm_per_block_s * n``
(so seeded runs charge identical seconds). With ``algorithm_clock="wall"`` the
environment charges the measured wall clock instead.

Default numbers: 16 voltages x (20 ms pulse + 128 reads x 2 ms) + 0.1 s settle = 4.52 s for a full
pixel, inside the 0.1-10 s per pixel real instruments take, so a full 60 x 60 raster takes about
4.5 hours. The algorithm defaults (8 ms per decision plus 4 us per measured block) are a
straight-line fit of one environment step's wall time against the number of blocks already
measured, made with ``python -m benchmarks.environment`` (``docs/performance.md`` has the
measurement).

The module depends on numpy only, so baselines and evaluation scripts can price a schedule without
building an environment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np

#: Units a time axis may carry, and their factor to seconds.
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class CostModel:
    """Seconds charged for measurements and for the algorithm's own work.

    Parameters
    ----------
    pulse_s
        Duration of one voltage pulse, seconds.
    reads
        Read-outs after each pulse (e.g. the relaxation time samples).
    read_interval_s
        Seconds between read-outs. :meth:`for_axes` takes it from the data's time axis when that
        axis carries a time unit.
    settle_s
        Settling time paid once per measurement, after the tip arrives (also when it stays put).
    travel_s_per_pixel
        Seconds of tip travel per pixel pitch (pitch / tip speed); travel is along the straight
        line between pixel centres.
    algorithm_base_s
        Deterministic algorithm seconds per decision (observation, policy and bookkeeping).
    algorithm_per_block_s
        Deterministic algorithm seconds per block already measured (the reconstruction update
        grows with the number of measurements).
    algorithm_clock
        ``"model"`` (default): charge :meth:`algorithm_s`, deterministic. ``"wall"``: the
        environment charges the measured wall-clock time of the decision and the update instead.
    """

    pulse_s: float = 0.02
    reads: int = 128
    read_interval_s: float = 0.002
    settle_s: float = 0.1
    travel_s_per_pixel: float = 0.01
    algorithm_base_s: float = 8e-3
    algorithm_per_block_s: float = 4e-6
    algorithm_clock: Literal["model", "wall"] = "model"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "algorithm_clock":
                continue
            value = getattr(self, f.name)
            is_number = isinstance(value, (int, float, np.integer, np.floating))
            if isinstance(value, bool) or not is_number:
                raise TypeError(f"CostModel.{f.name} must be a number, got {value!r}")
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"CostModel.{f.name} must be finite and >= 0, got {value}")
        if int(self.reads) != self.reads:
            raise ValueError(f"CostModel.reads must be a whole number, got {self.reads}")
        if self.algorithm_clock not in ("model", "wall"):
            raise ValueError(
                f"CostModel.algorithm_clock must be 'model' or 'wall', got {self.algorithm_clock!r}"
            )

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> CostModel:
        """Build from JSON-safe keyword arguments, naming any unknown key."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown cost-model parameters {unknown}; known are {sorted(known)}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters (inverse of :meth:`from_dict`)."""
        return asdict(self)

    def for_axes(self, axes: list[Any], overrides: dict[str, Any] | None = None) -> CostModel:
        """This model with ``reads`` and ``read_interval_s`` taken from a dataset's time axis.

        The time axis is the last spectral axis (axis 3 of ``(x, y, voltage, time)``) when the
        data has one. ``reads`` becomes its length; ``read_interval_s`` its median spacing when the
        axis unit is a time unit (s, ms, us, ns). Keys in ``overrides`` win over both.
        """
        overrides = dict(overrides or {})
        updates: dict[str, Any] = {}
        if len(axes) >= 4:
            time_axis = axes[-1]
            updates["reads"] = len(time_axis)
            factor = _TIME_UNITS.get(str(getattr(time_axis, "unit", "")).strip())
            values = np.asarray(time_axis.values, dtype=np.float64)
            if factor is not None and values.size >= 2:
                interval = float(np.median(np.diff(values))) * factor
                if np.isfinite(interval) and interval > 0:
                    updates["read_interval_s"] = interval
        updates.update(overrides)
        return replace(self, **updates)

    # ----------------------------------------------------------------- instrument time
    def voltage_seconds(self, reads: int | None = None) -> float:
        """Seconds for one voltage: the pulse and its read-outs (all ``self.reads`` of them, or
        the first ``reads`` for a shorter read window, :mod:`envs.acquisition.windows`)."""
        return self.pulse_s + self._reads(reads) * self.read_interval_s

    def _reads(self, reads: int | None) -> int:
        if reads is None:
            return int(self.reads)
        if int(reads) != reads or not 1 <= reads <= self.reads:
            raise ValueError(f"reads must be a whole number in [1, {self.reads}], got {reads}")
        return int(reads)

    def travel_seconds(self, from_pixel: int, to_pixel: int, grid_shape: tuple[int, int]) -> float:
        """Tip travel between two flat pixel indices (``p = row * ny + col``)."""
        return float(self.travel_seconds_many(from_pixel, np.asarray([to_pixel]), grid_shape)[0])

    def travel_seconds_many(
        self, from_pixel: int, to_pixels: np.ndarray, grid_shape: tuple[int, int]
    ) -> np.ndarray:
        """Tip travel from ``from_pixel`` to each of ``to_pixels`` (any shape), seconds."""
        ny = int(grid_shape[1])
        r0, c0 = divmod(int(from_pixel), ny)
        rows, cols = np.divmod(np.asarray(to_pixels, dtype=np.int64), ny)
        return np.hypot(rows - r0, cols - c0) * self.travel_s_per_pixel

    def measurement_seconds(
        self,
        n_voltages: int,
        from_pixel: int,
        to_pixel: int,
        grid_shape: tuple[int, int],
        reads: int | None = None,
    ) -> float:
        """Instrument seconds to measure ``n_voltages`` voltages (a block's
        ``layout.n_applied(block)``) at ``to_pixel`` with the tip coming from ``from_pixel``:
        pulses and reads (every read, or the first ``reads``), settling, and travel."""
        n_pixels = int(grid_shape[0]) * int(grid_shape[1])
        for name, pixel in (("from_pixel", from_pixel), ("to_pixel", to_pixel)):
            if not 0 <= int(pixel) < n_pixels:
                raise IndexError(f"{name} {pixel} out of range [0, {n_pixels}), grid {grid_shape}")
        to_pixels = np.asarray([to_pixel])
        seconds = self.measurement_seconds_many(
            n_voltages, from_pixel, to_pixels, grid_shape, reads
        )
        return float(seconds[0])

    def measurement_seconds_many(
        self,
        n_voltages: int,
        from_pixel: int,
        to_pixels: np.ndarray,
        grid_shape: tuple[int, int],
        reads: int | None = None,
    ) -> np.ndarray:
        """:meth:`measurement_seconds` for each of ``to_pixels`` (no range check), vectorised."""
        if n_voltages < 1:
            raise ValueError(f"n_voltages must be >= 1, got {n_voltages}")
        fixed = n_voltages * self.voltage_seconds(reads) + self.settle_s
        return fixed + self.travel_seconds_many(from_pixel, to_pixels, grid_shape)

    def pixel_seconds(self, n_voltages: int, n_blocks: int = 1) -> float:
        """Seconds to measure every voltage of one pixel in ``n_blocks`` blocks, tip in place:
        each voltage once, whatever the blocks' sizes, and one settling per block."""
        if not 1 <= n_blocks <= n_voltages:
            raise ValueError(f"{n_blocks} blocks for {n_voltages} voltages: need 1 to {n_voltages}")
        return n_voltages * self.voltage_seconds() + n_blocks * self.settle_s

    def full_raster_seconds(
        self, grid_shape: tuple[int, int], n_voltages: int, layout: Any | None = None
    ) -> float:
        """Instrument seconds of a full raster: every block of every pixel, row by row.

        The tip starts at pixel 0, visits pixels in flat order (``p = row * ny + col``, flying
        back to column 0 at each new row) and measures every block of a pixel before moving on.
        ``layout`` (a :class:`reconstruct.BlockLayout`) sets how many blocks, and so how many
        settling times, a pixel costs; ``None`` measures each pixel in one block. No algorithm
        time is charged: a raster takes no decisions.
        """
        nx, ny = int(grid_shape[0]), int(grid_shape[1])
        if nx < 1 or ny < 1:
            raise ValueError(f"grid_shape must be positive, got {grid_shape}")
        n_blocks = 1 if layout is None else int(layout.n_blocks)
        if layout is not None and int(layout.n_voltages) != int(n_voltages):
            raise ValueError(
                f"layout covers {layout.n_voltages} voltages but n_voltages is {n_voltages}"
            )
        # Travel: (ny - 1) unit steps along each row, plus a diagonal fly-back between rows.
        row_travel = nx * (ny - 1)
        flyback = (nx - 1) * float(np.hypot(1, ny - 1))
        travel = (row_travel + flyback) * self.travel_s_per_pixel
        return nx * ny * self.pixel_seconds(n_voltages, n_blocks) + travel

    # ----------------------------------------------------------------- algorithm time
    def algorithm_s(self, n_measured: int) -> float:
        """Deterministic algorithm seconds of one decision and update with ``n_measured`` blocks
        already measured: ``algorithm_base_s + algorithm_per_block_s * n_measured``."""
        if n_measured < 0:
            raise ValueError(f"n_measured must be >= 0, got {n_measured}")
        return self.algorithm_base_s + self.algorithm_per_block_s * int(n_measured)
