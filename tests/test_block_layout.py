"""The voltage-block layout: which voltages each block holds, and the block-layout reshapes."""

import numpy as np
import pytest
import torch

from reconstruct.base import BlockLayout


@pytest.mark.parametrize("scheme", ["spread", "interleaved", "contiguous"])
@pytest.mark.parametrize("n_blocks", [1, 2, 4, 8, 16])
def test_blocks_partition_the_voltage_axis(scheme, n_blocks):
    layout = BlockLayout(16, n_blocks, scheme)
    voltages = np.concatenate([layout.voltages(b) for b in range(n_blocks)])
    assert sorted(voltages) == list(range(16))
    assert all(len(layout.voltages(b)) == 16 // n_blocks for b in range(n_blocks))


def test_spread_blocks_hold_both_polarities_over_the_whole_sequence():
    # Alternating pulses: even indices positive, odd negative; amplitude grows with the index.
    layout = BlockLayout(16, 4, "spread")
    for b in range(4):
        v = layout.voltages(b)
        assert {int(x) % 2 for x in v} == {0, 1}, "both signs in every block"
        assert v.min() < 8 <= v.max(), "low and high amplitudes in every block"
    interleaved = BlockLayout(16, 4, "interleaved")
    assert {int(x) % 2 for x in interleaved.voltages(0)} == {0}


def test_spread_falls_back_to_interleaved_when_pairs_do_not_deal_evenly():
    assert BlockLayout(16, 16, "spread").effective_scheme == "interleaved"
    assert BlockLayout(12, 4, "spread").effective_scheme == "interleaved"  # 6 pairs, 4 blocks
    assert BlockLayout(16, 8, "spread").effective_scheme == "spread"


@pytest.mark.parametrize("as_torch", [False, True])
def test_to_blocks_and_back_is_the_identity(as_torch):
    tensor = np.random.default_rng(0).normal(size=(3, 4, 8, 5)).astype(np.float32)
    layout = BlockLayout(8, 4)
    data = torch.from_numpy(tensor) if as_torch else tensor
    blocks = layout.to_blocks(data)
    assert tuple(blocks.shape) == (12, 4, 10)
    # Block b of pixel (i, j) holds exactly the voltages the layout names, in order.
    expected = tensor[1, 2][layout.voltages(3)].reshape(-1)
    np.testing.assert_array_equal(np.asarray(blocks[1 * 4 + 2, 3]), expected)
    back = layout.from_blocks(blocks, (3, 4), (5,))
    np.testing.assert_array_equal(np.asarray(back), tensor)


def test_bad_layouts_are_explained():
    with pytest.raises(ValueError, match="17 blocks for 16 voltages: every block needs at least"):
        BlockLayout(16, 17)
    with pytest.raises(ValueError, match="unknown block scheme"):
        BlockLayout(16, 4, "zigzag")
    with pytest.raises(IndexError):
        BlockLayout(16, 4).voltages(4)
