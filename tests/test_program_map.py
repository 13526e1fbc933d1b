"""Tests for the first-visit correction (reconstruct.program_map) and the pairs that teach it
(envs.instruments.memory.first_visit_pairs)."""

import numpy as np
import pytest

from envs.data.twin import twin_dataset
from envs.instruments.memory import first_visit_pairs
from reconstruct.base import BlockLayout
from reconstruct.metrics import r2_score
from reconstruct.program_map import Program, ProgramMap

GRID, N_TIMES = (14, 14), 16


def _linear_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A program whose values are a fixed linear function of a 3-parameter pixel, beside the
    standard values, another linear function of the same parameters (2 voltages, 5 reads)."""
    rng = np.random.default_rng(0)  # the two maps: fixed across calls
    to_program, to_standard = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    pixels = np.random.default_rng(seed).normal(size=(n, 3))
    return (pixels @ to_program + 0.5).reshape(n, 2, 5), (pixels @ to_standard).reshape(n, 2, 5)


PROGRAM = Program((1, 3), 5)


def test_a_linear_program_is_mapped_to_the_standard_values():
    fitted = ProgramMap(rank=3).fit({PROGRAM: _linear_pairs(200, seed=1)})
    program_values, standard = _linear_pairs(50, seed=2)
    mapped = fitted.apply(PROGRAM, program_values)
    assert mapped.shape == standard.shape and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, standard, rtol=1e-3, atol=1e-3)  # the ridge's shrinkage
    np.testing.assert_array_equal(fitted.apply(PROGRAM, program_values[0]), mapped[0])


def test_a_saved_map_loads_to_the_same_answers(tmp_path):
    fitted = ProgramMap(rank=2).fit({PROGRAM: _linear_pairs(40, seed=1)})
    loaded = ProgramMap.load(fitted.save(tmp_path / "map.npz"))
    values, _ = _linear_pairs(5, seed=3)
    assert loaded.programs == [PROGRAM] and loaded.rank == 2
    np.testing.assert_array_equal(loaded.apply(PROGRAM, values), fitted.apply(PROGRAM, values))


def test_bad_input_is_one_line():
    fitted = ProgramMap(rank=2).fit({PROGRAM: _linear_pairs(40, seed=1)})
    unknown = r"no map for the program voltages \[0, 2\], 5 reads; fitted"
    with pytest.raises(KeyError, match=unknown):
        fitted.apply(Program((0, 2), 5), np.zeros((2, 5)))
    shape = r"must be \(2, 5\) for one pixel or \(n, 2, 5\), got shape \(3, 4\)"
    with pytest.raises(ValueError, match=shape):
        fitted.apply(PROGRAM, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="hold NaN or inf"):
        fitted.apply(PROGRAM, np.full((2, 5), np.nan))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        ProgramMap().fit({PROGRAM: (np.zeros((1, 2, 5)), np.zeros((1, 2, 5)))})
    with pytest.raises(ValueError, match="rows of program values but"):
        ProgramMap().fit({PROGRAM: (np.zeros((3, 2, 5)), np.zeros((4, 2, 5)))})
    with pytest.raises(ValueError, match="ascending indices"):
        Program((3, 1), 5)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        ProgramMap(rank=0)
    with pytest.raises(FileNotFoundError, match="no program map at"):
        ProgramMap.load("no-such-map.npz")


def _twin(seed: int):
    return twin_dataset(seed, grid=GRID, n_times=N_TIMES)


def test_the_whole_sequence_pairs_with_itself_bit_for_bit():
    twin = _twin(3)
    whole = Program(tuple(range(twin.data.shape[2])), N_TIMES)
    program_values, standard = first_visit_pairs(twin, [whole])[whole]
    assert len(program_values) >= 0.9 * GRID[0] * GRID[1]  # lost pixels left out
    np.testing.assert_array_equal(program_values, standard)


def test_a_map_learned_on_training_twins_reads_a_new_twins_first_visits_better():
    layout = BlockLayout(16, 4)  # spread blocks: block 2 alone is not the sequence's middle
    program = Program(tuple(layout.voltages(2).tolist()), N_TIMES)
    training = [first_visit_pairs(_twin(seed), [program])[program] for seed in (1, 2)]
    fitted = ProgramMap(rank=8).fit({
        program: tuple(np.concatenate(side) for side in zip(*training, strict=True))
    })
    program_values, standard = first_visit_pairs(_twin(7), [program])[program]
    raw = r2_score(standard, program_values)
    mapped = r2_score(standard, fitted.apply(program, program_values))
    assert raw < 0.95  # the first-visit gap is there
    assert mapped > raw + 0.02


def test_a_recorded_file_has_no_first_visits_to_simulate(shared_data):
    from envs.data.sources import open_data

    path = shared_data / "bepfm_32x32x102.npy"
    if not path.is_file():
        pytest.skip("the real band-excitation file is not beside the checkout")
    with pytest.raises(ValueError, match="first-visit pairs need a twin"):
        first_visit_pairs(open_data(str(path)), [PROGRAM])
