"""The session file of a live experiment: every measurement appended and flushed as it arrives.

One HDF5 file per experiment. A crash (even SIGKILL) loses at most the measurement in flight:
each record is written and the file flushed before the reconstruction sees it, and a resumed
session rebuilds the reconstruction from the records alone.

Layout
------
Root attributes
    ``format`` (``"pfm-session/2"``), ``config`` (JSON of the experiment settings),
    ``instrument`` (JSON of what identifies the instrument's data, see
    :func:`envs.live.recording.instrument_identity`), ``grid_shape``, ``spectral_shape``,
    ``n_blocks`` (-1 when not given), ``header_checksum`` (CRC-32 of the format, config,
    instrument, shapes and axes), ``status`` (``"running"``, ``"stopped: REASON"``,
    ``"finished: REASON"``), ``created``.
``axes/<i>`` datasets
    Coordinates of each axis of ``(X, Y, V, *rest)``, with attributes ``name`` and ``unit``.
Record datasets (one row per measurement, growing along axis 0)
    ``values`` ``(N, F_b)`` float32 (the block's voltage slots x remaining spectral entries, C
    order; see ``reconstruct.BlockLayout``),
    ``block``, ``kind`` (:data:`KIND_INITIAL`, :data:`KIND_CHECK`, :data:`KIND_POLICY`,
    :data:`KIND_AUDIT`),
    ``instrument_seconds``, ``algorithm_seconds`` (decision and update), ``r2_estimate``,
    ``r2_true`` (NaN when unknown), ``checksum`` (CRC-32 of the record's pixel, block, kind,
    values and instrument seconds), ``notes_checksum`` (CRC-32 of its algorithm seconds and
    R^2 values, rewritten when they are set), and last ``pixel``.

Checks: :meth:`Session.open` refuses, with one line naming the first bad record, a file whose
header or any record fails its checksum, whose pixels, blocks or kinds are out of range, whose
instrument seconds are not finite and >= 0, that holds a (pixel, block) twice, or that has an
incomplete record anywhere but at the end (a crash cuts off the last record only). Files of
the older format ``"pfm-session/1"`` carry no checksums and are refused with a message saying
so: their records cannot be trusted on a resume.

Crash consistency: a record's ``pixel`` is written last and its fill value is -1, so the
complete records are the leading rows whose pixel is >= 0 and which every record dataset holds;
rows beyond that (a record cut off by a crash) are dropped when the session is reopened. The file
uses the default (oldest compatible) HDF5 format, whose superblock carries no "open for writing"
flag, so a killed writer leaves a file that opens again without repair tools.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from envs.data.dataset import Axis

FORMAT = "pfm-session/2"
#: The format before records carried checksums (refused: see the module notes).
UNCHECKED_FORMAT = "pfm-session/1"

#: Record kinds: the initial design, held-back check blocks, the policy's choices, and the
#: blocks of audit rounds (drawn to verify the accuracy estimate before a stop).
KIND_INITIAL, KIND_CHECK, KIND_POLICY, KIND_AUDIT = 0, 1, 2, 3
KIND_NAMES = {
    KIND_INITIAL: "initial", KIND_CHECK: "check", KIND_POLICY: "policy", KIND_AUDIT: "audit"
}

_SCALAR_COLUMNS = {
    "block": ("i2", -1),
    "kind": ("i1", -1),
    "instrument_seconds": ("f8", np.nan),
    "algorithm_seconds": ("f8", np.nan),
    "r2_estimate": ("f8", np.nan),
    "r2_true": ("f8", np.nan),
    "checksum": ("u4", 0),
    "notes_checksum": ("u4", 0),
}
#: Columns a record's ``notes_checksum`` covers (set after the measurement, may be rewritten).
_NOTES = ("algorithm_seconds", "r2_estimate", "r2_true")


def record_checksum(
    pixel: int, block: int, kind: int, values: np.ndarray, instrument_seconds: float
) -> int:
    """CRC-32 of a measurement as stored (the dtypes of the session's columns)."""
    crc = zlib.crc32(np.array([pixel], "<i4").tobytes())
    crc = zlib.crc32(np.array([block], "<i2").tobytes() + np.array([kind], "<i1").tobytes(), crc)
    crc = zlib.crc32(np.ascontiguousarray(values, "<f4").tobytes(), crc)
    return zlib.crc32(np.array([instrument_seconds], "<f8").tobytes(), crc)


def notes_checksum(algorithm_seconds: float, r2_estimate: float, r2_true: float) -> int:
    """CRC-32 of a record's notes (NaN included, bit for bit)."""
    return zlib.crc32(np.array([algorithm_seconds, r2_estimate, r2_true], "<f8").tobytes())


class SessionError(RuntimeError):
    """The session file cannot be created, read, or written (e.g. a full disk)."""


@dataclass
class Records:
    """Every complete record of a session, as arrays in arrival order."""

    pixel: np.ndarray
    block: np.ndarray
    kind: np.ndarray
    values: np.ndarray
    instrument_seconds: np.ndarray
    algorithm_seconds: np.ndarray
    r2_estimate: np.ndarray
    r2_true: np.ndarray

    def __len__(self) -> int:
        return int(self.pixel.size)


class Session:
    """An open session file. Create with :meth:`create`, reopen with :meth:`open`.

    Parameters
    ----------
    file
        The open ``h5py.File`` (use the class methods instead of building one directly).
    """

    def __init__(self, file: h5py.File) -> None:
        self.file = file
        self.path = Path(file.filename)
        self.config: dict[str, Any] = json.loads(file.attrs["config"])
        self.instrument: dict[str, Any] = json.loads(file.attrs.get("instrument", "{}"))
        self.grid_shape = tuple(int(s) for s in file.attrs["grid_shape"])
        self.spectral_shape = tuple(int(s) for s in file.attrs["spectral_shape"])
        self.n_blocks = int(file.attrs.get("n_blocks", -1))
        self.n_records = self._complete_rows()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        config: dict[str, Any],
        axes: list[Axis],
        block_features: int,
        overwrite: bool = False,
        *,
        instrument: dict[str, Any] | None = None,
        n_blocks: int | None = None,
    ) -> Session:
        """A new, empty session file at ``path``; ``instrument`` identifies the instrument's
        data (JSON-safe), ``n_blocks`` bounds the records' block indices.

        Raises
        ------
        SessionError
            When the file exists (and ``overwrite`` is False) or cannot be written.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise SessionError(
                f"session file {path} already exists: pass --resume to continue it, or choose "
                f"another path"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = h5py.File(path, "w")
            file.attrs["format"] = FORMAT
            file.attrs["config"] = json.dumps(config, sort_keys=True)
            file.attrs["grid_shape"] = [len(axes[0]), len(axes[1])]
            file.attrs["spectral_shape"] = [len(a) for a in axes[2:]]
            file.attrs["instrument"] = json.dumps(instrument or {}, sort_keys=True)
            file.attrs["n_blocks"] = -1 if n_blocks is None else int(n_blocks)
            file.attrs["status"] = "running"
            file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            group = file.create_group("axes")
            for i, axis in enumerate(axes):
                data = group.create_dataset(str(i), data=np.asarray(axis.values, dtype=np.float64))
                data.attrs["name"] = axis.name
                data.attrs["unit"] = axis.unit
            file.attrs["header_checksum"] = _header_checksum(file)
            # One record per chunk row: appending writes one small chunk, never rewrites others.
            file.create_dataset(
                "values", (0, block_features), maxshape=(None, block_features),
                chunks=(1, block_features), dtype="f4", fillvalue=np.nan,
            )
            for name, (dtype, fill) in _SCALAR_COLUMNS.items():
                file.create_dataset(
                    name, (0,), maxshape=(None,), chunks=(1024,), dtype=dtype, fillvalue=fill
                )
            file.create_dataset(
                "pixel", (0,), maxshape=(None,), chunks=(1024,), dtype="i4", fillvalue=-1
            )
            file.flush()
        except OSError as err:
            raise SessionError(f"cannot create session file {path}: {err}") from None
        return cls(file)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Session:
        """Reopen an existing session for appending; incomplete trailing rows are dropped."""
        path = Path(path)
        if not path.exists():
            raise SessionError(f"no session file at {path} to resume")
        try:
            file = h5py.File(path, "r+")
        except OSError as err:
            raise SessionError(f"cannot open session file {path}: {err}") from None
        try:
            session = cls._checked(file, path)
            session._truncate(session.n_records)
        except SessionError:
            file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
            # A damaged attribute heap or dataset header: h5py raises many kinds.
            file.close()
            raise SessionError(
                f"session file {path} is damaged and cannot be read ({err})"
            ) from None
        return session

    @classmethod
    def _checked(cls, file: h5py.File, path: Path) -> Session:
        """The session of an open file, after checking its header and every record."""
        format_ = file.attrs.get("format")
        if format_ == UNCHECKED_FORMAT:
            raise SessionError(
                f"{path} was written in the format {UNCHECKED_FORMAT!r}, whose records carry no "
                f"checksums, so a resume cannot trust them; start a new session"
            )
        if format_ != FORMAT:
            raise SessionError(f"{path} is not a session file (format {FORMAT!r} expected)")
        if int(file.attrs["header_checksum"]) != _header_checksum(file):
            raise SessionError(
                f"the settings stored in {path} fail their checksum: the file is damaged"
            )
        session = cls(file)
        session._check_records()
        return session

    def _check_records(self) -> None:
        """SessionError naming the first record that is damaged or out of range."""
        n = self.n_records
        lengths = {len(self.file[name]) for name in ("values", "pixel", *_SCALAR_COLUMNS)}
        if (np.asarray(self.file["pixel"][: min(lengths)]) < 0).sum() > 1 or (
            min(lengths) > n + 1
        ):
            raise SessionError(
                f"record {n} of {self.path} is incomplete but records follow it: the file is "
                f"damaged"
            )
        records = self.records()
        n_pixels = self.grid_shape[0] * self.grid_shape[1]
        seen: set[tuple[int, int]] = set()
        checksums = np.asarray(self.file["checksum"][:n])
        notes = np.asarray(self.file["notes_checksum"][:n])
        for i in range(n):
            pixel, block, kind = int(records.pixel[i]), int(records.block[i]), int(records.kind[i])
            seconds = float(records.instrument_seconds[i])
            problem = None
            if record_checksum(pixel, block, kind, records.values[i], seconds) != checksums[i]:
                problem = "fails its checksum"
            elif notes_checksum(*(float(getattr(records, c)[i]) for c in _NOTES)) != notes[i]:
                problem = "has notes (algorithm seconds, R^2) that fail their checksum"
            elif not 0 <= pixel < n_pixels:
                problem = f"has pixel {pixel} outside [0, {n_pixels})"
            elif not 0 <= block < (self.n_blocks if self.n_blocks > 0 else 2**15):
                problem = f"has block {block} outside [0, {self.n_blocks})"
            elif kind not in KIND_NAMES:
                problem = f"has kind {kind}, not one of {sorted(KIND_NAMES)}"
            elif not (np.isfinite(seconds) and seconds >= 0):
                problem = f"has instrument seconds {seconds}"
            elif (pixel, block) in seen:
                problem = f"measures pixel {pixel} block {block} a second time"
            if problem is not None:
                raise SessionError(f"record {i} of {self.path} {problem}: the file is damaged")
            seen.add((pixel, block))

    def _complete_rows(self) -> int:
        pixel = self.file["pixel"]
        n = min(len(self.file[name]) for name in ("values", "pixel", *_SCALAR_COLUMNS))
        valid = np.asarray(pixel[:n]) >= 0
        return int(n if valid.all() else np.argmin(valid))

    def _truncate(self, n: int) -> None:
        for name in ("values", "pixel", *_SCALAR_COLUMNS):
            if len(self.file[name]) != n:
                self.file[name].resize(n, axis=0)
        self.file.flush()

    # ------------------------------------------------------------------ reading
    def axes(self) -> list[Axis]:
        """The axes stored with the session."""
        group = self.file["axes"]
        stored = [group[str(i)] for i in range(len(group))]
        return [Axis(str(d.attrs["name"]), d[()], str(d.attrs["unit"])) for d in stored]

    def records(self) -> Records:
        """Every complete record, in arrival order."""
        n = self.n_records
        names = ("pixel", *(c for c in _SCALAR_COLUMNS if not c.endswith("checksum")))
        columns = {name: np.asarray(self.file[name][:n]) for name in names}
        return Records(values=np.asarray(self.file["values"][:n]), **columns)

    def notes(self, record: int) -> dict[str, float]:
        """The notes of one record: ``algorithm_seconds``, ``r2_estimate``, ``r2_true``."""
        return {name: float(self.file[name][record]) for name in _NOTES}

    @property
    def status(self) -> str:
        return str(self.file.attrs["status"])

    # ------------------------------------------------------------------ writing
    def append(
        self,
        pixel: int,
        block: int,
        kind: int,
        values: np.ndarray,
        instrument_seconds: float,
        algorithm_seconds: float = float("nan"),
        r2_estimate: float = float("nan"),
        r2_true: float = float("nan"),
    ) -> None:
        """Write one record and flush it to disk before returning.

        Raises
        ------
        SessionError
            When the write fails (full disk, file gone); the records written before stay intact.
        """
        n = self.n_records
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        row = {
            "block": block, "kind": kind, "instrument_seconds": instrument_seconds,
            "algorithm_seconds": algorithm_seconds, "r2_estimate": r2_estimate, "r2_true": r2_true,
            "checksum": record_checksum(pixel, block, kind, values, instrument_seconds),
            "notes_checksum": notes_checksum(algorithm_seconds, r2_estimate, r2_true),
        }
        try:
            self._write_row("values", n, values)
            for name, value in row.items():
                self._write_row(name, n, value)
            self._write_row("pixel", n, int(pixel))  # last: marks the record complete
            self.file.flush()
        except (OSError, RuntimeError) as err:
            raise SessionError(
                f"could not write measurement {n} to {self.path} ({err}); is the disk full? "
                f"The {n} measurements before it are saved and the session can be resumed"
            ) from None
        self.n_records = n + 1

    def _write_row(self, name: str, row: int, value: Any) -> None:
        data = self.file[name]
        if len(data) <= row:
            data.resize(row + 1, axis=0)
        data[row] = value

    def set_estimate(
        self, r2_estimate: float, r2_true: float = float("nan"), record: int | None = None
    ) -> None:
        """Store the accuracy estimate (and the true R^2, when known) on ``record`` (default:
        the last one)."""
        self.set_notes(record, r2_estimate=r2_estimate, r2_true=r2_true)

    def set_notes(self, record: int | None = None, **notes: float) -> None:
        """Set some of a record's notes (``algorithm_seconds``, ``r2_estimate``, ``r2_true``;
        default record: the last) and rewrite their checksum."""
        if self.n_records == 0:
            return
        index = self.n_records - 1 if record is None else int(record)
        unknown = set(notes) - set(_NOTES)
        if unknown or not 0 <= index < self.n_records:
            raise ValueError(f"no note(s) {sorted(unknown)} or no record {index} to set them on")
        try:
            current = {name: float(self.file[name][index]) for name in _NOTES}
            current.update({name: float(value) for name, value in notes.items()})
            for name in notes:
                self.file[name][index] = current[name]
            self.file["notes_checksum"][index] = notes_checksum(*(current[c] for c in _NOTES))
            self.file.flush()
        except (OSError, RuntimeError) as err:
            raise SessionError(
                f"could not write to {self.path} ({err}); is the disk full?"
            ) from None

    def set_status(self, status: str) -> None:
        """Record why the session ended (or that it is running); best effort on a failing disk."""
        try:
            self.file.attrs["status"] = status
            self.file.flush()
        except (OSError, RuntimeError):
            pass  # the status is informative only; the records decide what a resume does

    def close(self) -> None:
        """Flush and close the file (safe to call twice)."""
        if self.file.id.valid:
            try:
                self.file.close()
            except (OSError, RuntimeError):
                pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header_checksum(file: h5py.File) -> int:
    """CRC-32 of what a session's settings are: format, config, instrument, shapes, axes."""
    parts = [
        str(file.attrs["format"]), str(file.attrs["config"]), str(file.attrs.get("instrument", "")),
        repr([int(v) for v in file.attrs["grid_shape"]]),
        repr([int(v) for v in file.attrs["spectral_shape"]]),
        repr(int(file.attrs.get("n_blocks", -1))),
    ]
    crc = zlib.crc32("\n".join(parts).encode())
    group = file["axes"]
    for i in range(len(group)):
        axis = group[str(i)]
        crc = zlib.crc32(f"{axis.attrs['name']}|{axis.attrs['unit']}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(axis[()], "<f8").tobytes(), crc)
    return crc
