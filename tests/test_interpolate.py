"""Tests for the baseline reconstructors in reconstruct.interpolate and the name registry."""

import numpy as np
import pytest
import torch

from reconstruct.base import BlockLayout
from reconstruct.interpolate import (
    InverseDistance,
    LinearInterpolation,
    MeanSpectrum,
    NearestNeighbour,
)
from reconstruct.metrics import r2_score
from reconstruct.registry import make_reconstructor, reconstructor_class, reconstructor_names

ALL = [MeanSpectrum, NearestNeighbour, InverseDistance, LinearInterpolation]
SPATIAL, SPECTRAL = (12, 10), (4, 3)
LAYOUT = BlockLayout(4, 2)


def smooth_field(seed: int = 0) -> np.ndarray:
    """A smooth (12, 10, 4, 3) field whose spectra vary with position."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(SPATIAL[0]), np.arange(SPATIAL[1]), indexing="ij")
    maps = np.stack([np.sin(i / 3 + k) + np.cos(j / 4 - k) for k in range(3)], axis=-1)
    spectra = rng.normal(size=(3, *SPECTRAL))
    return np.einsum("xyk,kvt->xyvt", maps, spectra)


def fill(recon, blocks: np.ndarray, pixels: np.ndarray, block_ids=(0, 1)) -> None:
    for p in pixels:
        for b in block_ids:
            recon.add(int(p), b, blocks[p, b])


@pytest.mark.parametrize("cls", ALL)
def test_exact_at_measured_points(cls) -> None:
    blocks = LAYOUT.to_blocks(smooth_field())
    recon = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    pixels = np.random.default_rng(1).choice(120, 30, replace=False)
    fill(recon, blocks, pixels)
    est = recon.estimate_blocks()
    assert est.shape == (120, 2, 6) and est.dtype == torch.float32
    np.testing.assert_allclose(est[pixels].numpy(), blocks[pixels], rtol=1e-6, atol=1e-6)
    full = recon.estimate()
    assert full.shape == (*SPATIAL, *SPECTRAL)


@pytest.mark.parametrize("cls", ALL)
def test_constant_field_reproduced(cls) -> None:
    const = np.broadcast_to(np.arange(12.0).reshape(1, 1, 4, 3), (*SPATIAL, *SPECTRAL))
    blocks = LAYOUT.to_blocks(np.ascontiguousarray(const))
    recon = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu", dtype=torch.float64)
    fill(recon, blocks, np.array([0, 17, 55, 63, 119, 90]))
    np.testing.assert_allclose(recon.estimate_blocks().numpy(), blocks, atol=1e-10)


def test_linear_reproduces_planes_inside_hull() -> None:
    """Linear interpolation is exact for an affine field; nearest neighbour is not."""
    i, j = np.meshgrid(np.arange(SPATIAL[0]), np.arange(SPATIAL[1]), indexing="ij")
    plane = (2 * i - 3 * j + 1.0)[..., None, None] * np.ones((1, 1, *SPECTRAL))
    blocks = LAYOUT.to_blocks(plane)
    corners = np.array([0, 9, 110, 119, 45])  # the hull is the whole grid
    lin = LinearInterpolation(SPATIAL, SPECTRAL, LAYOUT, device="cpu", dtype=torch.float64)
    near = NearestNeighbour(SPATIAL, SPECTRAL, LAYOUT, device="cpu", dtype=torch.float64)
    for recon in (lin, near):
        fill(recon, blocks, corners)
    np.testing.assert_allclose(lin.estimate_blocks().numpy(), blocks, atol=1e-9)
    assert np.abs(near.estimate_blocks().numpy() - blocks).max() > 1


def test_interpolators_beat_mean_on_smooth_field() -> None:
    blocks = LAYOUT.to_blocks(smooth_field())
    pixels = np.random.default_rng(2).choice(120, 36, replace=False)
    scores = {}
    for cls in ALL:
        recon = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
        fill(recon, blocks, pixels)
        scores[cls.name] = r2_score(blocks, recon.estimate_blocks())
    for name in ("nearest", "idw", "linear"):
        assert scores[name] > 0.8 > scores["mean"] + 0.3, scores


def test_mean_spectrum_scores_zero() -> None:
    """Unmeasured rows mirror the measured ones, so the measured mean is the true mean there."""
    field = smooth_field()
    field[6:] = field[5::-1]
    blocks = LAYOUT.to_blocks(field)
    recon = MeanSpectrum(SPATIAL, SPECTRAL, LAYOUT, device="cpu", dtype=torch.float64)
    fill(recon, blocks, np.arange(60))  # rows 0-5
    reference = blocks.copy()
    reference[:60] = np.nan  # score only the pixels it had to estimate
    assert r2_score(reference, recon.estimate_blocks()) == pytest.approx(0.0, abs=1e-12)


def test_partial_spectra_are_interpolated_per_block() -> None:
    blocks = LAYOUT.to_blocks(smooth_field())
    recon = NearestNeighbour(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    recon.add(0, 0, blocks[0, 0])  # block 0 known only at pixel 0
    recon.add(119, 1, blocks[119, 1])  # block 1 known only at pixel 119
    est = recon.estimate_blocks().numpy()
    np.testing.assert_allclose(est[:, 0], np.broadcast_to(blocks[0, 0], (120, 6)), rtol=1e-6)
    np.testing.assert_allclose(est[:, 1], np.broadcast_to(blocks[119, 1], (120, 6)), rtol=1e-6)


def test_unmeasured_block_is_zero_and_estimate_updates_lazily() -> None:
    blocks = LAYOUT.to_blocks(smooth_field())
    recon = InverseDistance(SPATIAL, SPECTRAL, LAYOUT, device="cpu", k=3)
    fill(recon, blocks, [3, 40, 77], block_ids=(0,))
    first = recon.estimate_blocks().clone()
    assert torch.all(first[:, 1] == 0)
    recon.add(50, 1, blocks[50, 1])
    second = recon.estimate_blocks()
    torch.testing.assert_close(second[:, 0], first[:, 0])  # block 0 untouched
    assert torch.all(second[:, 1] != 0)


@pytest.mark.parametrize("cls", [NearestNeighbour, LinearInterpolation])
def test_incremental_equals_from_scratch(cls) -> None:
    blocks = LAYOUT.to_blocks(smooth_field(3))
    pixels = np.random.default_rng(4).permutation(120)[:50]
    step = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    for k, p in enumerate(pixels):
        fill(step, blocks, [p])
        if k % 7 == 0:
            step.estimate_blocks()
    batch = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    batch.add_many(np.repeat(pixels, 2), np.tile([0, 1], 50), blocks[pixels].reshape(100, 6))
    torch.testing.assert_close(step.estimate_blocks(), batch.estimate_blocks())


def test_linear_with_collinear_points_falls_back_to_nearest() -> None:
    blocks = LAYOUT.to_blocks(smooth_field())
    lin = LinearInterpolation(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    near = NearestNeighbour(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    for recon in (lin, near):
        fill(recon, blocks, [0, 1, 2, 3])  # one grid row: no triangle
    torch.testing.assert_close(lin.estimate_blocks(), near.estimate_blocks())


@pytest.mark.parametrize("cls", ALL)
def test_bad_input_leaves_state_unchanged(cls) -> None:
    recon = cls(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    good = np.ones((2, 3))
    recon.add(5, 0, good)
    before = recon.estimate_blocks().clone()
    with pytest.raises(IndexError, match="pixel"):
        recon.add(120, 0, good)
    with pytest.raises(IndexError, match="block"):
        recon.add(1, 2, good)
    with pytest.raises(ValueError, match="shape"):
        recon.add(1, 0, np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        recon.add(1, 0, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="already measured"):
        recon.add(5, 0, good)
    assert recon.n_measured == 1
    torch.testing.assert_close(recon.estimate_blocks(), before)


def test_reset_forgets() -> None:
    recon = LinearInterpolation(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    recon.add(5, 0, np.ones((2, 3)))
    recon.reset()
    assert recon.n_measured == 0
    assert torch.all(recon.estimate_blocks() == 0)
    recon.add(5, 0, np.ones((2, 3)))  # may be measured again after a reset


def test_idw_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="k must"):
        InverseDistance(SPATIAL, SPECTRAL, k=0)
    with pytest.raises(ValueError, match="power"):
        InverseDistance(SPATIAL, SPECTRAL, power=-1)


def test_registry() -> None:
    assert {"mean", "nearest", "idw", "linear", "gp", "lowrank"} <= set(reconstructor_names())
    recon = make_reconstructor("idw", SPATIAL, SPECTRAL, LAYOUT, device="cpu", k=2)
    assert isinstance(recon, InverseDistance) and recon.k == 2
    assert reconstructor_class("linear") is LinearInterpolation
    with pytest.raises(KeyError, match="choose one of"):
        make_reconstructor("kriging", SPATIAL, SPECTRAL)


def test_registry_names_exactly_the_defining_module() -> None:
    # Every Reconstructor subclass with a name, in every module of the package, is found: the
    # registry must point each name at that module and no other.
    import importlib
    import pkgutil

    import reconstruct
    from reconstruct.base import Reconstructor
    from reconstruct.registry import _MODULES

    defined_in: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(reconstruct.__path__, "reconstruct."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Reconstructor)
                and obj.__module__ == module.__name__
                and "name" in vars(obj)
            ):
                defined_in.setdefault(obj.name, set()).add(module.__name__)
    for name in reconstructor_names():
        assert defined_in.get(name) == {_MODULES[name]}, name
        assert reconstructor_class(name).__module__ == _MODULES[name]


def test_add_many_rejects_the_whole_batch() -> None:
    recon = NearestNeighbour(SPATIAL, SPECTRAL, LAYOUT, device="cpu")
    good = np.ones((3, 6))
    bad_values = good.copy()
    bad_values[2, 0] = np.nan
    with pytest.raises(ValueError, match="pixel 7 block 1 contain NaN"):
        recon.add_many([1, 2, 7], [0, 0, 1], bad_values)
    with pytest.raises(ValueError, match="already measured"):
        recon.add_many([1, 2, 1], [0, 0, 0], good)  # a repeat inside the batch
    with pytest.raises(IndexError, match="pixel 999"):
        recon.add_many([1, 999, 2], [0, 0, 0], good)
    with pytest.raises(ValueError, match="must match"):
        recon.add_many([1, 2], [0, 0], good)
    assert recon.n_measured == 0
    recon.add_many([1, 2, 7], [0, 0, 1], good)
    assert recon.n_measured == 3
    with pytest.raises(ValueError, match="already measured"):
        recon.add_many([7], [1], good[:1])
