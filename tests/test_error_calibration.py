"""Tests of the online error calibration (reconstruct.error_calibration) and its use in
LowRankGP."""

import numpy as np
import pytest
import torch

from reconstruct.base import BlockLayout
from reconstruct.error_calibration import OnlineErrorCalibration
from reconstruct.lowrank import LowRankGP

SHAPE = (12, 12)
SPECTRAL = (8, 6)
LAYOUT = BlockLayout(8, 4)


def _calibrated(calibration, variance, energy, partial):
    return calibration.calibrate(
        torch.as_tensor(variance, dtype=torch.float64),
        torch.as_tensor(energy, dtype=torch.float64),
        torch.as_tensor(partial),
    ).numpy()


def test_without_samples_the_model_variance_is_reported_unchanged():
    calibration = OnlineErrorCalibration()
    variance = np.array([0.5, 2.0, 0.0])
    out = _calibrated(calibration, variance, [1.0, 10.0, 3.0], [False, True, True])
    np.testing.assert_allclose(out, variance)


def test_recovers_a_known_error_law_per_kind():
    """Errors that are 3x the variance times the energy at empty pixels and a third of the
    variance at partial ones: the fit learns both laws from samples of them alone."""
    rng = np.random.default_rng(0)
    calibration = OnlineErrorCalibration(window=400, shrinkage=1.0)
    for _ in range(400):
        partial = bool(rng.random() < 0.5)
        variance, energy = np.exp(rng.normal(size=2))
        error = variance / 3 if partial else 3.0 * variance * energy
        calibration.record(partial, variance, energy, error)
    variance, energy = np.array([0.2, 1.0, 5.0]), np.array([0.5, 2.0, 1.0])
    np.testing.assert_allclose(
        _calibrated(calibration, variance, energy, np.zeros(3, bool)), 3 * variance * energy,
        rtol=0.05,
    )
    np.testing.assert_allclose(
        _calibrated(calibration, variance, energy, np.ones(3, bool)), variance / 3, rtol=0.05
    )


def test_recent_samples_outweigh_old_ones():
    calibration = OnlineErrorCalibration(window=1000, shrinkage=0.0, memory=0.1)
    for _ in range(500):
        calibration.record(False, 1.0, 1.0, 10.0)  # the model was far off once ...
    for _ in range(500):
        calibration.record(False, 1.0, 1.0, 1.0)  # ... and is right now
    out = _calibrated(calibration, [1.0], [1.0], [False])
    assert 1.0 <= out[0] < 1.1


def test_bad_samples_are_skipped_and_bad_settings_refused():
    calibration = OnlineErrorCalibration()
    for sample in [(np.nan, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, -1.0), (1.0, 1.0, np.inf)]:
        calibration.record(False, *sample)
    assert calibration.n_samples == 0
    with pytest.raises(ValueError, match="window"):
        OnlineErrorCalibration(window=1)
    with pytest.raises(ValueError, match="memory"):
        OnlineErrorCalibration(memory=0.0)


def _field(seed: int = 0) -> np.ndarray:
    """A rank-3 field whose amplitude grows across the grid, plus noise, in block layout."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    maps = np.stack([np.sin(ii / (2 + r) + r) * np.cos(jj / (3 + r)) for r in range(3)], -1)
    maps *= (1 + jj / 3)[..., None]
    field = maps.reshape(-1, 3) @ rng.normal(size=(3, 48)) + 0.1 * rng.normal(size=(144, 48))
    return LAYOUT.to_blocks(field.reshape(*SHAPE, *SPECTRAL))


def _run(option: str, seed: int = 0) -> LowRankGP:
    field = _field()
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6,
                    error_calibration=option, seed=seed)
    for p in range(0, 144, 13):
        rec.add_many([p] * 4, range(4), field[p])
    for a in np.random.default_rng(seed).permutation(144 * 4)[:200]:
        p, b = divmod(int(a), 4)
        if not rec.measured[p, b]:
            rec.add(p, b, field[p, b])
    return rec


def test_online_calibration_changes_the_uncertainty_only():
    plain, online = _run("none"), _run("online")
    assert torch.equal(plain.estimate_blocks(), online.estimate_blocks())
    assert online.calibration is not None and online.calibration.n_samples > 100
    unc = online.uncertainty()
    assert torch.isfinite(unc).all() and (unc >= 0).all()
    assert (unc[online.measured] == 0).all() and (unc[~online.measured] > 0).all()
    assert not torch.allclose(unc, plain.uncertainty())
    # One number per block, the same on a rerun with the same seed.
    assert torch.equal(unc, _run("online").uncertainty())


def test_online_calibration_brings_the_level_to_the_error():
    field = torch.as_tensor(_field())
    ratios = {}
    for option in ("none", "online"):
        rec = _run(option)
        unmeasured = ~rec.measured
        error = (rec.estimate_blocks().double() - field).square().mean(-1)[unmeasured]
        ratios[option] = float(rec.uncertainty()[unmeasured].double().mean() / error.mean())
    assert abs(np.log(ratios["online"])) < abs(np.log(ratios["none"]))
    assert 0.67 <= ratios["online"] <= 1.5


def test_unknown_error_calibration_is_refused():
    with pytest.raises(ValueError, match="error_calibration"):
        LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", error_calibration="magic")
