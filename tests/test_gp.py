"""Tests of the spatial GP engine: closed form, incremental vs from-scratch, tiles, bad input."""

import numpy as np
import pytest
import torch

from reconstruct.gp import (
    GPHyperparameters,
    SpatialGP,
    TiledSpatialGP,
    correlation,
    fit_hyperparameters,
    grid_coords,
    make_spatial_gp,
)

HYPER = GPHyperparameters(lengthscale=2.5, white=0.2)


def _closed_form(coords, obs, y, noise, hyper):
    """Textbook GP posterior in float64 numpy: mean K_*X (K_XX + D)^-1 y, variance diag."""
    d = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    r = np.sqrt(5.0) * d / hyper.lengthscale
    k = (1 - hyper.white) * (1 + r + r**2 / 3) * np.exp(-r) + hyper.white * (d == 0)
    kxx = k[np.ix_(obs, obs)] + np.diag(noise)
    kpx = k[:, obs]
    mean = kpx @ np.linalg.solve(kxx, y)
    var = np.diag(k) - np.einsum("pn,np->p", kpx, np.linalg.solve(kxx, kpx.T))
    return mean, var


def test_posterior_equals_closed_form_on_tiny_grid():
    rng = np.random.default_rng(0)
    coords = grid_coords((5, 4)).numpy()
    obs = np.array([0, 7, 7, 13, 19])  # pixel 7 twice: two looks at one latent value
    y = rng.normal(size=(5, 3))
    noise = np.array([0.01, 0.05, 0.02, 0.1, 0.03])
    gp = SpatialGP(coords, 3, HYPER, factor_dtype=torch.float64, device="cpu")
    for p, yy, s in zip(obs, y, noise, strict=True):
        gp.add(int(p), yy, float(s))
    mean, var = _closed_form(coords, obs, y, noise, HYPER)
    np.testing.assert_allclose(gp.mean.numpy(), mean, atol=1e-10)
    np.testing.assert_allclose(gp.variance.numpy(), var, atol=1e-10)


def test_float32_factor_close_to_float64_after_many_updates():
    """The float32 factor's round-off stays far below what matters: after a rebuild on 1500
    observations and 300 updates on a 50 x 50 grid, mean and variance agree with float64."""
    rng = np.random.default_rng(7)
    hyper = GPHyperparameters(lengthscale=4.0, white=0.6)
    pixels = rng.choice(2500, 1500, replace=False)
    y = rng.normal(size=(1800, 4))
    noise = rng.uniform(1e-4, 0.3, 1800)
    extra = rng.integers(0, 2500, 300)
    gps = {}
    for dtype in (torch.float32, torch.float64):
        gp = SpatialGP(grid_coords((50, 50)), 4, hyper, factor_dtype=dtype, device="cpu")
        gp.rebuild(pixels, y[:1500], noise[:1500])
        for i, p in enumerate(extra):
            gp.add(int(p), y[1500 + i], float(noise[1500 + i]))
        gps[dtype] = gp
    assert gps[torch.float32]._at.dtype == torch.float32
    diff_mean = (gps[torch.float32].mean - gps[torch.float64].mean).abs().max()
    diff_var = (gps[torch.float32].variance - gps[torch.float64].variance).abs().max()
    assert float(diff_mean) < 1e-3 and float(diff_var) < 1e-4


def test_nearly_exact_observation_switches_factor_to_float64():
    gp = SpatialGP(grid_coords((6, 6)), 1, HYPER, device="cpu")
    gp.add(3, [1.0], 0.01)
    assert gp._at.dtype == torch.float32
    gp.add(4, [1.0], 1e-9)
    assert gp._at.dtype == torch.float64
    gp.rebuild([1, 2], [[0.5], [0.2]], [0.1, 1e-9])
    assert gp._at.dtype == torch.float64


def test_incremental_equals_rebuild():
    rng = np.random.default_rng(1)
    pixels = rng.choice(400, 60, replace=False)
    y = rng.normal(size=(60, 4))
    noise = rng.uniform(0.01, 0.2, 60)
    inc = SpatialGP(grid_coords((20, 20)), 4, HYPER, prior_mean=[1.0, 0, 0, -1.0], device="cpu")
    for p, yy, s in zip(pixels, y, noise, strict=True):
        inc.add(int(p), yy, float(s))
    full = SpatialGP(grid_coords((20, 20)), 4, HYPER, prior_mean=[1.0, 0, 0, -1.0], device="cpu")
    full.rebuild(pixels, y, noise)
    assert torch.allclose(inc.mean, full.mean, atol=1e-4)
    assert torch.allclose(inc.variance, full.variance, atol=1e-4)
    # and they keep agreeing after more incremental updates on the rebuilt one
    for gp in (inc, full):
        gp.add(5, np.ones(4), 0.05)
    assert torch.allclose(inc.mean, full.mean, atol=1e-4)


def test_rebuild_capacity_leaves_the_posterior_and_avoids_growing():
    """Room reserved at the rebuild changes nothing computed, and updates up to it write into
    the same storage (no copy of the factor in a step)."""
    rng = np.random.default_rng(2)
    pixels = rng.choice(400, 80, replace=False)
    y = rng.normal(size=(80, 3))
    gps = [SpatialGP(grid_coords((20, 20)), 3, HYPER, device="cpu") for _ in range(2)]
    for gp, capacity in zip(gps, (0, 100), strict=True):
        gp.rebuild(pixels[:40], y[:40], 0.05, capacity=capacity)
    storage = gps[1]._at.data_ptr()
    assert gps[0]._at.shape[0] == 64 and gps[1]._at.shape[0] == 100
    for p, yy in zip(pixels[40:], y[40:], strict=True):
        for gp in gps:
            gp.add(int(p), yy, 0.05)
    assert gps[1]._at.data_ptr() == storage and gps[0]._at.shape[0] == 128
    assert torch.equal(gps[0].mean, gps[1].mean)
    assert torch.equal(gps[0].variance, gps[1].variance)


def test_variance_near_noise_at_observation_and_growing_away():
    gp = SpatialGP(grid_coords((30, 30)), 1, GPHyperparameters(3.0, 0.0), device="cpu")
    centre = 15 * 30 + 15
    gp.add(centre, [1.0], 0.01)
    var = gp.variance.reshape(30, 30)
    assert float(var[15, 15]) == pytest.approx(0.01 / 1.01, rel=1e-6)
    along_row = var[15, 15:].numpy()
    assert np.all(np.diff(along_row) > 0)  # strictly growing with distance
    assert along_row[-1] == pytest.approx(1.0, abs=1e-3)  # prior variance far away


def test_variance_reduction_matches_brute_force():
    rng = np.random.default_rng(2)
    gp = SpatialGP(grid_coords((12, 12)), 2, HYPER, device="cpu")
    for p in rng.choice(144, 20, replace=False):
        gp.add(int(p), rng.normal(size=2), 0.05)
    candidates = [3, 50, 143]
    predicted = gp.variance_reduction(candidates, noise=0.05)
    for c, red in zip(candidates, predicted, strict=True):
        trial = SpatialGP(grid_coords((12, 12)), 2, HYPER, device="cpu")
        trial.rebuild(gp.obs_pixels + [c], torch.zeros(21, 2), 0.05)
        removed = float(gp.variance.sum() - trial.variance.sum())
        assert removed == pytest.approx(float(red), rel=1e-6)


def test_tiled_close_to_exact():
    rng = np.random.default_rng(3)
    shape = (40, 40)
    pixels = rng.choice(1600, 300, replace=False)
    y = rng.normal(size=(300, 2))
    exact = SpatialGP(grid_coords(shape), 2, HYPER, device="cpu")
    exact.rebuild(pixels, y, 0.05)
    tiled = TiledSpatialGP(shape, 2, HYPER, tile=16, halo=10, device="cpu")
    for p, yy in zip(pixels, y, strict=True):
        tiled.add(int(p), yy, 0.05)
    assert float((tiled.mean - exact.mean).abs().max()) < 1e-2
    assert float((tiled.variance - exact.variance).abs().max()) < 1e-2
    rebuilt = TiledSpatialGP(shape, 2, HYPER, tile=16, halo=10, device="cpu")
    rebuilt.rebuild(pixels, y, 0.05)
    assert torch.allclose(rebuilt.mean, tiled.mean, atol=1e-4)  # float32 factors
    red = tiled.variance_reduction([0, 820], 0.05)
    assert torch.allclose(red, exact.variance_reduction([0, 820], 0.05), rtol=2e-2)


def test_make_spatial_gp_switches_to_tiles_above_size():
    assert isinstance(make_spatial_gp((64, 64), 1, device="cpu"), SpatialGP)
    assert isinstance(make_spatial_gp((65, 64), 1, device="cpu"), TiledSpatialGP)


def test_fit_hyperparameters_finds_lengthscale_and_is_deterministic():
    shape = (24, 24)
    coords = grid_coords(shape)
    truth = GPHyperparameters(lengthscale=4.0, white=0.2)
    cov = correlation(torch.cdist(coords, coords), truth)
    cov += 1e-8 * torch.eye(576, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    gen = torch.Generator().manual_seed(0)
    y = chol @ torch.randn(576, 6, generator=gen, dtype=torch.float64)
    fit = fit_hyperparameters(coords, y, 1e-4, seed=0)
    assert 2.5 < fit.lengthscale < 6.5
    assert 0.05 <= fit.white <= 0.4
    assert fit_hyperparameters(coords, y, 1e-4, seed=0) == fit


def test_bad_input_raises_clearly():
    gp = SpatialGP(grid_coords((4, 4)), 2, device="cpu")
    with pytest.raises(IndexError, match="out of range"):
        gp.add(16, [0.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="outputs"):
        gp.add(0, [0.0, 0.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        gp.add(0, [np.nan, 0.0], 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        gp.add(0, [0.0, 0.0], -1.0)
    assert gp.n_obs == 0  # nothing was stored
    with pytest.raises(ValueError, match="lengthscale"):
        GPHyperparameters(lengthscale=0.0)
    with pytest.raises(ValueError, match="kernel"):
        GPHyperparameters(kernel="cubic")
    with pytest.raises(ValueError, match="integer grid"):
        SpatialGP(np.array([[0.5, 0.0]]), 1, device="cpu")


def test_rbf_kernel_has_no_denormals():
    hyper = GPHyperparameters(lengthscale=1.0, white=0.0, kernel="rbf")
    values = correlation(torch.linspace(0, 60, 1000, dtype=torch.float64), hyper)
    tiny = (values > 0) & (values < 1e-12)
    assert not bool(tiny.any())


def test_rebuild_on_no_observations_is_the_prior():
    gp = SpatialGP(grid_coords((5, 5)), 3, HYPER, prior_mean=[1.0, 2.0, 3.0], device="cpu")
    gp.add(4, [0.0, 0.0, 0.0], 0.1)
    gp.rebuild([], torch.zeros(0, 3), 0.1)
    assert gp.n_obs == 0
    assert torch.equal(gp.mean, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64).expand(25, 3))
    assert torch.equal(gp.variance, torch.ones(25, dtype=torch.float64))
    gp.add(7, [1.0, 2.0, 3.0], 0.1)  # still usable afterwards
    assert gp.n_obs == 1
    with pytest.raises(ValueError, match="0 observations"):
        gp.rebuild([], torch.zeros(2, 3), 0.1)


def test_tiled_rebuild_with_empty_tiles_keeps_their_prior():
    # Observations only in the top-left corner: the other tiles' windows hold none.
    shape = (40, 40)
    pixels = [0, 1, 40, 41]
    y = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    tiled = TiledSpatialGP(shape, 2, HYPER, tile=16, halo=4, device="cpu")
    tiled.rebuild(pixels, y, 0.05)
    far = 39 * 40 + 39  # bottom-right pixel, in a tile that saw nothing
    assert torch.equal(tiled.mean[far], tiled.prior_mean)
    assert float(tiled.variance[far]) == 1.0
    assert float(tiled.variance[0]) < 0.5
    assert torch.isfinite(tiled.variance_reduction([0, far], 0.05)).all()
    tiled.rebuild([], torch.zeros(0, 2), 0.05)  # nothing at all observed
    assert tiled.n_obs == 0 and float(tiled.variance.min()) == 1.0
