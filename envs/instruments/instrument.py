"""The instrument the environment measures on: a small protocol, and a replay of a recorded Dataset.

An instrument holds a tip over a ``grid_shape`` scan grid. ``measure(pixel, voltages)`` moves the
tip there, applies the listed voltage pulses and returns the response with the instrument seconds
the cost model charges for it. A live or networked instrument only has to provide the same few
members.

Replay assumption: :class:`ReplayInstrument` returns the recorded response of each requested
voltage, i.e. it assumes that the recorded response is what a block would give. On a real
instrument, pulses that a block skips change the polarisation state the next pulse meets, so a
block measured alone can respond differently from the same voltages inside a full sequence.
Results obtained on replays carry that assumption. The same holds for read windows: a replay
cuts a curve short without side effects, while on a real instrument the next pulse then meets a
sample that has relaxed for less time (:mod:`envs.acquisition.windows`).
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import numpy as np

from envs.data.dataset import Axis, Dataset
from envs.instruments.cost import CostModel


@runtime_checkable
class Instrument(Protocol):
    """What the environment needs from an instrument.

    Attributes
    ----------
    grid_shape
        ``(X, Y)`` of the scan grid; pixels are flat indices ``p = row * Y + col``.
    spectral_shape
        ``(V, *rest)``: the voltage axis, then e.g. the read-out times of each pulse.
    axes
        One :class:`envs.data.dataset.Axis` per axis of ``(X, Y, V, *rest)``.
    tip_pixel
        Flat index of the pixel the tip is over.
    """

    grid_shape: tuple[int, int]
    spectral_shape: tuple[int, ...]
    axes: list[Axis]
    tip_pixel: int

    def go_to(self, pixel: int) -> float:
        """Move the tip to ``pixel``; return the travel seconds."""
        ...

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Measure ``voltages`` (indices into the voltage axis) at ``pixel``, reading each curve
        in full or, with ``reads``, for its first ``reads`` time points only (a read window,
        :mod:`envs.acquisition.windows`; data with a time axis only).

        Returns the values, shape ``(len(voltages), *rest)`` (the time axis cut to ``reads``),
        and the instrument seconds spent (travel from the current tip position, settling,
        pulses and reads). The tip stays at ``pixel``. NaN values mean the instrument returned
        no usable reading.
        """
        ...


def check_reads(reads: int | None, spectral_shape: tuple[int, ...]) -> int | None:
    """``reads`` as an int in ``[1, T]`` (or None for the whole curve) after checking it
    against ``spectral_shape`` ``(V, T, ...)``; every instrument validates it the same way."""
    if reads is None:
        return None
    if len(spectral_shape) < 2:
        raise ValueError(
            f"a read count was given, but this data has no time axis (spectral shape "
            f"{tuple(spectral_shape)}): measure without one"
        )
    if isinstance(reads, (bool, np.bool_)) or not isinstance(reads, (int, np.integer)):
        raise TypeError(f"reads must be an integer, got {reads!r}")
    if not 1 <= int(reads) <= spectral_shape[1]:
        raise ValueError(
            f"reads must be in [1, {spectral_shape[1]}] (the reads each curve holds), got {reads}"
        )
    return int(reads)


def check_voltages(voltages: np.ndarray, n_voltages: int) -> np.ndarray:
    """``voltages`` as an array after checking that it is a non-empty 1-D array of voltage
    indices in ``[0, n_voltages)`` (every instrument validates its requests the same way)."""
    voltages = np.asarray(voltages)
    is_index = np.issubdtype(voltages.dtype, np.integer)
    if voltages.ndim != 1 or voltages.size == 0 or not is_index:
        raise ValueError(f"voltages must be a non-empty 1-D integer array, got {voltages!r}")
    if voltages.min() < 0 or voltages.max() >= n_voltages:
        raise IndexError(f"voltage indices {voltages.tolist()} out of range [0, {n_voltages})")
    return voltages


def check_pixel(pixel: int, n_pixels: int) -> int:
    """``pixel`` as an int after checking that it is an integer index on a grid of ``n_pixels``
    (every instrument validates its requests the same way)."""
    if isinstance(pixel, (bool, np.bool_)) or not isinstance(pixel, (int, np.integer)):
        raise TypeError(f"pixel must be an integer, got {pixel!r}")
    if not 0 <= int(pixel) < n_pixels:
        raise IndexError(f"pixel {pixel} out of range [0, {n_pixels}) on this grid")
    return int(pixel)


class ReplayInstrument:
    """Replays a recorded :class:`Dataset` as if it were being measured, with cost-model timing.

    Parameters
    ----------
    dataset
        The recording, ``(X, Y, V, *rest)``; its NaN entries come back as NaN readings.
    cost_model
        Prices every measurement and tip move.
    start_pixel
        Where the tip starts (default 0, the first pixel of the first row).

    Notes
    -----
    A replay assumes the recorded response is what a block would give. On a real instrument,
    skipped pulses change the state the next pulse meets; see the module docstring.
    """

    def __init__(self, dataset: Dataset, cost_model: CostModel, start_pixel: int = 0) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be an envs.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.cost_model = cost_model
        self.grid_shape: tuple[int, int] = dataset.spatial_shape
        self.spectral_shape: tuple[int, ...] = dataset.spectral_shape
        self.axes: list[Axis] = dataset.axes
        self.n_pixels = dataset.n_pixels
        self.tip_pixel = self._check_pixel(start_pixel)

    def _check_pixel(self, pixel: int) -> int:
        return check_pixel(pixel, self.n_pixels)

    def go_to(self, pixel: int) -> float:
        """Move the tip to ``pixel``; return the travel seconds."""
        pixel = self._check_pixel(pixel)
        seconds = self.cost_model.travel_seconds(self.tip_pixel, pixel, self.grid_shape)
        self.tip_pixel = pixel
        return seconds

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        """The recorded values of ``voltages`` at ``pixel`` (the first ``reads`` of each curve,
        or all), and the seconds they cost."""
        pixel = self._check_pixel(pixel)
        reads = check_reads(reads, self.spectral_shape)
        voltages = check_voltages(voltages, self.spectral_shape[0])
        seconds = self.cost_model.measurement_seconds(
            int(voltages.size), self.tip_pixel, pixel, self.grid_shape, reads
        )
        self.tip_pixel = pixel
        row, col = divmod(pixel, self.grid_shape[1])
        values = self.dataset.data[row, col, voltages]
        return (values if reads is None else values[:, :reads]).copy(), seconds


class PacedInstrument:
    """Wraps an instrument so each call takes ``instrument seconds / speed`` of real time.

    Parameters
    ----------
    instrument
        Usually a :class:`~envs.instruments.instrument.ReplayInstrument`.
    speed
        Real-time factor: 1 runs as slowly as the microscope, 10 ten times faster.
    """

    def __init__(self, instrument: Instrument, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"pace must be > 0 (a real-time speed-up factor), got {speed}")
        self.inner = instrument
        self.speed = float(speed)
        self.grid_shape = instrument.grid_shape
        self.spectral_shape = instrument.spectral_shape
        self.axes = instrument.axes

    @property
    def tip_pixel(self) -> int:
        return self.inner.tip_pixel

    def go_to(self, pixel: int) -> float:
        seconds = self.inner.go_to(pixel)
        time.sleep(seconds / self.speed)
        return seconds

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        values, seconds = self.inner.measure(pixel, voltages, reads)
        time.sleep(seconds / self.speed)
        return values, seconds
