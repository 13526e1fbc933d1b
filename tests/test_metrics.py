"""Tests for reconstruct.metrics: R^2 conventions, NaN handling, layouts, curve summaries."""

import math

import numpy as np
import pytest
import torch

from reconstruct.metrics import (
    auc_normalised,
    nrmse,
    psnr,
    r2_per_axis,
    r2_score,
    rmse,
    seconds_to_reach,
)


@pytest.fixture
def image() -> np.ndarray:
    """A (X, Y, V, T) tensor with spatial structure and a channel-dependent mean."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5, 4, 3)) + np.arange(12).reshape(1, 1, 4, 3)


def test_perfect_estimate_scores_one(image: np.ndarray) -> None:
    assert r2_score(image, image.copy(), spatial_axes=2) == 1.0


def test_mean_spectrum_scores_zero_exactly(image: np.ndarray) -> None:
    mean = np.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape)
    assert r2_score(image, mean, spatial_axes=2) == pytest.approx(0.0, abs=1e-12)


def test_global_mean_is_worse_than_channel_mean(image: np.ndarray) -> None:
    """The baseline is the per-channel mean, not one scalar mean: a scalar scores below 0."""
    assert r2_score(image, np.full_like(image, image.mean()), spatial_axes=2) < -0.5


def test_matches_closed_form(image: np.ndarray) -> None:
    est = image + np.random.default_rng(1).normal(scale=0.3, size=image.shape)
    mean = image.mean(axis=(0, 1), keepdims=True)
    expected = 1 - ((image - est) ** 2).sum() / ((image - mean) ** 2).sum()
    assert r2_score(image, est, spatial_axes=2) == pytest.approx(expected, rel=1e-12)


def test_block_layout_default_agrees_with_image_layout(image: np.ndarray) -> None:
    est = image * 0.9
    blocks_ref = image.reshape(30, 2, 6)
    blocks_est = est.reshape(30, 2, 6)
    assert r2_score(blocks_ref, blocks_est) == pytest.approx(r2_score(image, est, spatial_axes=2))


def test_torch_and_numpy_agree(image: np.ndarray) -> None:
    est = image * 0.8 + 0.1
    expected = r2_score(image, est, spatial_axes=2)
    as32 = torch.float32
    got = r2_score(torch.tensor(image, dtype=as32), torch.tensor(est, dtype=as32), spatial_axes=2)
    assert got == pytest.approx(expected, rel=1e-5)


def test_nan_reference_entries_are_ignored(image: np.ndarray) -> None:
    est = image + 0.1
    ref = image.copy()
    ref[0, 0] = np.nan  # one whole pixel missing
    est[0, 0] = 1e6  # whatever the estimate says there must not count
    kept = image.reshape(30, 4, 3)[1:]
    expected = r2_score(kept, kept + 0.1)
    assert r2_score(ref, est, spatial_axes=2) == pytest.approx(expected, rel=1e-12)


def test_nan_estimate_at_measured_entry_is_an_error(image: np.ndarray) -> None:
    est = image.copy()
    est[1, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="estimate contains NaN"):
        r2_score(image, est, spatial_axes=2)


def test_bad_shapes_and_axes(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape"):
        r2_score(image, image[:-1], spatial_axes=2)
    with pytest.raises(ValueError, match="spatial_axes"):
        r2_score(image, image, spatial_axes=5)
    with pytest.raises(ValueError, match="no finite"):
        r2_score(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_constant_reference_is_finite() -> None:
    ref = np.ones((4, 3))
    assert r2_score(ref, ref) == 1.0
    assert r2_score(ref, ref + 1) == 0.0


def test_r2_per_axis_localises_errors(image: np.ndarray) -> None:
    est = image.copy()
    est[:, :, 2] += np.random.default_rng(2).normal(size=est[:, :, 2].shape)  # voltage 2 only
    per_voltage = r2_per_axis(image, est, axis=2, spatial_axes=2)
    assert per_voltage.shape == (4,)
    np.testing.assert_allclose(per_voltage[[0, 1, 3]], 1.0)
    assert per_voltage[2] < 0.9
    # Per-axis sums add up to the total: the total score is a weighted mean of the parts.
    assert per_voltage.min() <= r2_score(image, est, spatial_axes=2) <= per_voltage.max()


def test_r2_per_axis_all_nan_index(image: np.ndarray) -> None:
    ref = image.copy()
    ref[..., 1] = np.nan
    scores = r2_per_axis(ref, image, axis=-1, spatial_axes=2)
    assert np.isnan(scores[1]) and np.all(scores[[0, 2]] == 1.0)
    with pytest.raises(ValueError, match="axis"):
        r2_per_axis(image, image, axis=7)


def test_rmse_nrmse_psnr() -> None:
    ref = np.array([[0.0, 2.0], [4.0, np.nan]])
    est = np.array([[1.0, 2.0], [3.0, 100.0]])
    assert rmse(ref, est) == pytest.approx(math.sqrt(2 / 3))
    assert nrmse(ref, est) == pytest.approx(math.sqrt(2 / 3) / 4)
    assert psnr(ref, est) == pytest.approx(20 * math.log10(4 / math.sqrt(2 / 3)))
    assert psnr(ref, np.nan_to_num(ref)) == math.inf


def test_auc_step_curve() -> None:
    # 0 until t=2, then 0.5 until t=6, then 1.0 until the budget 10: (0*2 + 0.5*4 + 1*4) / 10.
    assert auc_normalised([2, 6], [0.5, 1.0], 10) == pytest.approx(0.6)
    assert auc_normalised([2, 6], [0.5, 1.0], 10, start=-1.0) == pytest.approx(0.4)
    # Measurements past the budget are ignored; a constant curve integrates to its value.
    assert auc_normalised([0, 20], [0.7, 1.0], 10) == pytest.approx(0.7)
    assert auc_normalised([], [], 5, start=0.25) == pytest.approx(0.25)


def test_auc_rejects_bad_curves() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        auc_normalised([3, 1], [0.1, 0.2], 10)
    with pytest.raises(ValueError, match="must match"):
        auc_normalised([1, 2], [0.1], 10)
    with pytest.raises(ValueError, match="total_seconds"):
        auc_normalised([1], [0.1], 0)


def test_seconds_to_reach() -> None:
    t, a = [1.0, 2.0, 3.0, 4.0], [0.5, 0.91, 0.89, 0.96]
    assert seconds_to_reach(t, a, 0.90) == 2.0
    assert seconds_to_reach(t, a, 0.95) == 4.0
    assert seconds_to_reach(t, a, 0.99) is None


def test_inputs_are_not_modified(image: np.ndarray) -> None:
    ref = image.copy()
    ref[0, 0, 0, 0] = np.nan
    est = image + 0.5
    ref_before, est_before = ref.copy(), est.copy()
    r2_score(ref, est, spatial_axes=2)
    r2_per_axis(ref, est, axis=2, spatial_axes=2)
    np.testing.assert_array_equal(ref, ref_before)
    np.testing.assert_array_equal(est, est_before)


def test_dynamics_r2_sees_the_relaxation_the_tensor_r2_misses():
    """Flat curves at the right levels keep a high tensor R^2 but score below 0 on the
    dynamics; the exact relaxation scores 1; the grid's mean relaxation at every pixel 0."""
    from reconstruct.metrics import dynamics_r2, relaxation_part

    rng = np.random.default_rng(0)
    levels = rng.normal(size=(6, 5, 4, 1)) * 10.0
    decay = np.exp(-np.arange(8) / 3.0)
    amplitude = rng.uniform(0.5, 1.5, size=(6, 5, 4, 1))
    truth = levels + amplitude * decay
    flat = np.broadcast_to(truth.mean(axis=-1, keepdims=True), truth.shape)
    assert r2_score(truth, flat, spatial_axes=2) > 0.95
    assert dynamics_r2(truth, flat) < 0.0
    assert dynamics_r2(truth, truth) == pytest.approx(1.0)
    mean_curve = levels + amplitude.mean(axis=(0, 1), keepdims=True) * decay
    assert dynamics_r2(truth, mean_curve) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(relaxation_part(truth).numpy().mean(axis=-1), 0.0, atol=1e-12)


def test_dynamics_r2_needs_a_time_axis_and_ignores_nan():
    from reconstruct.metrics import dynamics_r2

    with pytest.raises(ValueError, match="needs a time axis"):
        dynamics_r2(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="needs a time axis"):
        dynamics_r2(np.zeros((4, 4, 3, 1)), np.zeros((4, 4, 3, 1)))
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(4, 4, 2, 5))
    holed = truth.copy()
    holed[0, 0] = np.nan  # a lost pixel
    assert dynamics_r2(holed, truth) == pytest.approx(1.0)
