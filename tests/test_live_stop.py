"""The audited accuracy estimate and the live loop's stop rule: a known answer, bad input, a
resume in the middle of an audit round, and the study on a tiny twin."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from fake_instruments import HangingInstrument

from agents.catalog import make_policy
from envs.data.twin import twin_dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.server import InstrumentServer, serving
from envs.live.accuracy_estimate import (
    audit_r2,
    calibrated_error,
    error_weights,
    plan_audit,
    projected_r2,
)
from envs.live.loop import ExperimentConfig, ExperimentStopped, run_experiment
from envs.live.session import KIND_AUDIT, Session
from studies import live_stop


def _blocks(seed: int = 0, pixels: int = 40, blocks: int = 4, features: int = 6):
    """An estimate, the truth it misses (a known error on every unmeasured block) and a
    measured mask with the first block of every pixel measured."""
    rng = np.random.default_rng(seed)
    estimate = rng.normal(size=(pixels, blocks, features))
    measured = np.zeros((pixels, blocks), dtype=bool)
    measured[:, 0] = True
    truth = estimate + rng.normal(scale=0.3, size=estimate.shape) * ~measured[..., None]
    return estimate, truth, measured


def _pool_values(truth, plan):
    return truth[plan.pairs[:, 0], plan.pairs[:, 1]]


def test_audit_with_weights_equal_to_the_errors_is_exact():
    """Importance sampling with q proportional to each block's error: every draw gives the
    total, so the estimate is the exact R^2 of the SS ~ spread + SSE rule, with no spread."""
    estimate, truth, measured = _blocks()
    error = ((truth - estimate) ** 2).sum(2)
    plan = plan_audit(error, ~measured, n_draws=10, seed=3, uniform_share=0.0)
    result = audit_r2(estimate, plan, _pool_values(truth, plan))
    spread = ((estimate - estimate.mean(0)) ** 2).sum()
    expected = 1 - error.sum() / (spread + error.sum())
    assert result.r2 == pytest.approx(expected, rel=1e-12)
    assert result.lower == pytest.approx(expected, rel=1e-9)
    assert result.error == pytest.approx(error.sum(), rel=1e-12)


def test_audit_is_unbiased_and_its_bound_lies_below():
    estimate, truth, measured = _blocks(seed=1)
    error = ((truth - estimate) ** 2).sum(2)
    weights = np.ones_like(error) * ~measured  # says nothing about where the error is
    errors, lowers = [], []
    for seed in range(300):
        plan = plan_audit(weights, ~measured, n_draws=12, seed=seed)
        result = audit_r2(estimate, plan, _pool_values(truth, plan))
        errors.append(result.error)
        lowers.append(result.lower <= result.r2)
    assert np.mean(errors) == pytest.approx(error.sum(), rel=0.05)
    assert all(lowers)


def test_plan_audit_is_seeded_distinct_and_in_raster_order():
    _, _, measured = _blocks()
    weights = np.where(measured, 0.0, 1.0)
    first = plan_audit(weights, ~measured, 30, seed=[7, 100, 1])
    again = plan_audit(weights, ~measured, 30, seed=[7, 100, 1])
    np.testing.assert_array_equal(first.pairs, again.pairs)
    flat = first.pairs[:, 0] * measured.shape[1] + first.pairs[:, 1]
    assert (np.diff(flat) > 0).all() and not measured[tuple(first.pairs.T)].any()
    assert first.draws.sum() == 30


def test_error_weights_follow_variance_and_pixel_energy():
    estimate = np.zeros((3, 2, 1))
    estimate[:, 0, 0] = [-2.0, 0.0, 2.0]  # measured block 0: pixel energies 4, 0 and 4
    measured = np.array([[True, False], [True, False], [False, False]])
    variance = np.ones((3, 2))
    weights = error_weights(estimate, variance, measured, power=0.5)
    assert weights[0, 0] == 0 and weights[1, 0] == 0  # measured
    # Pixel 2 has nothing measured: it takes the median energy (2), like a typical pixel.
    assert weights[0, 1] / weights[2, 1] == pytest.approx(np.sqrt(4 / 2))


def test_projected_r2_applies_the_correction_to_the_calibrated_error():
    estimate, truth, measured = _blocks(seed=2)
    variance = np.where(measured, 0.0, 0.09)
    checks = np.array([[0, 1], [5, 2]])
    values = truth[checks[:, 0], checks[:, 1]]
    error = calibrated_error(estimate, variance, checks, values, measured)
    spread = ((estimate - estimate.mean(0)) ** 2).sum()
    projected = projected_r2(estimate, variance, measured, checks, values, 2.0)
    assert projected == pytest.approx(1 - 2 * error / (spread + 2 * error))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, v, m: error_weights(e * np.nan, v, m), "NaN/inf"),
        (lambda e, v, m: error_weights(np.zeros((0, 4, 6)), v[:0], m[:0]), "non-empty"),
        (lambda e, v, m: error_weights(e, v[:, :2], m), "must both be"),
        (lambda e, v, m: plan_audit(v, np.zeros_like(m), 8, seed=0), "no unmeasured block"),
        (lambda e, v, m: plan_audit(v, ~m, 1, seed=0), "at least 2 draws"),
        (lambda e, v, m: plan_audit(v * np.nan, ~m, 8, seed=0), "finite"),
    ],
)
def test_bad_input_is_one_line_error(call, message):
    estimate, _, measured = _blocks()
    variance = np.where(measured, 0.0, 1.0)
    with pytest.raises(ValueError, match=message) as raised:
        call(estimate, variance, measured)
    assert "\n" not in str(raised.value)


def test_audit_rejects_values_of_the_wrong_shape_or_none_usable():
    estimate, truth, measured = _blocks()
    plan = plan_audit(np.where(measured, 0.0, 1.0), ~measured, 8, seed=0)
    with pytest.raises(ValueError, match="audit values must have shape"):
        audit_r2(estimate, plan, _pool_values(truth, plan)[:, :2])
    with pytest.raises(ValueError, match="no audited block"):
        audit_r2(estimate, plan, _pool_values(truth, plan) * np.nan)


# ------------------------------------------------------------------ the live loop
TWIN = {"grid": (10, 10), "n_times": 8}


def _config(tmp, name, **changes) -> ExperimentConfig:
    """A 10 x 10 twin session whose first audit round (records 158-169) fails and whose second
    (176-186) passes the 0.8 target."""
    base = ExperimentConfig(
        # The loop's mechanics on the replay of a sample without memory (the served
        # replays below are such); tests/test_memory_live.py runs it with the memory.
        memory="off", programs="free",
        instrument="twin:1", session=str(tmp / f"{name}.h5"), agent="gp-uncertainty-per-second",
        seed=5, stop_r2=0.8, initial_stride=3, check_blocks=12, audit_draws=12,
        max_measurements=300, algorithm_clock="model", twin_grid=10, twin_times=8,
        progress=False,
    )
    return dataclasses.replace(base, **changes)


def _replay():
    dataset = twin_dataset(1, **TWIN)
    return ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))


def _records(result):
    with Session.open(result.session) as session:
        return session.records()


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    result = run_experiment(
        _config(tmp_path_factory.mktemp("audited"), "audited"), make_policy=make_policy
    )
    return result, _records(result)


def test_the_loop_stops_on_a_passed_audit_round(audited):
    result, records = audited
    audits = np.flatnonzero(records.kind == KIND_AUDIT)
    assert result.reason.startswith("audited R^2") and len(audits) >= 2
    assert audits[-1] == len(records) - 1  # the stop follows the round that passed
    summary = json.loads(result.summary.read_text())
    assert summary["r2_lower_bound"] >= 0.8 and summary["audit_measurements"] == len(audits)


@pytest.mark.parametrize("answers", [163, 180])  # in the round that fails, in the one that passes
def test_resume_during_or_after_an_audit_round_is_bit_exact(tmp_path, audited, answers):
    reference, ref_records = audited
    server = InstrumentServer(HangingInstrument(_replay(), answers=answers, hang_seconds=2))
    server.start()
    try:
        config = _config(tmp_path, "stopped", instrument=server.url, timeout=0.5)
        with pytest.raises(ExperimentStopped):
            run_experiment(config, make_policy=make_policy)
    finally:
        server.stop()
    with serving(_replay()) as url:
        resumed = run_experiment(
            dataclasses.replace(config, instrument=url), resume=True, make_policy=make_policy
        )
    records = _records(resumed)
    for name in ("pixel", "block", "kind", "values", "instrument_seconds", "r2_estimate"):
        np.testing.assert_array_equal(getattr(records, name), getattr(ref_records, name))
    assert resumed.reason == reference.reason


def test_study_runs_on_a_tiny_twin(tmp_path, capsys):
    report = live_stop.main([
        "--grids", "10", "--seeds", "1", "--start", "100000", "--twin-times", "8",
        "--initial-stride", "3", "--check-blocks", "12", "--audit-draws", "12",
        "--target", "0.8", "--estimates", "sampled,calibrated", "--out", str(tmp_path),
        "--quiet",
    ])
    assert [row["estimate"] for row in report["rows"]] == ["sampled", "calibrated"]
    row = report["rows"][0]
    assert row["audit_measurements"] > 0 and len(row["trace"]["estimate"]) > 0
    assert set(report["goals"]) == {"sampled", "calibrated"}
    for name in ("live_stop.json", "live_stop.csv", "live_stop.png"):
        assert (tmp_path / name).exists()
    assert "goal" in capsys.readouterr().out
    assert report["settings"]["memory"] == "auto" and report["settings"]["programs"] == "sequence"


def test_study_passes_the_sample_it_assumes_to_the_live_loop(tmp_path, monkeypatch):
    seen = []

    def fake_run_one(run, estimate, settings, sessions, tolerance):
        seen.append((settings["memory"], settings["programs"]))
        raise SystemExit(0)

    monkeypatch.setattr(live_stop, "run_one", fake_run_one)
    with pytest.raises(SystemExit):
        live_stop.main(["--memory", "off", "--programs", "free", "--out", str(tmp_path),
                        "--quiet"])
    assert seen == [("off", "free")]


def test_study_refuses_a_training_seed_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        live_stop.main(["--start", "5", "--out", str(tmp_path)])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "training seed" in error and "\n" not in error
