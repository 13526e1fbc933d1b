"""The session file of a live experiment: every measurement appended and flushed as it arrives.

One HDF5 file per experiment. A crash (even SIGKILL) loses at most the measurement in flight:
each record is written and the file flushed before the reconstruction sees it, and a resumed
session rebuilds the reconstruction from the records alone.

Layout
------
Root attributes
    ``format`` (``"pfm-session/1"``), ``config`` (JSON of the experiment settings),
    ``grid_shape``, ``spectral_shape``, ``status`` (``"running"``, ``"stopped: REASON"``,
    ``"finished: REASON"``), ``created``.
``axes/<i>`` datasets
    Coordinates of each axis of ``(X, Y, V, *rest)``, with attributes ``name`` and ``unit``.
Record datasets (one row per measurement, growing along axis 0)
    ``values`` ``(N, F_b)`` float32 (the block's voltage slots x remaining spectral entries, C
    order; see ``reconstruct.BlockLayout``),
    ``block``, ``kind`` (:data:`KIND_INITIAL`, :data:`KIND_CHECK`, :data:`KIND_POLICY`,
    :data:`KIND_AUDIT`),
    ``instrument_seconds``, ``algorithm_seconds`` (decision and update), ``r2_estimate``,
    ``r2_true`` (NaN when unknown), and last ``pixel``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from envs.data.dataset import Axis

FORMAT = "pfm-session/1"

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
}


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
        self.grid_shape = tuple(int(s) for s in file.attrs["grid_shape"])
        self.spectral_shape = tuple(int(s) for s in file.attrs["spectral_shape"])
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
    ) -> Session:
        """A new, empty session file at ``path``.

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
            file.attrs["status"] = "running"
            file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            group = file.create_group("axes")
            for i, axis in enumerate(axes):
                data = group.create_dataset(str(i), data=np.asarray(axis.values, dtype=np.float64))
                data.attrs["name"] = axis.name
                data.attrs["unit"] = axis.unit
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
        if file.attrs.get("format") != FORMAT:
            file.close()
            raise SessionError(f"{path} is not a session file (format {FORMAT!r} expected)")
        session = cls(file)
        session._truncate(session.n_records)
        return session

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
        columns = {name: np.asarray(self.file[name][:n]) for name in ("pixel", *_SCALAR_COLUMNS)}
        return Records(values=np.asarray(self.file["values"][:n]), **columns)

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
        row = {
            "block": block, "kind": kind, "instrument_seconds": instrument_seconds,
            "algorithm_seconds": algorithm_seconds, "r2_estimate": r2_estimate, "r2_true": r2_true,
        }
        try:
            self._write_row("values", n, np.asarray(values, dtype=np.float32).reshape(-1))
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

    def set_estimate(self, r2_estimate: float, r2_true: float = float("nan")) -> None:
        """Store the accuracy estimate (and the true R^2, when known) on the last record."""
        if self.n_records == 0:
            return
        try:
            self.file["r2_estimate"][self.n_records - 1] = r2_estimate
            self.file["r2_true"][self.n_records - 1] = r2_true
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
