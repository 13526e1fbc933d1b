"""The twin instrument with the sample's memory (envs.instruments.memory)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.data.dataset import Dataset
from envs.data.twin import (
    RELAXATION_RICH,
    TwinConfig,
    TwinSample,
    apply_pulses,
    instrument_effects,
    make_twin,
    relaxation_kernel,
    relaxation_response,
    twin_streams,
)
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, ReplayInstrument
from envs.instruments.memory import TwinMemoryInstrument, instrument_for, memory_setting
from reconstruct.base import BlockLayout
from reconstruct.metrics import r2_score

GRID = (8, 9)
N_TIMES = 24
ALL = np.arange(16)
#: No travel and no settling: a revisit's first pulse comes right after the last read, as the
#: next pulse does inside the standard sequence.
NO_GAP = CostModel(settle_s=0.0, travel_s_per_pixel=0.0, reads=N_TIMES)


@pytest.fixture(scope="module")
def sample() -> TwinSample:
    # Wall creep on and spikes frequent, so that the creep scale and the spike bookkeeping are
    # exercised; n_nan_pixels leaves some pixels lost.
    config = TwinConfig(grid=GRID, n_times=N_TIMES, spike_rate=5e-3, **RELAXATION_RICH)
    return make_twin(3, config)


def pixel_params(sample: TwinSample, pixel: int) -> dict[str, np.ndarray]:
    row, col = divmod(pixel, GRID[1])
    return {k: v[row : row + 1, col : col + 1] for k, v in sample.params.items()}


def history_truth(sample: TwinSample, pixel: int, history: np.ndarray) -> np.ndarray:
    """The twin's relaxation_response for ``pixel`` pulsed with ``history`` in one run."""
    config = TwinConfig(**sample.dataset.attrs["config"])
    volts = config.pulse_voltages()[history]
    out = relaxation_response(
        pixel_params(sample, pixel), volts, config.read_times(), config.fast_decay_s
    )
    return out[0, 0]


def spread_programs(n_blocks: int) -> list[np.ndarray]:
    layout = BlockLayout(16, n_blocks, "spread")
    return [layout.voltages(b) for b in range(n_blocks)]


def test_satisfies_the_protocol(sample):
    instrument = TwinMemoryInstrument(sample, CostModel())
    assert isinstance(instrument, Instrument)
    assert instrument.grid_shape == GRID
    assert instrument.spectral_shape == (16, N_TIMES)


@pytest.mark.parametrize("relax", [True, False])
def test_noise_free_values_follow_each_pixels_pulse_history(sample, relax):
    """Blocks measured one after the other read what one run of all their pulses gives."""
    instrument = TwinMemoryInstrument(
        sample, NO_GAP, effects=False, relax_between_visits=relax
    )
    # Histories that contain the largest pulse (index 15), which scales the wall creep.
    histories = {0: spread_programs(4), 5: spread_programs(2), 17: [np.arange(8, 16), ALL[:8]]}
    for pixel, programs in histories.items():
        got = [instrument.measure(pixel, program)[0] for program in programs]
        expected = history_truth(sample, pixel, np.concatenate(programs))
        np.testing.assert_array_equal(np.concatenate(got), expected)


def test_values_with_effects_are_the_history_through_the_twins_effects(sample):
    instrument = TwinMemoryInstrument(sample, NO_GAP)
    config = TwinConfig(**sample.dataset.attrs["config"])
    draws = instrument_effects(twin_streams(3)[2], sample.dataset.truth, config)
    programs = spread_programs(4)
    changed = sample.dataset.truth.copy()
    got = {}
    for pixel in range(GRID[0] * GRID[1]):
        values = np.concatenate([instrument.measure(pixel, p)[0] for p in programs])
        history = np.concatenate(programs)
        changed[divmod(pixel, GRID[1])][history] = history_truth(sample, pixel, history)
        got[pixel] = (history, values)
    expected = draws.apply(changed).reshape(GRID[0] * GRID[1], 16, N_TIMES)
    for pixel, (history, values) in got.items():
        np.testing.assert_array_equal(values, expected[pixel, history])
    assert any(np.isnan(v).all() for _, v in got.values())  # lost pixels stay lost


def test_a_first_full_sequence_is_the_replay_bit_for_bit(sample):
    memory = TwinMemoryInstrument(sample, CostModel())
    replay = ReplayInstrument(sample.dataset, CostModel())
    for pixel in range(GRID[0] * GRID[1]):
        got, seconds = memory.measure(pixel, ALL)
        want, want_seconds = replay.measure(pixel, ALL)
        np.testing.assert_array_equal(got, want)
        assert seconds == want_seconds
    # Cut reads: the first pulse reads the replay's window; the next pulses meet a state that
    # relaxed for less time, so they read otherwise.
    memory.reset_state()
    got, seconds = memory.measure(3, ALL, 7)
    want, want_seconds = replay.measure(3, ALL, 7)
    np.testing.assert_array_equal(got[0], want[0])
    assert not np.array_equal(got, want) and seconds == want_seconds
    noise_free = TwinMemoryInstrument(sample, CostModel(), effects=False)
    np.testing.assert_array_equal(noise_free.measure(4, ALL)[0], sample.dataset.truth[0, 4])


def test_revisits_read_differently_from_the_replay(sample):
    instrument = TwinMemoryInstrument(sample, CostModel(), effects=False)
    truth = sample.dataset.truth.reshape(-1, 16, N_TIMES)
    scores = []
    for program in spread_programs(4):  # a pixel completed block by block
        got = np.stack([instrument.measure(p, program)[0] for p in range(truth.shape[0])])
        scores.append(r2_score(truth[:, program], got))
    # The first block met the as-grown state the standard sequence starts from; the later ones
    # met states the skipped pulses never made.
    assert scores[0] > 0.95 and min(scores[1:]) < 0.9, scores


def test_relaxation_between_visits(sample):
    """A revisit after a long wait meets the state with its back-switching relaxed away."""
    cost = CostModel(reads=N_TIMES)
    instrument = TwinMemoryInstrument(sample, cost, effects=False)
    frozen = TwinMemoryInstrument(sample, cost, effects=False, relax_between_visits=False)
    first, second = ALL[:8], ALL[8:]
    for inst in (instrument, frozen):
        inst.measure(10, first)
    state = instrument.state_dict()
    tau, beta = sample.params["tau"].flat[10], sample.params["beta"].flat[10]
    at_read = np.exp(-((state["read_age_s"][10] / tau) ** beta))
    settled = state["polarisation"][10] - state["pending"][10] * at_read
    assert state["pending"][10] != 0.0
    instrument.wait(1e9)
    got = instrument.measure(10, second)[0]
    config = TwinConfig(**sample.dataset.attrs["config"])
    params = {k: v.reshape(-1)[10:11] for k, v in sample.params.items()}
    want = apply_pulses(
        params,
        np.array([settled]),
        config.pulse_voltages()[second],
        relaxation_kernel(params, config.read_times()),
        np.exp(-config.read_times() / config.fast_decay_s),
        float(np.abs(config.pulse_voltages()).max()),
    )[0][0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.array_equal(got, frozen.measure(10, second)[0])


def test_memory_off_is_the_replay_bit_for_bit(sample):
    memory_off = TwinMemoryInstrument(sample.dataset, CostModel(), memory=False)
    replay = ReplayInstrument(sample.dataset, CostModel())
    rng = np.random.default_rng(0)
    for _ in range(60):
        pixel = int(rng.integers(GRID[0] * GRID[1]))
        voltages = rng.choice(16, size=int(rng.integers(1, 5)), replace=False)  # any order
        reads = [None, 5][int(rng.integers(2))]
        got, seconds = memory_off.measure(pixel, voltages, reads)
        want, want_seconds = replay.measure(pixel, voltages, reads)
        np.testing.assert_array_equal(got, want)
        assert seconds == want_seconds and memory_off.tip_pixel == replay.tip_pixel
    assert memory_off.go_to(3) == replay.go_to(3)
    # A recorded file can be replayed.
    recorded = Dataset(np.ones((4, 4, 3, 2), dtype=np.float32))
    values, _ = TwinMemoryInstrument(recorded, CostModel(), memory=False).measure(5, [2, 0])
    np.testing.assert_array_equal(values, np.ones((2, 2)))


def random_history(seed: int, n: int) -> list[tuple[int, np.ndarray, int | None]]:
    """Measurements with revisits, repeated voltages and read windows."""
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(n):
        voltages = np.sort(rng.choice(16, size=int(rng.integers(1, 9)), replace=False))
        reads = [None, 6, 12][int(rng.integers(3))]
        history.append((int(rng.integers(12)), voltages, reads))
    return history


def run(instrument: TwinMemoryInstrument, history) -> list[np.ndarray]:
    return [instrument.measure(p, v, r)[0] for p, v, r in history]


def test_deterministic_by_seed(sample):
    history = random_history(1, 80)
    first = run(TwinMemoryInstrument(sample, CostModel()), history)
    again = run(TwinMemoryInstrument(sample.dataset, CostModel()), history)  # regenerated twin
    other = run(TwinMemoryInstrument(sample, CostModel(), noise_seed=99), history)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Another noise seed changes repeated readings only.
    assert any(not np.array_equal(a, c, equal_nan=True) for a, c in zip(first, other, strict=True))
    np.testing.assert_array_equal(first[0], other[0])


def test_state_save_and_restore_reproduce_the_next_measurements(sample, tmp_path):
    before, after = random_history(2, 40), random_history(3, 40)
    instrument = TwinMemoryInstrument(sample, CostModel())
    run(instrument, before)
    np.savez(tmp_path / "state.npz", **instrument.state_dict())
    want = run(instrument, after)
    restored = TwinMemoryInstrument(sample, CostModel())
    with np.load(tmp_path / "state.npz") as saved:
        restored.load_state_dict(dict(saved))
    for a, b in zip(want, run(restored, after), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="noise_seed"):
        TwinMemoryInstrument(sample, CostModel(), noise_seed=5).load_state_dict(
            instrument.state_dict()
        )


def test_bad_input_is_one_clear_error(sample):
    instrument = TwinMemoryInstrument(sample, CostModel())
    n_pixels = GRID[0] * GRID[1]
    with pytest.raises(IndexError, match="out of range"):
        instrument.measure(n_pixels, ALL)
    with pytest.raises(IndexError, match="out of range"):
        instrument.measure(0, np.array([3, 16]))
    for bad in (np.array([]), np.array([0.0, 1.0]), np.zeros((2, 2), int)):
        with pytest.raises(ValueError, match="non-empty 1-D integer"):
            instrument.measure(0, bad)
    for unordered in (np.array([3, 1]), np.array([2, 2])):
        with pytest.raises(ValueError, match="not strictly ascending"):
            instrument.measure(0, unordered)
    with pytest.raises(ValueError, match="reads must be in"):
        instrument.measure(0, ALL, N_TIMES + 1)
    assert instrument.visits.sum() == 0  # nothing was applied
    recorded = Dataset(np.ones((4, 4, 3, 2), dtype=np.float32), source="scan.h5")
    with pytest.raises(ValueError, match="a recorded file has no memory to simulate"):
        TwinMemoryInstrument(recorded, CostModel())
    edited = Dataset(
        sample.dataset.data + 1.0, sample.dataset.axes, attrs=sample.dataset.attrs
    )
    for effects in (True, False):
        with pytest.raises(ValueError, match="not those of twin seed 3"):
            TwinMemoryInstrument(edited, CostModel(), effects=effects)
    with pytest.raises(ValueError, match="seconds must be"):
        instrument.wait(-1.0)


def test_a_pixel_alone_computes_what_the_grid_computes():
    """The grid's truth takes apply_pulses' pulse-by-pulse path, one pixel its batched one."""
    sample = make_twin(5, TwinConfig(grid=(12, 12), **RELAXATION_RICH))
    assert sample.dataset.truth.size > 1 << 16
    instrument = TwinMemoryInstrument(sample, CostModel(), effects=False)
    truth = sample.dataset.truth.reshape(144, 16, -1)
    for pixel in range(144):
        np.testing.assert_array_equal(instrument.measure(pixel, ALL)[0], truth[pixel])


def test_the_programs_study_runs_and_writes_json(tmp_path, capsys):
    from studies.memory_programs import main

    out = tmp_path / "programs.json"
    args = ["--seeds", "3", "--grid", "5", "--blocks", "2", "--relax", "on", "--out", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    whole = [r for r in rows if r["program"] == "whole sequence"]
    assert whole and all(r["r2"] == [1.0] for r in whole)  # the standard sequence itself
    assert "completed spread 2 in place" in capsys.readouterr().out


def test_a_saved_twin_still_remembers(sample, tmp_path):
    from envs.data.loaders import load_dataset, save_dataset

    save_dataset(sample.dataset, tmp_path / "twin.h5")
    loaded = TwinMemoryInstrument(load_dataset(tmp_path / "twin.h5"), CostModel())
    history = random_history(4, 30)
    fresh = TwinMemoryInstrument(sample, CostModel())
    for a, b in zip(run(loaded, history), run(fresh, history), strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_entries_read_before_get_fresh_noise(sample):
    """A longer read window at a block read before: new reads carry the twin's own noise."""
    config = TwinConfig(**sample.dataset.attrs["config"])
    draws = instrument_effects(twin_streams(3)[2], sample.dataset.truth, config)
    noisy = TwinMemoryInstrument(sample, CostModel())
    clean = TwinMemoryInstrument(sample, CostModel(), effects=False)
    pixel = next(p for p in range(GRID[0] * GRID[1]) if p not in set(draws.lost.tolist()))
    block = spread_programs(4)[1]
    for reads in (6, None):
        got = noisy.measure(pixel, block, reads)[0]
        truth = clean.measure(pixel, block, reads)[0]
    gain, offset = np.float32(draws.gain.flat[pixel]), np.float32(draws.offset.flat[pixel])
    noise = got - (truth * gain + offset)
    recorded = draws.noise.reshape(-1, 16, N_TIMES)[pixel, block]
    spiked = np.zeros(sample.dataset.truth.size, bool)
    spiked[draws.spike_index] = True
    unspiked = ~spiked.reshape(-1, 16, N_TIMES)[pixel, block, 6:]
    np.testing.assert_allclose(noise[:, 6:][unspiked], recorded[:, 6:][unspiked], atol=1e-5)
    assert not np.allclose(noise[:, :6], recorded[:, :6], atol=1e-3)


def test_instrument_for_simulates_a_twin_and_replays_a_file(sample):
    cost = CostModel().for_axes(sample.dataset.axes)
    assert isinstance(instrument_for(sample.dataset, cost), TwinMemoryInstrument)
    assert isinstance(instrument_for(sample.dataset, cost, memory=False), ReplayInstrument)
    recorded = Dataset(sample.dataset.data, sample.dataset.axes, source="scan.h5")
    assert isinstance(instrument_for(recorded, cost), ReplayInstrument)
    with pytest.raises(ValueError, match="a recorded file has no memory to simulate"):
        instrument_for(recorded, cost, memory=True)


def test_memory_settings_are_named_in_one_line():
    assert [memory_setting(s) for s in ("auto", "on", "off", None, True)] == [
        None, True, False, None, True
    ]
    with pytest.raises(ValueError, match="the settings are auto .*, on and off"):
        memory_setting("yes")


def test_a_first_visit_reads_as_a_pristine_sample_whatever_the_pixel_went_through(sample):
    block = np.array([2, 6, 10, 14])
    pristine = TwinMemoryInstrument(sample, CostModel()).measure(5, block)[0]
    pulsed = TwinMemoryInstrument(sample, CostModel())
    pulsed.measure(5, ALL)
    pulsed.measure(6, ALL)
    assert not np.array_equal(pulsed.measure(5, block)[0], pristine)  # a revisit
    np.testing.assert_array_equal(pulsed.measure_first_visit(5, block), pristine)
    assert pulsed.visits[6] == 1  # the other pixels keep their state
