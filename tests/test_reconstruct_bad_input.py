"""Bad input for every registered reconstructor: NaN values, a repeated block, a constant map,
a zero-variance pixel, identical blocks. Each gives a defined (finite) estimate, or a one-line
``ValueError`` that leaves the state unchanged; never NaN and never a linear-algebra error."""

import numpy as np
import pytest
import torch

from reconstruct import make_reconstructor, reconstructor_names
from reconstruct.base import BlockLayout, principal_scores

SHAPE = (8, 8)
SPECTRAL = (4, 3)
LAYOUT = BlockLayout(4, 2)
N_PIXELS = SHAPE[0] * SHAPE[1]
# Enough fully measured pixels for the low-rank models' basis (their default needs 8), spread
# over the grid, then one block at every other pixel.
FULL_PIXELS = list(range(0, N_PIXELS, 5))


def _make(name: str):
    return make_reconstructor(name, SHAPE, SPECTRAL, LAYOUT, device="cpu")


def _field(seed: int = 0) -> np.ndarray:
    """A smooth rank-2 field in block layout ``(P, n_blocks, F_b)`` plus a little noise."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    maps = np.stack([np.sin(ii / 2.0) * np.cos(jj / 3.0), np.cos(ii / 3.0 + jj / 4.0)], -1)
    spectra = rng.normal(size=(2, LAYOUT.n_blocks * 6))
    field = maps.reshape(N_PIXELS, 2) @ spectra + 0.3 + 0.01 * rng.normal(size=(N_PIXELS, 12))
    return field.reshape(N_PIXELS, LAYOUT.n_blocks, -1)


def _assert_defined(rec, reference: np.ndarray) -> None:
    """Every output a policy or the env reads is finite."""
    assert torch.isfinite(rec.estimate_blocks()).all()
    assert torch.isfinite(rec.estimate()).all()
    uncertainty = rec.uncertainty()
    assert torch.isfinite(uncertainty).all() and (uncertainty >= 0).all()
    assert torch.isfinite(rec.component_maps(3)).all()
    assert torch.isfinite(rec.pixel_energy()).all()
    assert np.isfinite(rec.r2(torch.as_tensor(reference)))
    if hasattr(rec, "variance_reduction") and rec.name == "gp":
        assert torch.isfinite(rec.variance_reduction()).all()


def _measure_design(rec, field: np.ndarray) -> None:
    """Full spectra at ``FULL_PIXELS``, then block ``p % n_blocks`` at every other pixel,
    checking the outputs at every stage (bootstrapping, first basis, refits)."""
    for p in FULL_PIXELS:
        rec.add_many([p] * LAYOUT.n_blocks, range(LAYOUT.n_blocks), field[p])
        _assert_defined(rec, field)
    for p in range(N_PIXELS):
        if p not in FULL_PIXELS:
            rec.add(p, p % LAYOUT.n_blocks, field[p, p % LAYOUT.n_blocks])
    _assert_defined(rec, field)


@pytest.mark.parametrize("name", reconstructor_names())
def test_nan_values_are_a_one_line_error_that_changes_nothing(name):
    rec = _make(name)
    field = _field()
    rec.add_many([0, 0], [0, 1], field[0])
    bad = field[1].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN") as raised:
        rec.add(1, 1, bad[1])
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="NaN"):
        rec.add_many([1, 1], [0, 1], bad)  # the first entry is fine, the second is not
    assert rec.n_measured == 2 and not rec.measured[1].any()
    _assert_defined(rec, field)


@pytest.mark.parametrize("name", reconstructor_names())
def test_repeated_block_is_a_one_line_error_that_changes_nothing(name):
    rec = _make(name)
    field = _field()
    rec.add(3, 1, field[3, 1])
    with pytest.raises(ValueError, match="already measured|twice"):
        rec.add(3, 1, field[3, 1] + 1.0)
    with pytest.raises(ValueError, match="already measured|twice"):
        rec.add_many([4, 4], [0, 0], field[4, [0, 0]])
    assert rec.n_measured == 1
    np.testing.assert_allclose(rec.predict_block(3, 1).double().numpy(), field[3, 1], rtol=1e-6)
    _assert_defined(rec, field)


@pytest.mark.parametrize("name", reconstructor_names())
def test_constant_map_gives_the_constant(name):
    rec = _make(name)
    field = np.full((N_PIXELS, LAYOUT.n_blocks, 6), 2.5)
    _measure_design(rec, field)
    np.testing.assert_allclose(rec.estimate_blocks().double().numpy(), field, rtol=1e-5)


@pytest.mark.parametrize("name", reconstructor_names())
def test_zero_map_gives_zero(name):
    rec = _make(name)
    field = np.zeros((N_PIXELS, LAYOUT.n_blocks, 6))
    _measure_design(rec, field)
    np.testing.assert_allclose(rec.estimate_blocks().double().numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", reconstructor_names())
def test_zero_variance_pixels_give_a_defined_estimate(name):
    rec = _make(name)
    field = _field()
    field[FULL_PIXELS[2]] = 0.0  # a dead pixel: every feature exactly zero
    field[FULL_PIXELS[5]] = 1.7  # a flat spectrum
    _measure_design(rec, field)


@pytest.mark.parametrize("name", reconstructor_names())
def test_identical_blocks_give_a_defined_estimate(name):
    # Every block holds the same values at each pixel: the spectral basis is rank-deficient
    # across blocks, and a pixel's single block determines its coefficients exactly.
    rec = _make(name)
    field = _field()
    field[:, 1] = field[:, 0]
    _measure_design(rec, field)


# ---------------------------------------------------------------- component maps of an estimate
@pytest.mark.parametrize("rows, cols", [(30, 200), (200, 30)])
def test_principal_scores_equal_the_svd_up_to_sign(rows, cols):
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(rows, 4)) @ rng.normal(size=(4, cols)))
    x = x + 1e-3 * torch.as_tensor(rng.normal(size=(rows, cols)))
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    scores = principal_scores(x, 3)
    torch.testing.assert_close(scores.abs(), (u[:, :3] * s[:3]).abs(), atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_linear_raster_episode_runs_to_the_end():
    # Regression: the float32 MKL SVD of the finite estimate after 504 raster steps on this
    # 16 x 16 twin failed to converge (LinAlgError from component_maps).
    from agents import make_policy
    from envs.acquisition.factory import make_env

    env = make_env(
        twin_overrides={"grid": [16, 16]}, reconstructor="linear", device="cpu",
        budget_fraction=1.0, twin_seeds=[100000, 100002],
    )
    observation, info = env.reset(seed=1)
    policy = make_policy("raster")
    policy.reset(env, seed=1)
    terminated = False
    while not terminated:
        action = policy.act(observation, info["action_mask"])
        observation, _, terminated, _, info = env.step(action)
    assert info["r2"] > 0.99


@pytest.mark.parametrize("name", reconstructor_names())
def test_an_unknown_option_is_one_line_naming_the_known_ones(name):
    with pytest.raises(ValueError, match="has no option 'colour'; its options: .*device"):
        make_reconstructor(name, SHAPE, SPECTRAL, LAYOUT, device="cpu", colour="blue")


# A wrong option fails at construction, naming the option, instead of measurements later.
_BAD_OPTIONS = [
    ("gp", "max_components", "x", TypeError),
    ("gp", "max_components", 0, ValueError),
    ("gp", "max_components", -3, ValueError),
    ("gp", "max_components", 2.5, TypeError),
    ("gp", "explained", 1.5, ValueError),
    ("gp", "explained", "0.9", TypeError),
    ("gp", "explained", float("nan"), ValueError),
    ("gp", "min_full_pixels", 1, ValueError),
    ("gp", "refit_growth", 1.0, ValueError),
    ("gp", "refit_growth", None, TypeError),
    ("gp", "refit_lag", 0.0, ValueError),
    ("gp", "refit_mode", "later", ValueError),
    ("gp", "refit_mode", None, TypeError),
    ("gp", "small_sample_errors", "cv", ValueError),
    ("gp", "error_calibration", True, TypeError),
    ("gp", "error_calibration", "offline", ValueError),
    ("gp", "basis_from", "some", ValueError),
    ("gp", "kernel", "matern32", ValueError),
    ("gp", "max_basis_pixels", 1, ValueError),
    ("gp", "max_fit_points", "200", TypeError),
    ("gp", "max_exact_pixels", 0, ValueError),
    ("gp", "seed", -1, ValueError),
    ("gp", "seed", 1.0, TypeError),
    ("lowrank", "max_components", "x", TypeError),
    ("lowrank", "refit_mode", "later", ValueError),
    ("idw", "k", 0, ValueError),
    ("idw", "k", "8", TypeError),
    ("idw", "power", -1.0, ValueError),
    ("idw", "power", "2", TypeError),
    ("mean", "dtype", "float32", TypeError),
    ("gp", "dtype", torch.int64, TypeError),
]


@pytest.mark.parametrize("name, option, value, error", _BAD_OPTIONS)
def test_a_bad_option_fails_at_construction_naming_it(name, option, value, error):
    with pytest.raises(error, match=option):
        make_reconstructor(name, SHAPE, SPECTRAL, LAYOUT, device="cpu", **{option: value})


def test_good_options_are_taken_as_given():
    rec = make_reconstructor(
        "gp", SHAPE, SPECTRAL, LAYOUT, device="cpu", max_components=np.int64(4), explained=1,
        refit_mode="deferred", error_calibration="online", basis_from="all",
        small_sample_errors="capped-cv",
    )
    assert rec.max_components == 4 and rec.explained == 1.0
    assert (rec.refit_mode, rec.error_calibration, rec.basis_from, rec.small_sample_errors) == (
        "deferred", "online", "all", "capped-cv"
    )
