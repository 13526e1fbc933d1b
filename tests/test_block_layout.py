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


# Recorded from the layouts before blocks could be uneven: even layouts must not change.
RECORDED_EVEN_SLOTS = {
    ("spread", 2): [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15],
    ("spread", 4): [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15],
    ("spread", 8): list(range(16)),
    ("interleaved", 4): [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15],
    ("contiguous", 4): list(range(16)),
}


@pytest.mark.parametrize(("scheme", "n_blocks"), sorted(RECORDED_EVEN_SLOTS))
def test_even_layouts_are_unchanged(scheme, n_blocks):
    layout = BlockLayout(16, n_blocks, scheme)
    tensor = np.random.default_rng(0).normal(size=(3, 4, 16, 5)).astype(np.float32)
    recorded = RECORDED_EVEN_SLOTS[(scheme, n_blocks)]
    assert layout.is_even and not layout.spare_slots.any()
    assert layout.permutation().tolist() == recorded
    expected = tensor[:, :, recorded].reshape(12, n_blocks, -1)
    np.testing.assert_array_equal(layout.to_blocks(tensor), expected)
    np.testing.assert_array_equal(layout.to_blocks(tensor, spare=np.nan), expected)


@pytest.mark.parametrize("scheme", ["spread", "interleaved", "contiguous"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_uneven_blocks_partition_and_round_trip_exactly(scheme, as_torch):
    layout = BlockLayout(99, 4, scheme)
    sizes = [len(layout.voltages(b)) for b in range(4)]
    assert sizes == [25, 25, 25, 24] == layout.applied_counts.tolist()
    assert [layout.n_applied(b) for b in range(4)] == sizes
    voltages = np.concatenate([layout.voltages(b) for b in range(4)])
    assert sorted(voltages) == list(range(99)), "every voltage in exactly one block"
    assert layout.block_size == 25 and layout.spare_slots.sum() == 1

    tensor = np.random.default_rng(1).normal(size=(3, 2, 99, 3)).astype(np.float32)
    data = torch.from_numpy(tensor) if as_torch else tensor
    blocks = layout.to_blocks(data)
    assert tuple(blocks.shape) == (6, 4, 25 * 3)
    # The short block repeats its last voltage in its spare (last) slot.
    last = layout.voltages(3)[-1]
    slots = np.asarray(blocks).reshape(6, 4, 25, 3)
    np.testing.assert_array_equal(slots[:, 3, 24], tensor.reshape(6, 99, 3)[:, last])
    np.testing.assert_array_equal(np.asarray(layout.from_blocks(blocks, (3, 2), (3,))), tensor)
    scored = np.asarray(layout.to_blocks(data, spare=np.nan)).reshape(6, 4, 25, 3)
    assert np.isnan(scored[:, 3, 24]).all() and np.isfinite(scored[:, :3]).all()
    np.testing.assert_array_equal(scored[:, 3, :24], slots[:, 3, :24])


def test_to_slots_repeats_the_last_voltage_of_a_short_block():
    layout = BlockLayout(10, 4, "contiguous")  # blocks of 3, 3, 2, 2 voltages
    measured = np.arange(2 * 5).reshape(2, 5)
    np.testing.assert_array_equal(layout.to_slots(3, measured), measured[[0, 1, 1]])
    np.testing.assert_array_equal(layout.to_slots(0, np.ones((3, 5))), np.ones((3, 5)))
    assert torch.equal(layout.to_slots(3, torch.ones(2, 5)), torch.ones(3, 5))
    with pytest.raises(ValueError, match="block 3 measures 2 voltages"):
        layout.to_slots(3, np.ones((3, 5)))


def test_uneven_spread_deals_full_rounds_of_pairs_then_single_voltages():
    layout = BlockLayout(99, 4, "spread")
    assert layout.effective_scheme == "spread"
    # 12 full rounds of pairs take voltages 0-95; 96, 97, 98 go to blocks 0, 1, 2.
    for b in range(4):
        v = layout.voltages(b)
        assert {int(x) % 2 for x in v} == {0, 1}, "both signs in every block"
        assert v.min() < 8 and v.max() >= 86, "low and high amplitudes in every block"
        assert set(range(2 * b, 96, 8)) <= set(v.tolist())
    assert [int(layout.voltages(b)[-1]) for b in range(3)] == [96, 97, 98]
    # Too few voltages for one round of pairs: voltages are dealt one by one (interleaved).
    few = BlockLayout(7, 4, "spread")
    assert few.effective_scheme == "interleaved"
    assert [few.voltages(b).tolist() for b in range(4)] == [[0, 4], [1, 5], [2, 6], [3]]


def test_uneven_blocks_cost_the_voltages_they_apply():
    from envs.instruments.cost import CostModel

    cost, grid = CostModel(travel_s_per_pixel=0.3), (3, 4)
    layout = BlockLayout(102, 4)  # 26, 26, 25 and 25 voltages
    assert layout.applied_counts.tolist() == [26, 26, 25, 25]
    per_block = [cost.measurement_seconds(layout.n_applied(b), 5, 5, grid) for b in range(4)]
    assert per_block[0] - per_block[3] == pytest.approx(cost.voltage_seconds())
    assert sum(per_block) == pytest.approx(cost.pixel_seconds(102, 4))
    assert cost.pixel_seconds(102, 4) == pytest.approx(102 * cost.voltage_seconds() + 4 * 0.1)
    total, tip = 0.0, 0
    for pixel in range(12):
        for block in range(4):
            total += cost.measurement_seconds(layout.n_applied(block), tip, pixel, grid)
            tip = pixel
    assert cost.full_raster_seconds(grid, 102, layout) == pytest.approx(total)


def test_reconstructors_take_a_short_block_as_measured_or_in_slots():
    from reconstruct.interpolate import MeanSpectrum

    layout = BlockLayout(10, 4, "contiguous")
    recon = MeanSpectrum((2, 2), (10, 3), layout, device="cpu")
    measured = np.arange(6.0).reshape(2, 3)  # block 3: voltages 8 and 9
    recon.add(0, 3, measured)
    recon.add(1, 3, layout.to_slots(3, measured).reshape(-1))
    recon.add_many([2, 3], [0, 3], [np.ones((3, 3)), measured])
    np.testing.assert_array_equal(recon.estimate()[0, 0, 8:].numpy(), measured)
    np.testing.assert_array_equal(recon.estimate()[0, 1, 8:].numpy(), measured)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        recon.add(2, 3, np.ones((4, 3)))
