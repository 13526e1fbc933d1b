"""The cost model: per-measurement seconds, full-raster seconds and the algorithm-time model."""

import math

import numpy as np
import pytest

from envs.data.dataset import Axis
from envs.instruments.cost import CostModel
from reconstruct.base import BlockLayout


def test_default_full_pixel_takes_four_to_five_seconds():
    seconds = CostModel().measurement_seconds(16, 0, 0, (60, 60))
    assert 4.0 <= seconds <= 5.0


def test_measurement_seconds_adds_pulses_settle_and_travel():
    cost = CostModel(
        pulse_s=0.1, reads=10, read_interval_s=0.01, settle_s=0.5, travel_s_per_pixel=2.0
    )
    # 4 voltages x (0.1 + 10 x 0.01) + 0.5 settle + distance 5 (3-4-5 triangle) x 2.0
    from_pixel, to_pixel = 0, 3 * 10 + 4
    assert cost.measurement_seconds(4, from_pixel, to_pixel, (10, 10)) == pytest.approx(
        4 * 0.2 + 0.5 + 10.0
    )
    many = cost.measurement_seconds_many(4, from_pixel, np.array([0, to_pixel]), (10, 10))
    np.testing.assert_allclose(many, [4 * 0.2 + 0.5, 4 * 0.2 + 0.5 + 10.0])


def test_full_raster_equals_sum_of_raster_measurements():
    cost = CostModel(travel_s_per_pixel=0.3)
    grid, layout = (5, 7), BlockLayout(16, 4)
    total, tip = 0.0, 0
    for pixel in range(35):
        for _ in range(layout.n_blocks):
            total += cost.measurement_seconds(layout.block_size, tip, pixel, grid)
            tip = pixel
    assert cost.full_raster_seconds(grid, 16, layout) == pytest.approx(total)
    # One block per pixel settles once instead of four times.
    assert cost.full_raster_seconds(grid, 16) == pytest.approx(total - 35 * 3 * cost.settle_s)


def test_full_raster_rejects_layout_of_other_length():
    with pytest.raises(ValueError, match="layout covers 8 voltages"):
        CostModel().full_raster_seconds((4, 4), 16, BlockLayout(8, 2))


def test_algorithm_model_is_linear_and_deterministic():
    cost = CostModel(algorithm_base_s=0.01, algorithm_per_block_s=0.001)
    assert cost.algorithm_s(0) == pytest.approx(0.01)
    assert cost.algorithm_s(100) == pytest.approx(0.11)
    with pytest.raises(ValueError, match="n_measured"):
        cost.algorithm_s(-1)


def test_for_axes_reads_time_axis_in_its_unit():
    axes = [
        Axis("x", np.arange(3)), Axis("y", np.arange(3)), Axis("voltage", np.arange(4), "V"),
        Axis("time", np.arange(1, 51) * 4.0, "ms"),
    ]
    cost = CostModel().for_axes(axes)
    assert cost.reads == 50
    assert cost.read_interval_s == pytest.approx(0.004)
    assert CostModel().for_axes(axes, {"reads": 7}).reads == 7
    # An index-valued time axis sets the number of reads but not their interval.
    index_axes = axes[:3] + [Axis("time", np.arange(50), "index")]
    assert CostModel().for_axes(index_axes).read_interval_s == CostModel().read_interval_s


@pytest.mark.parametrize(
    "params, message",
    [
        ({"pulse_s": -1.0}, "pulse_s must be finite and >= 0"),
        ({"settle_s": math.nan}, "settle_s"),
        ({"reads": 2.5}, "whole number"),
        ({"algorithm_clock": "sundial"}, "algorithm_clock"),
        ({"speed": 1.0}, "unknown cost-model parameters"),
        ({"pulse_s": "fast"}, "must be a number"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CostModel.from_dict(params)


def test_round_trip_through_dict():
    cost = CostModel(pulse_s=0.05, algorithm_clock="wall")
    assert CostModel.from_dict(cost.to_dict()) == cost


def test_out_of_range_pixels_raise():
    with pytest.raises(IndexError, match="to_pixel 16 out of range"):
        CostModel().measurement_seconds(4, 0, 16, (4, 4))
