"""Read windows: how much of each relaxation curve a measurement reads.

After each voltage pulse the instrument reads the response ``T`` times (128 reads of 2 ms by
default): the reads are most of a measurement's instrument time (``envs.instruments.cost``). A *read
window* is a number of reads ``r`` from the start of the curve: a measurement with window ``r``
applies its block's pulses and reads each curve for ``r`` reads only, and is charged for
those. Windows are prefixes of the curve; the largest always reads the whole curve.

To the reconstruction, a window is a number of *segments*: the time axis is cut into equal
segments of ``gcd(windows)`` reads, and window ``r`` measures the first ``r / gcd`` of them
(:class:`reconstruct.base.SegmentedLayout` folds the segments into the voltage axis, so every
reconstructor takes partly read curves). A longer window at a block that was read with a
shorter one re-applies the pulses and reads up to its end (charged in full: the curve has to be
waited out again), and only the segments the block did not have yet are new data.

Replay assumption: cutting a read short is free of side effects in a replay. On a real
instrument the next pulse then meets a sample that has relaxed for less time, so its response
can differ from the recorded one (the same caveat as for skipped pulses,
:mod:`envs.instruments.instrument`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from math import gcd

import numpy as np

from reconstruct.base import BlockLayout, SegmentedLayout

#: Most segments a curve may be cut into: every segment is one observation plane per block and
#: one unit of the reconstruction, so the windows' common divisor must not be tiny.
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class ReadWindows:
    """The read windows a measurement may choose from.

    Parameters
    ----------
    reads
        Reads per window, ascending and distinct; the last equals ``n_times`` (a measurement
        can always read the whole curve). ``(n_times,)`` is the single full window.
    n_times
        Length of the data's time axis (1 for data without one).
    """

    reads: tuple[int, ...]
    n_times: int

    def __post_init__(self) -> None:
        reads = tuple(int(r) for r in self.reads)
        object.__setattr__(self, "reads", reads)
        if not reads:
            raise ValueError("read windows: give at least one window")
        if any(r < 1 for r in reads):
            raise ValueError(f"read windows: every window needs at least 1 read, got {list(reads)}")
        if any(r > self.n_times for r in reads):
            raise ValueError(
                f"read windows {list(reads)}: the data holds {self.n_times} reads per curve"
            )
        if list(reads) != sorted(set(reads)):
            raise ValueError(f"read windows must be ascending and distinct, got {list(reads)}")
        if reads[-1] != self.n_times:
            raise ValueError(
                f"read windows {list(reads)}: the last window must read the whole curve "
                f"({self.n_times} reads)"
            )
        if self.n_segments > MAX_SEGMENTS:
            raise ValueError(
                f"read windows {list(reads)} cut each curve into {self.n_segments} segments of "
                f"{self.segment_reads} reads (their common divisor); at most {MAX_SEGMENTS} "
                f"are allowed: choose windows that are multiples of a larger read count"
            )

    @classmethod
    def parse(cls, reads: Sequence[int] | None, spectral_shape: Sequence[int]) -> ReadWindows:
        """Windows for data of ``spectral_shape`` ``(V, *rest)``: ``None`` is the single full
        window; a file without a time axis (``(V,)``) takes only that."""
        has_time = len(spectral_shape) >= 2
        n_times = int(spectral_shape[1]) if has_time else 1
        if reads is None:
            return cls((n_times,), n_times)
        reads = tuple(int(r) for r in reads)
        if not has_time and reads != (1,):
            raise ValueError(
                f"read windows {list(reads)} need a time axis; this data has spectral shape "
                f"{tuple(spectral_shape)} (no time axis): use a single window"
            )
        return cls(reads, n_times)

    @property
    def n_windows(self) -> int:
        return len(self.reads)

    @cached_property
    def segment_reads(self) -> int:
        """Reads per segment: the windows' greatest common divisor."""
        divisor = 0
        for r in self.reads:
            divisor = gcd(divisor, r)
        return divisor

    @property
    def n_segments(self) -> int:
        return self.n_times // self.segment_reads

    @cached_property
    def segments(self) -> np.ndarray:
        """``(n_windows,)`` segments each window reads (the last: all)."""
        return np.asarray(self.reads, dtype=np.int64) // self.segment_reads

    @property
    def is_single(self) -> bool:
        """One window, the full curve: measurements are whole blocks, as without windows."""
        return self.n_windows == 1

    def unit_layout(self, layout: BlockLayout) -> BlockLayout:
        """The reconstructor's layout: ``layout`` itself for one segment, else its blocks split
        into segments (:class:`reconstruct.base.SegmentedLayout`)."""
        if self.n_segments == 1:
            return layout
        return SegmentedLayout.split(layout, self.n_segments)

    def unit_spectral_shape(self, spectral_shape: Sequence[int]) -> tuple[int, ...]:
        """The reconstructor's spectral shape: ``(V * S, T / S, *more)``."""
        shape = tuple(int(s) for s in spectral_shape)
        if self.n_segments == 1:
            return shape
        return (shape[0] * self.n_segments, shape[1] // self.n_segments, *shape[2:])

    def to_dict(self) -> list[int]:
        return list(self.reads)
