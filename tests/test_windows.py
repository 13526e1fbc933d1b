"""Read windows: a measurement reads each curve for a prefix of its time points, is charged for
those reads, and the reconstruction takes the partly read curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.catalog import make_policy
from agents.evaluation import dynamics_criterion
from envs.acquisition.factory import make_env
from envs.acquisition.windows import ReadWindows
from envs.data.dataset import Axis, Dataset
from envs.data.twin import twin_dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.remote import InstrumentError, RemoteInstrument
from envs.instruments.server import serving
from reconstruct import BlockLayout, SegmentedLayout
from reconstruct.metrics import dynamics_r2

SMALL = {
    "data": "twin",
    "twin_overrides": {"grid": [10, 10], "n_times": 16},
    "initial_stride": 3,
    "budget_fraction": 1.0,
    "device": "cpu",
}


def _env(**settings):
    return make_env(**{**SMALL, "read_windows": [4, 16], **settings})


# ----------------------------------------------------------------- the windows and their layout
@pytest.mark.parametrize(
    ("reads", "shape", "message"),
    [
        ([0, 16], (4, 16), "at least 1 read"),
        ([8, 32], (4, 16), "holds 16 reads"),
        ([8, 4, 16], (4, 16), "ascending"),
        ([4, 8], (4, 16), "last window must read the whole curve"),
        ([1, 128], (4, 128), "at most 16"),
        ([4, 8], (4,), "need a time axis"),
    ],
)
def test_bad_windows_are_one_line_errors(reads, shape, message):
    with pytest.raises(ValueError, match=message) as error:
        ReadWindows.parse(reads, shape)
    assert "\n" not in str(error.value)


def test_windows_cut_curves_into_common_segments():
    windows = ReadWindows.parse([16, 48, 128], (16, 128))
    assert (windows.segment_reads, windows.n_segments) == (16, 8)
    assert windows.segments.tolist() == [1, 3, 8]
    assert ReadWindows.parse(None, (16, 128)).is_single
    assert ReadWindows.parse(None, (102,)).reads == (1,)  # no time axis: one window


def test_segmented_layout_folds_segments_into_units():
    base = BlockLayout(16, 4)
    units = SegmentedLayout.split(base, 4)
    tensor = np.random.default_rng(0).normal(size=(3, 2, 16, 8))
    folded = units.fold(tensor)
    assert folded.shape == (3, 2, 64, 2)
    blocks = units.to_blocks(folded)
    # unit 4 * block + segment holds that segment of every voltage of the block
    block, segment = 2, 3
    expected = tensor[0, 0][base.voltages(block)][:, 2 * segment : 2 * segment + 2]
    np.testing.assert_array_equal(blocks[0, block * 4 + segment].reshape(4, 2), expected)
    back = units.unfold(units.from_blocks(blocks, (3, 2), (2,)))
    np.testing.assert_array_equal(back, tensor)
    uneven = SegmentedLayout.split(BlockLayout(99, 4), 2)
    assert uneven.applied_counts.tolist() == [25, 25, 25, 25, 25, 25, 24, 24]


# ----------------------------------------------------------------- cost and instruments
def test_a_short_window_is_charged_for_its_reads():
    cost = CostModel()
    full = cost.measurement_seconds(4, 0, 0, (10, 10))
    short = cost.measurement_seconds(4, 0, 0, (10, 10), reads=16)
    assert full - short == pytest.approx(4 * (128 - 16) * cost.read_interval_s)
    with pytest.raises(ValueError, match="reads"):
        cost.measurement_seconds(4, 0, 0, (10, 10), reads=0)


def test_replay_reads_the_first_points_of_each_curve():
    dataset = twin_dataset(1, grid=(6, 6), n_times=16)
    replay = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    values, _ = replay.measure(7, np.array([0, 3]), reads=5)
    np.testing.assert_array_equal(values, dataset.data[1, 1, [0, 3], :5])
    for bad, error in ((0, ValueError), (17, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="reads"):
            replay.measure(7, np.array([0]), reads=bad)
    axes = [Axis("x", np.arange(3)), Axis("y", np.arange(3)), Axis("voltage", np.arange(4))]
    flat = Dataset(np.ones((3, 3, 4), np.float32), axes)
    with pytest.raises(ValueError, match="no time axis"):
        ReplayInstrument(flat, CostModel()).measure(0, np.array([0]), reads=1)


def test_network_instrument_takes_reads_and_refuses_them_on_version_one(monkeypatch):
    dataset = twin_dataset(2, grid=(6, 6), n_times=8)
    cost = CostModel().for_axes(dataset.axes)
    with serving(ReplayInstrument(dataset, cost)) as url:
        remote = RemoteInstrument(url, timeout=10)
        values, seconds = remote.measure(3, np.array([1, 2]), reads=3)
        expected, expected_s = ReplayInstrument(dataset, cost).measure(3, np.array([1, 2]), 3)
        np.testing.assert_array_equal(values, expected)
        assert seconds == expected_s
    import envs.instruments.remote as remote_module

    original = remote_module.describe
    monkeypatch.setattr(
        remote_module, "describe", lambda i: {**original(i), "protocol": "pfm-instrument/1"}
    )
    with serving(ReplayInstrument(dataset, cost)) as url:
        old = RemoteInstrument(url, timeout=10)
        assert old.measure(3, np.array([1]))[0].shape == (1, 8)  # whole curves still work
        with pytest.raises(InstrumentError, match="reads whole curves only"):
            old.measure(3, np.array([1]), reads=3)


# ----------------------------------------------------------------- the environment
def test_single_window_keeps_the_actions_as_they_were():
    env = make_env(**SMALL)
    env.reset(seed=0)
    assert env.action_space.n == env.n_pixels * env.n_blocks
    assert env.decode_action(env.encode_action(13, 3)) == (13, 3, 0)
    assert env.reconstructor.layout == env.layout


def test_short_then_full_window_measures_the_rest_and_charges_both():
    env = _env(memory="off", programs="free")  # a longer window after a shorter: a replay
    env.reset(seed=0)
    assert env.action_space.n == env.n_pixels * env.n_blocks * 2
    assert env.n_segments == 4 and env.n_units == 4 * env.n_blocks
    pixel, block = 1, 2
    start, tip = env.instrument_seconds, env.tip_pixel
    env.step(env.encode_action(pixel, block, 0))
    short = env.instrument_seconds - start
    cost, n = env.cost_model, env.layout.n_applied(block)
    assert short == pytest.approx(
        n * (cost.pulse_s + 4 * cost.read_interval_s) + cost.settle_s
        + cost.travel_seconds(tip, pixel, env.grid_shape)
    )
    assert env.segments_read[pixel, block] == 1 and not env.measured[pixel, block]
    mask = env.action_masks().reshape(env.n_pixels, env.n_blocks, 2)
    assert mask[pixel, block].tolist() == [False, True]  # only the longer window adds reads
    # the reconstruction holds the data where it was read
    voltages = env.layout.voltages(block)
    estimate = env.estimate().numpy()
    row, col = divmod(pixel, env.grid_shape[1])
    np.testing.assert_allclose(
        estimate[row, col, voltages, :4], env.dataset.data[row, col, voltages, :4], rtol=1e-5
    )
    before = env.instrument_seconds
    env.step(env.encode_action(pixel, block, 1))
    assert env.instrument_seconds - before == pytest.approx(
        n * cost.voltage_seconds() + cost.settle_s
    )
    assert env.measured[pixel, block] and env.unit_measured[pixel].sum() == 4
    _, reward, _, _, info = env.step(env.encode_action(pixel, block, 0))
    assert info["repeated"] and reward == -env.repeat_penalty
    estimate = env.estimate().numpy()
    np.testing.assert_allclose(
        estimate[row, col, voltages], env.dataset.data[row, col, voltages], rtol=1e-5
    )


def test_window_gain_sums_only_the_segments_an_action_adds():
    env = _env(memory="off", programs="free")
    env.reset(seed=0)
    env.step(env.encode_action(5, 0, 0))
    per_unit = np.ones((env.n_pixels, env.n_units))
    gain = env.window_gain(per_unit).reshape(env.n_pixels, env.n_blocks, 2)
    assert gain[5, 0].tolist() == [0.0, 0.75]  # three segments left of four
    assert gain[5, 1].tolist() == [0.25, 1.0]


def test_observation_shows_every_unit_and_episodes_end():
    env = _env(budget_fraction=0.2)
    observation, _ = env.reset(seed=1)
    spec = env.observation_spec
    assert spec.n_blocks == env.n_units
    assert observation["planes"].shape[0] == len(spec.plane_names)
    assert env.observation_space.contains(observation)


@pytest.mark.parametrize(
    "agent",
    [
        "random",
        "raster",
        "static-subsample",
        "static-basis:0.1,1,4",
        "gp-uncertainty-per-second",
        "gp-surprise-per-second",
        "variance-reduction",
        "greedy-oracle",
        "structure-oracle",
    ],
)
def test_policies_choose_among_windows_and_take_only_valid_actions(agent):
    env = _env(budget_fraction=0.15)
    observation, info = env.reset(seed=2)
    policy = make_policy(agent)
    policy.reset(env, seed=2)
    windows = set()
    terminated = False
    while not terminated:
        mask = env.action_masks()
        action = policy.act(observation, mask)
        assert mask[action]
        windows.add(env.decode_action(action)[2])
        observation, _, terminated, _, info = env.step(action)
        assert not info["repeated"]
    assert np.isfinite(info["r2"])
    if agent.startswith("static-basis"):
        assert 0 in windows  # the design's partial pixels read the short window


def test_static_basis_refuses_a_window_the_env_lacks():
    env = _env()
    env.reset(seed=0)
    policy = make_policy("static-basis:0.1,1,8")
    with pytest.raises(ValueError, match="read windows are \\[4, 16\\]"):
        policy.reset(env, seed=0)


def test_a_file_without_time_axis_keeps_one_window(shared_data):
    path = str(shared_data / "bepfm_32x32x102.npy")
    env = make_env(data=path, n_blocks=2, device="cpu")
    env.reset(seed=0)
    assert env.n_windows == 1
    with pytest.raises(ValueError, match="need a time axis"):
        make_env(data=path, n_blocks=2, read_windows=[1, 2], device="cpu")


# ----------------------------------------------------------------- the dynamics criterion
def test_dynamics_criterion_scores_the_full_raster():
    dataset = twin_dataset(4, grid=(8, 8), n_times=16)
    criterion = dynamics_criterion(dataset)
    assert criterion.reference_name == "truth"
    scored = np.where(np.isfinite(dataset.data), dataset.truth, np.nan)  # lost entries: nowhere
    assert criterion.raster == pytest.approx(dynamics_r2(scored, dataset.data))
    assert criterion.score(dataset.truth) == pytest.approx(1.0)
    per_voltage = criterion.per_voltage(dataset.data)
    assert per_voltage.shape == (16,) and np.isfinite(per_voltage).all()
    no_truth = Dataset(dataset.data, dataset.axes)
    data_criterion = dynamics_criterion(no_truth)
    assert data_criterion.reference_name == "data"
    assert data_criterion.raster < 1.0  # a rank-k projection, not the data itself
    assert data_criterion.score(dataset.data) == pytest.approx(1.0)
    flat = Dataset(dataset.data[..., 0], dataset.axes[:3])
    assert dynamics_criterion(flat) is None


def test_units_reconstruct_like_blocks_when_curves_are_read_in_full():
    """Read in full, a windowed env's reconstruction equals the unwindowed one's (the units
    are a regrouping of the same entries)."""
    plain, windowed = make_env(**SMALL, reconstructor="idw"), _env(reconstructor="idw")
    for env in (plain, windowed):
        env.reset(seed=3)
        for pixel in (4, 17, 40):
            for block in range(env.n_blocks):
                env.step(env.encode_action(pixel, block))
    torch.testing.assert_close(plain.estimate(), windowed.estimate())


def test_evaluate_takes_windows_and_the_twin_setting():
    import evaluate

    args = evaluate.parse_args(["--read-windows", "16,128", "--twin-setting", "relaxation-rich"])
    evaluate.check_args(args)
    kwargs = evaluate._env_kwargs(args, "twin", 100000)
    assert kwargs["read_windows"] == [16, 128]
    assert kwargs["twin_overrides"]["wall_creep"] == 5.0
    with pytest.raises(ValueError, match="--read-windows"):
        evaluate.check_args(evaluate.parse_args(["--read-windows", "16,x"]))
    assert evaluate.main(["--read-windows", "0,128", "--agents", "random", "--seeds", "1"]) == 2


def test_agent_specs_keep_the_commas_of_a_policy_argument():
    import evaluate

    assert evaluate.agent_specs("static-basis:0.05,1,8,random, gp-uncertainty") == [
        "static-basis:0.05,1,8",
        "random",
        "gp-uncertainty",
    ]
