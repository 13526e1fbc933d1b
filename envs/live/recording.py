"""The instrument side of a live session: open the instrument, identify its data, and record
every measurement in the session file before anyone else sees it.

:class:`SessionInstrument` is the instrument the live loop's env measures through: it appends
each answer to the session file (flushed) before returning it, and on a resume answers the
recorded requests from the file first (each must match its record, else
:class:`RecordMismatch`). :func:`instrument_identity` is what the session file stores of the
instrument so that a resume on other data is refused (:func:`check_same_instrument`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.dataset import Dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, PacedInstrument
from envs.instruments.memory import instrument_for, memory_setting
from envs.instruments.remote import InstrumentError, RemoteInstrument
from envs.live.session import KIND_INITIAL, KIND_NAMES, Records, Session, SessionError
from reconstruct.base import BlockLayout


def open_instrument(
    spec: str,
    *,
    timeout: float = 30.0,
    pace: float = 0.0,
    twin_options: dict[str, Any] | None = None,
    memory: str = "auto",
) -> tuple[Instrument, Dataset | None]:
    """The instrument named by ``spec``, and the local dataset when there is one.

    ``http://HOST:PORT`` gives a :class:`RemoteInstrument` (no dataset: the server holds the
    sample, and its memory); ``replay:SPEC`` or a bare ``SPEC`` (``twin:SEED``, a file path)
    the local instrument of that data (:func:`envs.instruments.memory.instrument_for`: a twin
    with its sample's memory, a file replayed; ``memory`` ``"auto"``, ``"on"`` or ``"off"``),
    priced by the default cost model fitted to the data's time axis. ``pace > 0`` paces it in
    real time.
    """
    dataset: Dataset | None = None
    if spec.startswith(("http://", "https://")):
        instrument: Instrument = RemoteInstrument(spec, timeout=timeout)
    else:
        from envs.data.sources import open_data

        data_spec = spec.removeprefix("replay:")
        is_twin = data_spec == "twin" or data_spec.startswith("twin:")
        dataset = open_data(data_spec, **((twin_options or {}) if is_twin else {}))
        instrument = instrument_for(
            dataset, CostModel().for_axes(dataset.axes), memory_setting(memory)
        )
    if pace > 0:
        instrument = PacedInstrument(instrument, pace)
    return instrument, dataset


def instrument_identity(instrument: Instrument, dataset: Dataset | None, spec: str) -> dict:
    """What identifies the data an instrument measures, stored in the session file so that a
    resume on different data is refused (:func:`check_same_instrument`).

    Every instrument: its shapes and the CRC-32 of its axes (names, units, coordinates). A
    local replay adds its data spec (``replay:`` dropped) and the CRC-32 of its data, which
    tells two twins of the same shape apart; of a remote instrument only what its ``describe``
    answer holds can be compared (shapes and axes).
    """
    crc = 0
    for axis in instrument.axes:
        crc = zlib.crc32(f"{axis.name}|{axis.unit}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(axis.values, "<f8").tobytes(), crc)
    identity: dict[str, Any] = {
        "grid_shape": [int(s) for s in instrument.grid_shape],
        "spectral_shape": [int(s) for s in instrument.spectral_shape],
        "axes_crc32": crc,
    }
    if dataset is not None:
        identity["data"] = spec.removeprefix("replay:")
        identity["data_crc32"] = zlib.crc32(np.ascontiguousarray(dataset.data, "<f4").tobytes())
    return identity


def check_same_instrument(stored: dict, now: dict, path: str | Path) -> None:
    """SessionError (one line) when ``now`` identifies other data than ``stored``: every key
    both hold must agree (so a replay's data checksum is compared with a replay's only)."""
    for key in sorted(set(stored) & set(now)):
        if stored[key] != now[key] and not (key == "data" and "data_crc32" in now):
            raise SessionError(
                f"the instrument differs from the one {path} was recorded on ({key}: "
                f"{now[key]!r}, recorded {stored[key]!r}); resume it on the same instrument"
            )


class RecordMismatch(SessionError):
    """On a resume, a record is not what the session's settings lead to (an edited or foreign
    file): the resume stops before measuring anything and leaves the file as it was."""


class SessionInstrument:
    """The instrument as the env sees it in a live session: every measurement is in the
    session file before the env (and so the reconstruction) gets it.

    While the session holds records not yet served (a resume), a request is answered from the
    next record, which must be the same (pixel, block, kind): the env rebuilds its state by
    the same operations as the run that wrote them. After the last record, requests go to the
    live instrument (its tip moved to the last recorded pixel first, not charged) and each
    answer is checked, appended to the session (flushed) and returned. The loop sets
    :attr:`kind` before each operation.
    """

    def __init__(self, instrument: Instrument, on_nan: str) -> None:
        self.inner = instrument
        self.on_nan = on_nan
        self.grid_shape = tuple(instrument.grid_shape)
        self.spectral_shape = tuple(instrument.spectral_shape)
        self.axes = list(instrument.axes)
        self.kind = KIND_INITIAL
        self.session: Session | None = None
        self._records: Records | None = None
        self._layout: BlockLayout | None = None
        self._next = 0  # the record the next request reads or writes
        self._replayed_tip: int | None = None

    def attach(self, session: Session, layout: BlockLayout) -> None:
        """Record into ``session`` (serving its records first) with the env's voltage blocks."""
        self.session, self._layout = session, layout
        self._records = session.records()

    @property
    def replaying(self) -> bool:
        """Whether records remain to be served."""
        return self._records is not None and self._next < len(self._records)

    @property
    def next_record(self) -> tuple[int, int, int]:
        """``(pixel, block, kind)`` of the next record to serve (while :attr:`replaying`)."""
        records, i = self._records, self._next
        return int(records.pixel[i]), int(records.block[i]), int(records.kind[i])

    @property
    def last_index(self) -> int:
        """Index of the record of the latest measurement (-1 before the first)."""
        return self._next - 1

    @property
    def tip_pixel(self) -> int:
        return self.inner.tip_pixel if self._replayed_tip is None else self._replayed_tip

    def go_to(self, pixel: int) -> float:
        return self.inner.go_to(pixel)

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        if self.session is None or reads is not None:
            raise RuntimeError("a live session measures whole blocks, after attach()")
        block = int(self._layout.block_of_voltage[int(np.asarray(voltages)[0])])
        if self.replaying:
            return self._serve(int(pixel), block)
        if self._replayed_tip is not None:
            if self.inner.tip_pixel != self._replayed_tip:
                # Not charged, so a resumed session spends what an uninterrupted one does.
                self.inner.go_to(self._replayed_tip)
            self._replayed_tip = None
        values, seconds = self.inner.measure(pixel, voltages)
        values = np.asarray(values, dtype=np.float32)
        expected = (len(voltages), *self.spectral_shape[1:])
        if values.shape != expected:
            raise InstrumentError(
                f"the instrument returned values of shape {values.shape} at pixel {pixel} block "
                f"{block}, expected {expected}"
            )
        if not np.isfinite(values).all() and self.on_nan == "stop":
            raise InstrumentError(
                f"the instrument returned NaN/inf at pixel {pixel} block {block} "
                f"({int((~np.isfinite(values)).sum())} of {values.size} values); rerun with "
                f"--on-nan skip to record such blocks as rejected and go on"
            )
        seconds = float(seconds)
        if not (np.isfinite(seconds) and seconds >= 0):
            raise InstrumentError(f"the instrument reported {seconds} s at pixel {pixel}")
        # Sessions store every block at one width: its slots (see reconstruct.BlockLayout).
        self.session.append(pixel, block, self.kind, self._layout.to_slots(block, values), seconds)
        self._next += 1
        return values, seconds

    def _serve(self, pixel: int, block: int) -> tuple[np.ndarray, float]:
        i, records = self._next, self._records
        simulated = self._simulated_sample()
        if (pixel, block, self.kind) != self.next_record:
            rp, rb, rk = self.next_record
            raise RecordMismatch(
                f"record {i} of {self.session.path} holds pixel {rp} block {rb} "
                f"({KIND_NAMES[rk]}) but the session asks for pixel {pixel} block {block} "
                f"({KIND_NAMES[self.kind]}) there: the records do not follow from its settings"
            )
        n = self._layout.n_applied(block)
        slots = records.values[i].reshape(self._layout.block_size, *self.spectral_shape[1:])
        if simulated is not None:
            # A simulated sample remembers its pulses: it receives the recorded measurement
            # again, so every pixel's state is where the interrupted run left it, and its
            # answer must be the record's.
            values, _ = simulated.measure(pixel, self._layout.voltages(block))
            if not np.array_equal(np.asarray(values, np.float32), slots[:n], equal_nan=True):
                raise RecordMismatch(
                    f"record {i} of {self.session.path} (pixel {pixel} block {block}) differs "
                    f"from what the simulated sample gives for the same history: the file or "
                    f"the instrument is not the one the session was recorded with"
                )
        self._next += 1
        self._replayed_tip = pixel
        return slots[:n].copy(), float(records.instrument_seconds[i])

    def _simulated_sample(self) -> Any:
        """The local simulated sample under the instrument (pacing bypassed), or None: a
        replay has no state to rebuild, and a remote or real sample keeps its own."""
        inner = getattr(self.inner, "inner", self.inner)
        return inner if hasattr(inner, "state_dict") else None
