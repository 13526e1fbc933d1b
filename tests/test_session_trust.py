"""A session file that cannot be silently corrupted: bad settings leave no file, and a resume
refuses damaged records, a foreign instrument and settings that contradict the stored ones,
each with one line."""

from __future__ import annotations

import dataclasses
import json
import re

import h5py
import numpy as np
import pytest

import experiment
from agents.catalog import make_policy
from envs.live.loop import ExperimentConfig, run_experiment
from envs.live.session import Session, SessionError, record_checksum


def _config(tmp, name="s", **changes) -> ExperimentConfig:
    base = ExperimentConfig(
        # The loop's mechanics on the replay of a sample without memory (the served
        # replays below are such); tests/test_memory_live.py runs it with the memory.
        memory="off", programs="free",
        instrument="replay:twin:0", session=str(tmp / f"{name}.h5"), agent="gp-uncertainty",
        seed=2, stop_r2=None, initial_stride=3, check_blocks=6, estimate_every=5,
        max_measurements=50, algorithm_clock="model", twin_grid=8, twin_times=8,
        progress=False,
    )
    return dataclasses.replace(base, **changes)


def _cli(tmp, *options: str) -> list[str]:
    return [
        "run", "--instrument", "replay:twin:0", "--twin-grid", "8", "--twin-times", "8",
        "--initial-stride", "3", "--check-blocks", "6", "--max-measurements", "50",
        "--algorithm-clock", "model", "--stop-r2", "-1", "--seed", "2", "--quiet",
        "--session", str(tmp / "s.h5"), *options,
    ]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A session of 50 records, marked as interrupted so that it may be resumed."""
    tmp = tmp_path_factory.mktemp("recorded")
    result = run_experiment(_config(tmp), make_policy=make_policy)
    with h5py.File(result.session, "r+") as file:
        file.attrs["status"] = "stopped: interrupted (Ctrl-C)"
    return result.session.read_bytes()


@pytest.fixture
def session(tmp_path, recorded):
    """A fresh copy of the recorded session, to damage."""
    path = tmp_path / "s.h5"
    path.write_bytes(recorded)
    return path


def _one_line_error(call, match: str) -> str:
    with pytest.raises((SessionError, ValueError), match=match) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


def _resume(path, **changes):
    config = _config(path.parent, path.stem, **changes)
    return run_experiment(config, resume=True, make_policy=make_policy, given=set(changes))


# ------------------------------------------------------------------ settings checked first
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--agent", "nosuch"], "unknown policy 'nosuch'"),
        (["--reconstructor-options", '{"max_components": "x"}'], "max_components must be an int"),
        (["--reconstructor-options", '{"no_such": 1}'], "has no option 'no_such'"),
        (["--n-blocks", "0"], "--n-blocks must be >= 1"),
    ],
)
def test_a_bad_setting_is_one_line_and_leaves_no_file(tmp_path, capsys, options, message):
    try:
        status = experiment.main(_cli(tmp_path, *options))
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python experiment.py: error:") and "\n" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "s.h5").exists()


def test_help_shows_every_option_with_help_and_default(capsys):
    with pytest.raises(SystemExit):
        experiment.main(["run", "--help"])
    # Each option's entry: its line ("  --flag ...") and the indented lines under it.
    entries = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:", 1)[1])
    by_flag = {entry.split()[0]: " ".join(entry.split()[1:]) for entry in entries if entry}
    for field in dataclasses.fields(ExperimentConfig):
        if field.metadata.get("flag", True):
            flag = "--" + field.name.replace("_", "-")
            entry = by_flag[flag]
            assert len(entry.split()) > 4, (flag, entry)  # a help text
            if field.name not in ("instrument", "session"):  # required: no default
                assert "default" in entry, (flag, entry)


# ------------------------------------------------------------------ damaged files
def test_the_undamaged_copy_resumes(session):
    result = _resume(session, max_measurements=54)
    assert result.n_records == 54


@pytest.mark.parametrize("fill", ["random", "zeros"])
def test_four_kilobytes_overwritten_in_the_middle_are_refused(session, fill):
    with h5py.File(session, "r") as file:  # where the middle record's values lie
        middle = file["values"].id.get_chunk_info(25).byte_offset
    data = bytearray(session.read_bytes())
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8) if fill == "random" else np.zeros(4096)
    data[middle : middle + 4096] = bytes(noise.astype(np.uint8))
    session.write_bytes(bytes(data))
    _one_line_error(lambda: _resume(session), "damaged")


def test_an_edited_kind_fails_its_checksum(session):
    with h5py.File(session, "r+") as file:
        file["kind"][3] = 2
    _one_line_error(lambda: _resume(session), "record 3 .* fails its checksum")


def test_an_out_of_range_pixel_is_refused_even_with_a_forged_checksum(session):
    with h5py.File(session, "r+") as file:
        values, seconds = file["values"][5], file["instrument_seconds"][5]
        block, kind = int(file["block"][5]), int(file["kind"][5])
        file["pixel"][5] = 10_000
        file["checksum"][5] = record_checksum(10_000, block, kind, values, seconds)
    _one_line_error(lambda: _resume(session), "record 5 .* pixel 10000 outside")


def test_a_record_measured_twice_is_refused(session):
    with h5py.File(session, "r+") as file:
        pixel, block, kind = (int(file[n][0]) for n in ("pixel", "block", "kind"))
        file["pixel"][1], file["block"][1], file["kind"][1] = pixel, block, kind
        file["checksum"][1] = record_checksum(
            pixel, block, kind, file["values"][1], file["instrument_seconds"][1]
        )
    _one_line_error(lambda: _resume(session), "record 1 .* a second time")


def test_records_that_do_not_follow_from_the_settings_are_refused(session):
    """Two policy records swapped, checksums forged: the replay asks for the first policy
    choice and finds the second."""
    with h5py.File(session, "r+") as file:
        first = int(np.flatnonzero(file["kind"][()] == 2)[0])
        for name in ("pixel", "block", "values", "instrument_seconds", "checksum"):
            a, b = file[name][first], file[name][first + 1]
            file[name][first], file[name][first + 1] = b, a
    _one_line_error(lambda: _resume(session), f"record {first} .* the policy chooses")


def test_garbage_in_the_stored_settings_is_refused(session):
    data = bytearray(session.read_bytes())
    at = data.index(b'"agent"')
    data[at : at + 64] = bytes(np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8))
    session.write_bytes(bytes(data))
    _one_line_error(lambda: _resume(session), "damaged|checksum")


def test_an_edited_setting_fails_the_header_checksum(session):
    with h5py.File(session, "r+") as file:
        config = json.loads(file.attrs["config"])
        file.attrs["config"] = json.dumps({**config, "seed": 3}, sort_keys=True)
    _one_line_error(lambda: Session.open(session), "fail their checksum")


def test_a_session_of_the_unchecked_format_is_refused(session):
    with h5py.File(session, "r+") as file:
        file.attrs["format"] = "pfm-session/1"
    _one_line_error(lambda: _resume(session), "carry no checksums")


# ------------------------------------------------------------------ the resume's settings
def test_a_resume_on_other_data_is_refused(session):
    _one_line_error(lambda: _resume(session, instrument="replay:twin:1"), "instrument differs")


@pytest.mark.parametrize(
    "changes",
    [{"agent": "random"}, {"n_blocks": 2}, {"stop_r2": 0.5}, {"twin_grid": 10}, {"seed": 3}],
)
def test_a_setting_that_contradicts_the_stored_one_is_refused(session, changes):
    name = next(iter(changes)).replace("_", "-")
    _one_line_error(lambda: _resume(session, **changes), f"--{name} .* differs from the session")
    with Session.open(session) as reopened:  # and the file is as it was
        assert reopened.n_records == 50 and reopened.status.startswith("stopped")


def test_the_command_line_resume_checks_only_the_options_given(tmp_path, recorded, capsys):
    (tmp_path / "s.h5").write_bytes(recorded)
    status = experiment.main(_cli(tmp_path, "--resume", "--agent", "random"))
    assert status == 2 and "--agent 'random' differs" in capsys.readouterr().err
    # The stored settings apply; a larger measurement limit may be given.
    argv = ["run", "--resume", "--instrument", "replay:twin:0", "--session",
            str(tmp_path / "s.h5"), "--max-measurements", "53", "--quiet"]
    assert experiment.main(argv) == 0
    with Session.open(tmp_path / "s.h5") as reopened:
        assert reopened.n_records == 53
