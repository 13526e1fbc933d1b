"""The oracle block-predictability measure: recovers what is determined, and nothing else."""

import numpy as np
import pytest

from reconstruct.base import BlockLayout
from studies.predictability import block_predictability, format_table

GRID, VOLTAGES, TIMES = 24, 8, 6


def _smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(GRID, GRID, n)`` spatially smooth random maps (sums of low-frequency waves)."""
    xx, yy = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    maps = np.zeros((GRID, GRID, n))
    for i in range(n):
        for _ in range(3):
            kx, ky, phase = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.35), rng.uniform(0, 6.3)
            maps[..., i] += np.sin(kx * xx + ky * yy + phase)
    return maps


def test_exactly_low_rank_field_is_fully_determined_by_any_block():
    rng = np.random.default_rng(0)
    coefficients = rng.normal(size=(GRID, GRID, 3))  # white in space: neighbours cannot help
    basis = rng.normal(size=(3, VOLTAGES, TIMES))
    data = np.einsum("xyk,kvt->xyvt", coefficients, basis)
    result = block_predictability(data, layout=BlockLayout(VOLTAGES, 4))
    for entry in result["blocks"]:
        assert entry["own"]["other_blocks"] > 0.999
        assert entry["own+neighbours"]["other_blocks"] > 0.999


def test_independent_blocks_are_not_predicted_from_the_pixel_but_from_smooth_neighbours():
    rng = np.random.default_rng(1)
    layout = BlockLayout(VOLTAGES, 2)
    # Block 1 is a smooth spatial field, unrelated to block 0's white values at the same pixel.
    white = rng.normal(size=(GRID, GRID, 4, TIMES))
    smooth = np.einsum("xyk,kvt->xyvt", _smooth(rng, 2), rng.normal(size=(2, 4, TIMES)))
    blocks = np.stack([white, smooth], axis=2).reshape(GRID * GRID, 2, -1)
    data = layout.from_blocks(blocks, (GRID, GRID), (TIMES,))
    result = block_predictability(data, layout=layout, components=8)
    block0 = result["blocks"][0]  # predicts the smooth block from the white one
    assert block0["own"]["other_blocks"] < 0.1
    assert block0["own+neighbours"]["other_blocks"] > 0.9
    block1 = result["blocks"][1]  # the white block is unpredictable from anything
    assert block1["own+neighbours"]["other_blocks"] < 0.1
    assert "mean" in format_table(result)


def test_noise_free_truth_is_the_target_and_noise_in_the_input_costs_accuracy():
    rng = np.random.default_rng(2)
    truth = np.einsum(
        "xyk,kvt->xyvt", rng.normal(size=(GRID, GRID, 2)), rng.normal(size=(2, VOLTAGES, TIMES))
    )
    noisy = truth + rng.normal(scale=0.5, size=truth.shape)
    clean = block_predictability(truth, truth)["mean"]["own"]["other_blocks"]
    degraded = block_predictability(noisy, truth)["mean"]["own"]["other_blocks"]
    assert clean > 0.999 > degraded > 0.5


def test_bad_input_is_refused_with_a_clear_error():
    data = np.zeros((GRID, GRID, VOLTAGES, TIMES))
    with pytest.raises(ValueError, match="truth shape"):
        block_predictability(data, np.zeros((GRID, GRID, VOLTAGES, TIMES + 1)))
    with pytest.raises(ValueError, match="X, Y >= 3"):
        block_predictability(np.zeros((2, GRID, VOLTAGES)))
    with pytest.raises(ValueError, match="finite neighbourhood"):
        block_predictability(np.full((GRID, GRID, VOLTAGES, TIMES), np.nan))


def test_command_line_takes_twin_settings(tmp_path):
    from studies.predictability import main

    out = tmp_path / "p.json"
    argv = ["--data", "twin:3", "--twin-setting", "grid=[12, 12]", "--twin-setting", "n_times=8"]
    result = main([*argv, "--out", str(out)])
    assert len(result["blocks"]) == 4 and out.is_file()
    with pytest.raises(SystemExit):
        main(["--twin-setting", "pinning_disorder"])
