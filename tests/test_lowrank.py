"""Tests of the low-rank reconstructors on small synthetic fields."""

import copy
import functools
import pickle
import time

import numpy as np
import pytest
import torch

from reconstruct.base import BlockLayout
from reconstruct.gp import SpatialGP
from reconstruct.lowrank import LowRankCompletion, LowRankGP, fit_basis
from reconstruct.metrics import r2_score
from reconstruct.refit import DeferredRefit
from reconstruct.scoring import ReferenceScorer

SHAPE = (12, 12)
SPECTRAL = (8, 6)
LAYOUT = BlockLayout(8, 4)


def _low_rank_field(rank: int = 3, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """``(P, n_blocks, F_b)`` field: smooth coefficient maps times random spectra (+ noise)."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    maps = np.stack([np.sin(ii / (2 + r) + r) * np.cos(jj / (3 + r)) for r in range(rank)], -1)
    spectra = rng.normal(size=(rank, SPECTRAL[0] * SPECTRAL[1]))
    field = maps.reshape(-1, rank) @ spectra + 0.5
    field = field + noise * rng.normal(size=field.shape)
    tensor = field.reshape(*SHAPE, *SPECTRAL)
    return LAYOUT.to_blocks(tensor)


def _fill(rec, field, full_pixels, partial: dict[int, list[int]]):
    for p in full_pixels:
        rec.add_many([p] * LAYOUT.n_blocks, range(LAYOUT.n_blocks), field[p])
    for p, blocks in partial.items():
        for b in blocks:
            rec.add(p, b, field[p, b])


def test_basis_is_orthonormal_and_explains_rank():
    field = torch.as_tensor(_low_rank_field(rank=3))
    basis = fit_basis(field, explained=0.999, max_components=10)
    assert basis.k == 3
    flat = basis.components.reshape(basis.k, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_exactly_low_rank_field_recovered_from_one_block_per_pixel():
    field = _low_rank_field(rank=3)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, explained=0.999)
    full = [0, 17, 40, 77, 101, 143]
    partial = {p: [p % 4] for p in range(144) if p not in full}  # one block (2 voltages) each
    _fill(rec, field, full, partial)
    est = rec.estimate_blocks().double().numpy()
    assert rec.basis is not None and rec.basis.k == 3
    np.testing.assert_allclose(est, field, atol=1e-4 * np.abs(field).max())


def test_fast_r2_equals_generic_r2_with_nan_and_other_reference():
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    rng = np.random.default_rng(4)
    full = rng.choice(144, 12, replace=False).tolist()
    partial = {int(p): [int(p) % 4, (int(p) + 1) % 4] for p in rng.choice(144, 50, replace=False)
               if p not in full}
    _fill(rec, field, full, partial)
    reference = torch.as_tensor(field)
    assert rec.r2(reference) == pytest.approx(r2_score(reference, rec.estimate_blocks()), rel=1e-6)
    with_nan = reference.clone()
    with_nan[3, 1, :2] = float("nan")  # part of a block
    with_nan[full[0], 2] = float("nan")  # a whole measured block
    with_nan[5] = float("nan")  # a whole pixel
    truth = torch.as_tensor(_low_rank_field(rank=3, noise=0.0))
    scorers = {id(ref): ReferenceScorer(ref) for ref in (reference, with_nan, truth)}
    for ref in (reference, with_nan, truth):
        assert rec.r2(ref) == pytest.approx(r2_score(ref, rec.estimate_blocks()), rel=1e-6)
        expected = r2_score(ref, rec.estimate_blocks())
        assert scorers[id(ref)].score(rec) == pytest.approx(expected, rel=1e-6)
    rec.add(143 if 143 not in full else 142, 3, field[143 if 143 not in full else 142, 3])
    assert rec.r2(truth) == pytest.approx(r2_score(truth, rec.estimate_blocks()), rel=1e-6)
    for ref in (reference, with_nan, truth):  # each scorer brings its own terms up to date
        expected = r2_score(ref, rec.estimate_blocks())
        assert scorers[id(ref)].score(rec) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls", [LowRankGP, LowRankCompletion])
def test_fast_r2_stays_exact_through_incremental_updates(cls):
    """R^2 is kept current between refits (by rank-one updates for the GP, by recomputing for
    the completion): at every step of a sequence of single-block measurements (new pixels and
    pseudo-observations at partial ones, with NaN in the reference) it equals the generic score
    of the full estimate."""
    field = _low_rank_field(rank=3, noise=0.05)
    rec = cls(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=1e9)
    full = [0, 17, 40, 77, 101, 143]
    _fill(rec, field, full, {})
    reference = torch.as_tensor(field).clone()
    reference[3, 1, :2] = float("nan")
    rng = np.random.default_rng(5)
    scorer = ReferenceScorer(reference)
    for step in range(60):
        pixel = int(rng.integers(144))
        blocks = np.flatnonzero(~rec.measured[pixel].numpy())
        if blocks.size == 0:
            continue
        block = int(rng.choice(blocks))
        rec.add(pixel, block, field[pixel, block])
        plain = r2_score(reference, rec.estimate_blocks())
        assert rec.r2(reference) == pytest.approx(plain, rel=1e-6), step
        assert scorer.score(rec) == pytest.approx(plain, rel=1e-6), step


def test_incremental_update_equals_from_scratch():
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=100.0)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})
    assert rec.basis is not None
    full = {0, 17, 40, 77, 101, 143}
    _fill(rec, field, [], {p: [0] for p in range(2, 60, 3) if p not in full})
    # second looks at pixels observed already: pseudo-observations
    _fill(rec, field, [], {p: [2, 3] for p in range(2, 60, 6) if p not in full})
    observed = torch.nonzero(rec.measured.any(1)).reshape(-1)
    scratch = rec._make_spatial(rec.basis.k)
    scratch.rebuild(observed, rec._obs_coef[observed], rec._obs_noise[observed], hyper=rec.hyper)
    assert torch.allclose(rec.coefficients(), scratch.mean, atol=1e-4)
    assert torch.allclose(rec.spatial.variance, scratch.variance, atol=1e-4)


def test_uncertainty_zero_where_measured_and_growing_away():
    field = _low_rank_field(rank=3, noise=0.02)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, [0, 1, 12, 13, 2, 24], {})
    unc = rec.uncertainty()
    assert torch.all(unc[[0, 1, 12, 13, 2, 24]] == 0)
    assert torch.all(unc[143] > unc[3])  # far corner more uncertain than a neighbour
    assert torch.all(unc[3] > 0)
    red = rec.variance_reduction([0, 3, 143])
    assert red.shape == (3, LAYOUT.n_blocks)
    assert torch.all(red[0] == 0) and torch.all(red[1:] > 0)


def test_bootstrap_before_basis_gives_block_means():
    field = _low_rank_field(rank=3)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    rec.add(5, 0, field[5, 0])
    rec.add(9, 0, field[9, 0])
    assert rec.basis is None
    est = rec.estimate_blocks()
    expected = (field[5, 0] + field[9, 0]) / 2
    np.testing.assert_allclose(est[100, 0].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(est[5, 0].numpy(), field[5, 0], rtol=1e-6)
    assert rec.component_maps(2).shape == (2, *SHAPE)


def test_completion_variant_weights_coefficients_by_inverse_distance():
    field = _low_rank_field(rank=2)
    full = [0, 17, 40, 77, 101, 143]
    rec = LowRankCompletion(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, full, {})
    coef = rec.coefficients()
    # pixel 1 of the 12 x 12 grid, at (0, 1): weights 1/d^2 over the observed pixels
    coords = np.array([divmod(p, SHAPE[1]) for p in full], dtype=float)
    w = 1.0 / ((coords - [0.0, 1.0]) ** 2).sum(1)
    expected = (w[:, None] * coef[full].numpy()).sum(0) / w.sum()
    np.testing.assert_allclose(coef[1].numpy(), expected, rtol=1e-10)
    assert torch.equal(coef[17], rec.spatial._coef[17])  # observed pixels keep their own
    est = rec.estimate_blocks().double().numpy()
    np.testing.assert_allclose(est[143], field[143], rtol=1e-6)
    maps = rec.component_maps(4)
    assert maps.shape == (4, *SHAPE) and torch.all(maps[rec.basis.k :] == 0)


@pytest.mark.parametrize("cls", [LowRankGP, LowRankCompletion])
def test_bad_input_raises_and_leaves_state(cls):
    field = _low_rank_field(rank=3)
    rec = cls(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})
    before = rec.estimate_blocks().clone()
    with pytest.raises(IndexError, match="out of range"):
        rec.add(144, 0, field[0, 0])
    with pytest.raises(IndexError, match="out of range"):
        rec.add(3, 4, field[0, 0])
    with pytest.raises(ValueError, match="shape"):
        rec.add(3, 0, field[0, 0][:-1])
    bad = field[3, 0].copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rec.add(3, 0, bad)
    with pytest.raises(ValueError, match="already measured"):
        rec.add(0, 1, field[0, 1])
    with pytest.raises(ValueError, match="twice"):
        rec.add_many([3, 3], [1, 1], [field[3, 1], field[3, 1]])
    with pytest.raises(ValueError, match="NaN"):
        rec.add_many([3, 4], [1, 1], [field[3, 1], bad])
    assert rec.n_measured == 24
    assert torch.equal(rec.estimate_blocks(), before)


def test_reset_and_determinism():
    field = _low_rank_field(rank=3, noise=0.05)
    runs = []
    for _ in range(2):
        rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, seed=3)
        _fill(rec, field, list(range(0, 144, 7)), {p: [1] for p in range(1, 144, 5) if p % 7})
        runs.append(rec.estimate_blocks())
    assert torch.equal(runs[0], runs[1])
    rec.reset()
    assert rec.n_measured == 0 and rec.basis is None


def test_uncertainty_of_partly_measured_pixels_tracks_their_true_error():
    """On the twin, after one block at every pixel, the predicted variance of the unmeasured
    blocks must be of the order of their true squared error (the in-sample model variance was
    43x too small, which misled every uncertainty-driven policy)."""
    from envs.data.twin import twin_dataset

    dataset = twin_dataset(seed=5, grid=(18, 18), n_times=16, n_nan_pixels=0)
    layout = BlockLayout(16, 4)
    reference = layout.to_blocks(dataset.data)
    rec = LowRankGP(dataset.spatial_shape, dataset.spectral_shape, layout, device="cpu")
    ny = dataset.spatial_shape[1]
    full = [i * ny + j for i in range(1, 18, 4) for j in range(1, 18, 4)]
    pixels, blocks = [], []
    for p in range(reference.shape[0]):
        for b in range(4) if p in full else [(p // ny + 2 * (p % ny)) % 4]:
            pixels.append(p)
            blocks.append(b)
    rec.add_many(pixels, blocks, reference[pixels, blocks])
    partial = rec.measured.any(1) & ~rec.measured.all(1)
    unmeasured = partial[:, None] & ~rec.measured
    error = ((rec.estimate_blocks().numpy() - reference) ** 2).mean(-1)[unmeasured.numpy()]
    predicted = rec.uncertainty().numpy()[unmeasured.numpy()]
    ratio = predicted.mean() / error.mean()
    assert 0.3 < ratio < 3.0, f"predicted / true error = {ratio:.3f}"


@pytest.mark.parametrize("cls", [LowRankGP, LowRankCompletion])
def test_predict_block_equals_the_full_estimate(cls):
    field = _low_rank_field(rank=3, noise=0.05)
    rec = cls(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {5: [1], 60: [0, 2]})
    estimate = rec.estimate_blocks()
    for pixel, block in [(5, 1), (5, 3), (60, 2), (99, 0)]:
        torch.testing.assert_close(rec.predict_block(pixel, block), estimate[pixel, block])


@pytest.mark.parametrize("cls", [LowRankGP, LowRankCompletion])
def test_pixel_energy_equals_the_sum_of_squares_of_the_full_estimate(cls):
    from reconstruct.base import Reconstructor

    field = _low_rank_field(rank=3, noise=0.05)
    rec = cls(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, [0, 17, 40, 77], {})  # before the first basis: the generic path
    torch.testing.assert_close(rec.pixel_energy(), Reconstructor.pixel_energy(rec))
    _fill(rec, field, [101, 143], {5: [1], 60: [0, 2]})
    for pixel, block in [(None, None), (61, 3), (99, 0)]:  # through incremental updates too
        if pixel is not None:
            rec.add(pixel, block, field[pixel, block])
        generic = Reconstructor.pixel_energy(rec)
        assert generic.min() > 0
        torch.testing.assert_close(rec.pixel_energy(), generic, rtol=1e-5, atol=0)


def _sequence(rec, field, seed=7):
    """Six full pixels, then single blocks in a seeded order, with an R^2 after each (as an
    environment step); returns the estimate after every measurement past the first basis."""
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})
    reference = torch.as_tensor(field)
    scorer = ReferenceScorer(reference)
    estimates = []
    rng = np.random.default_rng(seed)
    for a in rng.permutation(144 * LAYOUT.n_blocks):
        p, b = divmod(int(a), LAYOUT.n_blocks)
        if rec.measured[p, b]:
            continue
        rec.add(p, b, field[p, b])
        score = scorer.score(rec)
        estimates.append(rec.estimate_blocks().clone())
        assert score == pytest.approx(r2_score(reference, estimates[-1]), rel=1e-6, abs=1e-9)
    return estimates


@pytest.mark.parametrize("mode", ["blocking", "deferred"])
def test_refit_modes_give_valid_estimates(mode):
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=1.3,
                    refit_mode=mode, refit_lag=0.2)
    estimates = _sequence(rec, field)
    assert rec._basis_version >= 5  # several refits, installed on the way
    reference = torch.as_tensor(field)
    assert r2_score(reference, estimates[len(estimates) // 4]) > 0.9
    assert rec.r2(reference) == pytest.approx(r2_score(reference, estimates[-1]), rel=1e-6)
    assert rec._pending is None or rec.n_measured < rec._pending.install_at


@pytest.mark.parametrize("growth, lag", [(1.3, 0.2), (1.2, 0.8)])
def test_deferred_refits_do_not_depend_on_timing(growth, lag, monkeypatch):
    """The same seed gives bit-identical estimates at every step whether the refit thread is
    fast or slow (here: a sleep before each piece of its work, so the installs wait and
    bring in the arrivals it has not reached), or brings in no arrival at all (the install
    brings in every one). With a lag of 0.8 every install is made early, by the next refit
    coming due."""
    field = _low_rank_field(rank=3, noise=0.05)
    runs = []
    for delay in (None, 0.01, "refit only"):
        rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6,
                        refit_growth=growth, refit_mode="deferred", refit_lag=lag, seed=2)
        if delay == "refit only":
            monkeypatch.setattr(DeferredRefit, "_work_ready", lambda self: not self.refitted)
        elif delay is not None:
            rec._refit_delay = functools.partial(time.sleep, delay)
        runs.append(_sequence(rec, field))
    assert len(runs[0]) == len(runs[1]) == len(runs[2])
    for step, (fast, slow, none) in enumerate(zip(*runs, strict=True)):
        assert torch.equal(fast, slow) and torch.equal(fast, none), step


def test_deferred_refit_installs_at_its_count_and_reset_cancels_it():
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=1.2,
                    refit_mode="deferred", refit_lag=0.15)
    rec._refit_delay = functools.partial(time.sleep, 0.05)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})  # the first basis: at once
    version = rec._basis_version
    pixels = [p for p in range(144) if not rec.measured[p].any()]
    for p in pixels[:5]:  # 24 + 5 >= 1.2 * 24: a refit starts
        rec.add(p, 0, field[p, 0])
    pending = rec._pending
    assert pending is not None and pending.install_at == rec.n_measured + 5
    assert rec._basis_version == version  # the old model is still in use
    for p in pixels[5:9]:
        rec.add(p, 0, field[p, 0])
    assert rec._pending is pending and rec._basis_version == version
    rec.add(pixels[9], 0, field[pixels[9], 0])  # the install count: waits for the thread
    assert rec._pending is None and rec._basis_version == version + 1
    # The thread brought in the 4 measurements before the install; the install's own entered
    # the installed model on this thread, like any update.
    assert len(pending.arrivals) == pending.applied == 4
    assert rec.spatial.obs_pixels[-1] == pixels[9]
    # The replaced model is kept (not copied) until the next refit's thread frees it.
    replaced = rec._replaced
    assert any(isinstance(x, SpatialGP) for x in replaced)
    assert copy.deepcopy(rec)._replaced is None
    for p in pixels[10:20]:
        rec.add(p, 0, field[p, 0])
    pending = rec._pending
    assert pending is not None and not pending.refitted  # the thread sleeps first
    assert rec._replaced is None and (pending._release is replaced or replaced == [])
    rec.reset()
    assert pending._cancelled
    assert rec._pending is None and rec.basis is None
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})
    assert rec._basis_version == 1 and rec.n_measured == 24


@pytest.mark.parametrize("cls", [LowRankGP, LowRankCompletion])
def test_deepcopy_and_pickle_during_a_deferred_refit(cls):
    field = _low_rank_field(rank=3, noise=0.05)
    rec = cls(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=1.2,
              refit_mode="deferred", refit_lag=0.8)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {p: [1] for p in range(2, 12)})
    assert rec._pending is not None
    copies = [copy.deepcopy(rec), pickle.loads(pickle.dumps(rec))]
    rest = {p: [2] for p in range(20, 60) if p not in (40, 77)}
    for r in [rec, *copies]:
        _fill(r, field, [], rest)
    for c in copies:
        assert torch.equal(c.estimate_blocks(), rec.estimate_blocks())
        assert c._basis_version == rec._basis_version


def test_gp_block_update_equals_single_updates():
    from reconstruct.gp import GPHyperparameters, SpatialGP, grid_coords

    rng = np.random.default_rng(1)
    pixels = rng.choice(144, 40, replace=False)
    values, noise = rng.normal(size=(40, 3)), rng.uniform(0.01, 0.5, 40)
    gps = [SpatialGP(grid_coords(SHAPE), 3, GPHyperparameters(2.5, 0.3), device="cpu",
                     factor_dtype=torch.float64) for _ in range(2)]
    for gp in gps:
        gp.rebuild(pixels[:20], values[:20], noise[:20])
    for i in range(20, 40):
        gps[0].add(int(pixels[i]), values[i], float(noise[i]))
    gps[1].add_many(pixels[20:30], values[20:30], noise[20:30])
    gps[1].add_many(pixels[30:40], values[30:40], noise[30:40])
    torch.testing.assert_close(gps[1].mean, gps[0].mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(gps[1].variance, gps[0].variance, rtol=0, atol=1e-10)
    assert gps[1].n_obs == 40 and gps[1].obs_pixels == gps[0].obs_pixels


def test_capped_cv_changes_the_reported_uncertainty_not_the_fit():
    """With too few complete spectra for a two-fold cross-validation of the basis,
    ``small_sample_errors="capped-cv"`` reports the capped cross-validation's errors; the fit,
    and so the estimate, is the same as with the residual."""
    from envs.data.twin import twin_dataset

    data = twin_dataset(5, grid=(12, 12), n_times=8).data
    layout = BlockLayout(16, 4)
    blocks = np.nan_to_num(layout.to_blocks(data))
    rng = np.random.default_rng(0)
    full = rng.choice(144, 10, replace=False)  # 10 complete spectra: fewer than 2 (k + 2)
    partial = np.setdiff1d(np.arange(144), full)[:60]
    recs = {}
    for mode in ("residual", "capped-cv"):
        rec = LowRankGP((12, 12), (16, 8), layout, device="cpu", small_sample_errors=mode,
                        min_full_pixels=10)  # fmt: skip
        pixels = list(np.repeat(full, 4)) + list(partial)
        chosen = list(np.tile(np.arange(4), full.size)) + [0] * partial.size
        rec.add_many(pixels, chosen, [blocks[p, b] for p, b in zip(pixels, chosen, strict=True)])
        recs[mode] = rec
    assert recs["residual"].basis.k * 2 + 4 > 10  # the case the option is for
    torch.testing.assert_close(recs["residual"].estimate(), recs["capped-cv"].estimate())
    partly = torch.as_tensor(partial)
    residual = recs["residual"].uncertainty()[partly, 1:]
    capped = recs["capped-cv"].uncertainty()[partly, 1:]
    assert float(capped.mean()) > float(residual.mean())
    with pytest.raises(ValueError, match="small_sample_errors"):
        LowRankGP((4, 4), (16, 8), layout, small_sample_errors="cv")


def test_basis_from_every_block_keeps_exact_recovery_and_orthonormality():
    field = _low_rank_field(rank=3)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, explained=0.999,
                    basis_from="all")
    full = [0, 17, 40, 77, 101, 143]
    partial = {p: [p % 4] for p in range(144) if p not in full}
    _fill(rec, field, full, partial)
    rec.refit()
    assert rec.basis is not None and rec.basis.k == 3
    flat = rec.basis.components.reshape(3, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert (rec.basis.variances[:-1] >= rec.basis.variances[1:]).all()
    est = rec.estimate_blocks().double().numpy()
    np.testing.assert_allclose(est, field, atol=1e-4 * np.abs(field).max())


def test_basis_from_every_block_learns_from_partly_measured_pixels():
    """With few complete spectra of a noisy field, the blocks of partly measured pixels make
    the basis closer to the field's own spectra than the complete spectra alone do."""
    noisy = _low_rank_field(rank=3, noise=0.3, seed=1)
    clean = torch.as_tensor(_low_rank_field(rank=3, noise=0.0, seed=1))
    errors = {}
    for source in ("full", "all"):
        rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6,
                        max_components=3, basis_from=source)
        full = [0, 17, 40, 77, 101, 143]
        partial = {p: [p % 4, (p + 1) % 4] for p in range(144) if p not in full}
        _fill(rec, noisy, full, partial)
        rec.refit()
        flat = rec.basis.components.reshape(rec.basis.k, -1)
        centred = (clean - clean.mean(0)).reshape(144, -1)
        errors[source] = float((centred - centred @ flat.T @ flat).square().sum()
                               / centred.square().sum())
    assert errors["all"] < 0.5 * errors["full"]


def test_unknown_basis_source_is_refused():
    with pytest.raises(ValueError, match="basis_from"):
        LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", basis_from="some")


def test_scoring_leaves_the_reconstructor_as_it_was():
    """The reference stays with the scorer: scoring (from scratch, then incrementally) changes
    nothing the reconstructor holds, byte for byte."""
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {5: [1], 9: [2, 3]})
    scorer = ReferenceScorer(torch.as_tensor(field))
    for pixel in (20, 21):
        before = pickle.dumps(rec)
        scorer.score(rec)
        assert pickle.dumps(rec) == before
        rec.add(pixel, 0, field[pixel, 0])


def test_scorer_that_fell_behind_the_change_log_starts_again():
    """More changes between two scores than the log keeps, a reset, and a copy: the scorer
    notices each and still gives the plain R^2."""
    field = _low_rank_field(rank=3, noise=0.05)
    rec = LowRankGP(SHAPE, SPECTRAL, LAYOUT, device="cpu", min_full_pixels=6, refit_growth=1e9)
    reference = torch.as_tensor(field)
    scorer = ReferenceScorer(reference)
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {})
    assert scorer.score(rec) == pytest.approx(r2_score(reference, rec.estimate_blocks()), rel=1e-6)
    for p in range(1, 1 + rec.changes.max_events):  # two events each: past what the log keeps
        if not rec.measured[p, 1]:
            rec.add(p, 1, field[p, 1])
    assert rec.changes.start > 0
    assert scorer.score(rec) == pytest.approx(r2_score(reference, rec.estimate_blocks()), rel=1e-6)
    copied = copy.deepcopy(rec)
    copied.add(120, 2, field[120, 2])
    plain = r2_score(reference, copied.estimate_blocks())
    assert scorer.score(copied) == pytest.approx(plain, rel=1e-6)
    rec.reset()
    _fill(rec, field, [0, 17, 40, 77, 101, 143], {3: [0]})
    assert scorer.score(rec) == pytest.approx(r2_score(reference, rec.estimate_blocks()), rel=1e-6)
