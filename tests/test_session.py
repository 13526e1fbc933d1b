"""The session file: appended records survive reopening, cut-off records are dropped, write
failures are clear errors that keep earlier records."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from envs.data.dataset import default_axes
from envs.live.session import KIND_CHECK, KIND_POLICY, Session, SessionError

AXES = default_axes((4, 5, 8, 3))
FEATURES = 2 * 3  # a block of 2 voltages x 3 read-outs


def _values(i: int) -> np.ndarray:
    return np.arange(FEATURES, dtype=np.float32) + 10 * i


def test_records_round_trip_and_resume_appending(tmp_path):
    path = tmp_path / "s.h5"
    with Session.create(path, {"seed": 3}, AXES, FEATURES) as session:
        for i in range(3):
            session.append(i, i % 4, KIND_POLICY, _values(i), 1.5 * i, 0.01)
        session.set_estimate(0.7, 0.8)
    with pytest.raises(SessionError, match="already exists"):
        Session.create(path, {}, AXES, FEATURES)
    with Session.open(path) as session:
        assert session.config == {"seed": 3}
        assert session.grid_shape == (4, 5) and session.spectral_shape == (8, 3)
        assert session.axes() == AXES
        session.append(7, 1, KIND_CHECK, _values(7), 2.0)
        records = session.records()
    assert len(records) == 4
    np.testing.assert_array_equal(records.pixel, [0, 1, 2, 7])
    np.testing.assert_array_equal(records.kind, [KIND_POLICY] * 3 + [KIND_CHECK])
    np.testing.assert_array_equal(records.values[3], _values(7))
    assert records.r2_estimate[2] == 0.7 and np.isnan(records.r2_estimate[3])


def test_record_cut_off_by_a_crash_is_dropped_on_reopen(tmp_path):
    path = tmp_path / "s.h5"
    with Session.create(path, {}, AXES, FEATURES) as session:
        session.append(0, 0, KIND_POLICY, _values(0), 1.0)
        session.append(1, 0, KIND_POLICY, _values(1), 1.0)
        # What a kill between writing the values and the pixel leaves behind:
        session.file["values"].resize(3, axis=0)
        session.file["block"].resize(3, axis=0)
        session.file["pixel"].resize(3, axis=0)  # fill value -1: incomplete
    with Session.open(path) as session:
        assert session.n_records == 2
        assert len(session.file["values"]) == 2
        session.append(2, 0, KIND_POLICY, _values(2), 1.0)
        np.testing.assert_array_equal(session.records().pixel, [0, 1, 2])


def test_full_disk_is_a_clear_error_and_keeps_earlier_records(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    session = Session.create(path, {}, AXES, FEATURES)
    session.append(0, 0, KIND_POLICY, _values(0), 1.0)

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(session.file, "flush", full_disk)
    with pytest.raises(SessionError, match="disk full.*1 measurements before it are saved"):
        session.append(1, 0, KIND_POLICY, _values(1), 1.0)
    monkeypatch.undo()
    session.close()
    with Session.open(path) as reopened:
        assert reopened.n_records >= 1
        np.testing.assert_array_equal(reopened.records().values[0], _values(0))


def test_open_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(SessionError, match="no session file"):
        Session.open(tmp_path / "missing.h5")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["x"] = 1
    with pytest.raises(SessionError, match="not a session file"):
        Session.open(tmp_path / "other.h5")
