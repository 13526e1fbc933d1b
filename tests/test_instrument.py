"""The replay instrument: returns recorded values and charges cost-model seconds."""

import numpy as np
import pytest

from envs.data.dataset import Dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, ReplayInstrument


@pytest.fixture
def dataset() -> Dataset:
    data = np.random.default_rng(0).normal(size=(4, 5, 8, 3)).astype(np.float32)
    data[2, 3, 5] = np.nan
    return Dataset(data)


def test_replay_satisfies_protocol(dataset):
    instrument = ReplayInstrument(dataset, CostModel())
    assert isinstance(instrument, Instrument)
    assert instrument.grid_shape == (4, 5)
    assert instrument.spectral_shape == (8, 3)


def test_measure_returns_recorded_values_and_cost(dataset):
    cost = CostModel(travel_s_per_pixel=1.0)
    instrument = ReplayInstrument(dataset, cost)
    voltages = np.array([1, 5])
    values, seconds = instrument.measure(2 * 5 + 3, voltages)
    np.testing.assert_array_equal(values, dataset.data[2, 3, [1, 5]])
    assert values.shape == (2, 3)
    assert np.isnan(values[1]).all()
    assert seconds == pytest.approx(cost.measurement_seconds(2, 0, 13, (4, 5)))
    assert instrument.tip_pixel == 13
    # Measuring again in place pays no travel.
    _, again = instrument.measure(13, voltages)
    assert again == pytest.approx(2 * cost.voltage_seconds() + cost.settle_s)


def test_values_are_copies(dataset):
    instrument = ReplayInstrument(dataset, CostModel())
    values, _ = instrument.measure(0, np.array([0]))
    values[:] = 99.0
    assert not np.any(dataset.data == 99.0)


def test_go_to_moves_tip_and_charges_travel(dataset):
    instrument = ReplayInstrument(dataset, CostModel(travel_s_per_pixel=2.0))
    assert instrument.go_to(4) == pytest.approx(8.0)
    assert instrument.tip_pixel == 4


@pytest.mark.parametrize(
    "pixel, voltages, error",
    [
        (20, [0], IndexError),
        (-1, [0], IndexError),
        (1.5, [0], TypeError),
        (0, [8], IndexError),
        (0, [], ValueError),
        (0, [0.5], ValueError),
    ],
)
def test_bad_requests_raise(dataset, pixel, voltages, error):
    instrument = ReplayInstrument(dataset, CostModel())
    with pytest.raises(error):
        instrument.measure(pixel, np.asarray(voltages))
    assert instrument.tip_pixel == 0


def test_rejects_non_dataset():
    with pytest.raises(TypeError, match="envs.Dataset"):
        ReplayInstrument(np.zeros((2, 2, 2)), CostModel())
