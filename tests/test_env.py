"""The acquisition environment: spaces, rewards, time accounting, episode end and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs.acquisition.factory
from envs.acquisition.env import AcquisitionEnv
from envs.data.dataset import Axis, DataError, Dataset
from envs.instruments.cost import CostModel
from reconstruct.metrics import auc_normalised
from reconstruct.registry import reconstructor_names

SMALL_TWIN = {"grid": [12, 12], "n_times": 8}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: threading only adds overhead on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_dataset(seed: int = 0, shape=(8, 8, 8, 4), with_truth: bool = True) -> Dataset:
    """Smooth low-rank data with noise, and its truth, on a seconds-valued time axis."""
    rng = np.random.default_rng(seed)
    nx, ny, nv, nt = shape
    xx, yy = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny), indexing="ij")
    maps = np.stack([np.sin(3 * xx + rng.uniform()), np.cos(2 * yy + rng.uniform())])
    spectra = rng.normal(size=(2, nv * nt))
    truth = np.einsum("kxy,kf->xyf", maps, spectra).reshape(shape)
    data = truth + 0.05 * rng.normal(size=shape)
    axes = [
        Axis("x", np.arange(nx)),
        Axis("y", np.arange(ny)),
        Axis("voltage", np.arange(nv), "V"),
        Axis("time", (np.arange(nt) + 1) * 0.002, "s"),
    ]
    return Dataset(data, axes, truth=truth if with_truth else None, source="test")


def make_env(**kwargs) -> AcquisitionEnv:
    defaults = dict(data=synthetic_dataset(), reconstructor="mean", initial_stride=4)
    defaults.update(kwargs)
    return envs.acquisition.factory.make_env(**defaults)


def random_episode(env: AcquisitionEnv, seed: int, allow_repeats: bool = False):
    """Steps of a seeded random policy, which with ``allow_repeats`` picks an already measured
    block one time in five; returns (actions, rewards, infos, observations)."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    actions, rewards, infos, observations = [], [], [info], [obs]
    terminated = False
    while not terminated:
        mask = env.action_masks()
        repeat = allow_repeats and rng.random() < 0.2
        action = int(rng.choice(np.flatnonzero(~mask if repeat else mask)))
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        assert isinstance(reward, float) and isinstance(terminated, bool)
        actions.append(action)
        rewards.append(reward)
        infos.append(info)
        observations.append(obs)
    return actions, rewards, infos, observations


def test_observation_is_in_space_and_documented_shape():
    env = make_env(n_components=2)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["planes"].shape == (2 * 4 + 2 + 1, 8, 8)
    assert obs["planes"].dtype == np.float32
    # The initial grid (stride 4, offset 2) is fully measured; the tip sits on its last pixel.
    mask = obs["planes"][:4]
    assert mask[:, 2, 2].tolist() == [1, 1, 1, 1] and mask[:, 0, 0].tolist() == [0, 0, 0, 0]
    assert obs["planes"][-1].sum() == 1 and obs["planes"][-1].reshape(-1)[env.tip_pixel] == 1
    assert info["n_measurements"] == 4 * 4
    assert info["action_mask"].dtype == np.int8
    np.testing.assert_array_equal(info["action_mask"].astype(bool), env.action_masks())


def test_observation_never_depends_on_truth_or_unmeasured_data():
    base = synthetic_dataset()
    altered_truth = Dataset(base.data, base.axes, truth=base.truth + 5.0)
    env = make_env()
    action = env.encode_action(9, 1)
    results = []
    for dataset in (base, altered_truth):
        env.reset(seed=0, options={"dataset": dataset})
        results.append(env.step(action)[0])
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key])


def test_same_seed_same_actions_identical_everything():
    runs = [
        random_episode(make_env(budget_fraction=0.3), seed=3, allow_repeats=True) for _ in range(2)
    ]
    (a1, r1, i1, o1), (a2, r2, i2, o2) = runs
    assert a1 == a2 and r1 == r2
    for x, y in zip(i1, i2, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    for x, y in zip(o1, o2, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_auc_return_equals_normalised_area_of_accuracy_trace():
    env = make_env(budget_fraction=0.4)
    _, rewards, infos, _ = random_episode(env, seed=1)
    seconds = [i["seconds"] for i in infos]
    r2 = [i["r2"] for i in infos]
    start = r2[0]
    expected = auc_normalised(seconds, r2, env.budget_seconds, start=start) - start
    assert sum(rewards) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert infos[-1]["seconds"] >= env.budget_seconds  # ended by the budget


def test_rate_reward_is_gain_per_second_in_pixel_units():
    env = make_env(reward="rate")
    _, info = env.reset(seed=0)
    _, reward, _, _, after = env.step(env.encode_action(0, 0))
    gain = after["r2"] - info["r2"]
    step_seconds = after["seconds"] - info["seconds"]
    assert reward == pytest.approx(gain / step_seconds * env.pixel_seconds)


def test_seconds_add_up_to_cost_model_sum():
    # Every block a choice (the free replay): the sum counts blocks measured again only.
    env = make_env(budget_fraction=0.3, cost={"travel_s_per_pixel": 0.05}, programs="free")
    actions, _, infos, _ = random_episode(env, seed=5, allow_repeats=True)
    cost, grid, size = env.cost_model, env.grid_shape, env.layout.block_size
    instrument, algorithm, tip, measured = 0.0, 0.0, 0, set()
    for pixel in env.initial_pixels:
        for block in range(env.n_blocks):
            instrument += cost.measurement_seconds(size, tip, int(pixel), grid)
            tip = int(pixel)
            measured.add((int(pixel), block))
    algorithm += cost.algorithm_s(len(measured))
    for action, info in zip(actions, infos[1:], strict=True):
        pixel, block = divmod(action, env.n_blocks)
        if (pixel, block) in measured:
            assert info["repeated"]
            algorithm += cost.algorithm_base_s
            continue
        instrument += cost.measurement_seconds(size, tip, pixel, grid)
        tip = pixel
        measured.add((pixel, block))
        algorithm += cost.algorithm_s(len(measured))
    assert any(i["repeated"] for i in infos[1:])
    assert infos[-1]["instrument_seconds"] == pytest.approx(instrument, rel=1e-12)
    assert infos[-1]["algorithm_seconds"] == pytest.approx(algorithm, rel=1e-12)
    assert infos[-1]["seconds"] == pytest.approx(instrument + algorithm, rel=1e-12)
    assert env.seconds_used == infos[-1]["seconds"]


def test_repeated_block_is_penalised_no_op():
    env = make_env(repeat_penalty=0.25)
    env.reset(seed=0)
    action = env.encode_action(0, 2)
    env.step(action)
    before = (env.instrument_seconds, env.reconstructor.n_measured, env.tip_pixel)
    env.step(env.encode_action(63, 0))  # move the tip away
    tip = env.tip_pixel
    obs, reward, terminated, _, info = env.step(action)
    assert info["repeated"] and reward == -0.25 and not terminated
    assert env.tip_pixel == tip  # nothing moved
    assert env.reconstructor.n_measured == before[1] + 1
    assert not env.action_masks()[action]


def test_block_seconds_predicts_charged_seconds():
    env = make_env(cost={"travel_s_per_pixel": 0.2}, programs="free")
    env.reset(seed=0)
    pixels = np.array([0, 17, 63])
    predicted = env.block_seconds(pixels, 1)
    for pixel, seconds in zip(pixels, predicted, strict=True):
        env.reset(seed=0)
        _, _, _, _, info = env.step(env.encode_action(int(pixel), 1))
        before = env._initial_design_seconds()
        assert info["seconds"] - before == pytest.approx(seconds)


def test_action_encoding_round_trip_and_types():
    env = make_env()
    env.reset(seed=0)
    assert env.decode_action(env.encode_action(13, 3)) == (13, 3, 0)
    assert env.encode_action(13, 3) == 13 * 4 + 3
    # NumPy and 0-d integer arrays are accepted.
    env.step(np.int64(5))
    env.step(np.array(6))
    env.step(np.array([7]))


@pytest.mark.parametrize("action", [-1, 8 * 8 * 4, 10**9])
def test_out_of_range_action_raises_value_error(action):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.step(action)


@pytest.mark.parametrize("action", [1.0, "3", None, True, np.array([1, 2]), np.array(2.0)])
def test_wrong_type_action_raises_type_error(action):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be an integer"):
        env.step(action)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget_seconds": 0.0}, "budget_seconds must be a positive"),
        ({"budget_seconds": -5.0}, "budget_seconds must be a positive"),
        ({"budget_fraction": 0.0}, "budget_fraction must be a positive"),
        ({"budget_seconds": 1.0}, "does not cover the initial design"),
        ({"n_blocks": 9}, "9 blocks for 8 voltages"),
        ({"n_blocks": 0}, "n_blocks must be a positive integer"),
        ({"reward": "gain"}, "reward must be one of"),
        ({"repeat_penalty": -1.0}, "repeat_penalty"),
        ({"initial_stride": 1}, "measures every pixel"),
        ({"render_mode": "human"}, "render_mode"),
        ({"twin_seeds": [5, 5]}, "twin_seeds"),
        ({"cost": {"pulse_s": -1.0}}, "pulse_s"),
        ({"stop_r2": 1.5}, "stop_r2"),
    ],
)
def test_configuration_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_env(**kwargs)


def test_budget_seconds_and_fraction_take_the_smaller():
    env = make_env(budget_fraction=0.9, budget_seconds=30.0)
    assert env.full_raster_seconds * 0.9 > 30.0
    assert env.budget_seconds == 30.0
    env = make_env(budget_fraction=0.1, budget_seconds=1e6)
    assert env.budget_seconds == pytest.approx(0.1 * env.full_raster_seconds)


def test_dataset_option_of_wrong_shape_raises():
    env = make_env()
    with pytest.raises(DataError, match="does not fit"):
        env.reset(seed=0, options={"dataset": synthetic_dataset(shape=(6, 8, 8, 4))})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(seed=0, options={"datset": synthetic_dataset()})


def test_nan_block_is_charged_marked_and_not_reconstructed():
    dataset = synthetic_dataset()
    dataset.data[0, 1, 3] = np.nan  # voltage 3 at pixel 1
    env = make_env(data=dataset, programs="free")
    block = next(b for b in range(env.n_blocks) if 3 in env.layout.voltages(b))
    env.reset(seed=0)
    r2_before = env.r2_now
    _, reward, _, _, info = env.step(env.encode_action(1, block))
    assert info["nan_block"] and not info["repeated"]
    assert env.measured[1, block] and not env.reconstructor.measured[1, block]
    assert info["instrument_seconds"] > env._initial_design_seconds() - env.algorithm_seconds
    assert info["r2"] == r2_before and reward == 0.0
    assert not env.action_masks()[env.encode_action(1, block)]


def test_stop_r2_ends_episode():
    env = make_env(stop_r2=-10.0)
    env.reset(seed=0)
    assert env.step(0)[2] is True


def test_episode_ends_when_every_block_is_measured():
    env = make_env(budget_fraction=5.0)
    env.reset(seed=0)
    terminated, steps = False, 0
    while not terminated:
        _, _, terminated, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
        steps += 1
    assert steps == 8 * 8 * 4 - 4 * 4 and not env.action_masks().any()
    assert info["r2"] == pytest.approx(1.0)
    assert info["r2_truth"] == pytest.approx(env.r2_truth())
    assert info["seconds"] < env.budget_seconds


def test_r2_truth_needs_truth():
    env = make_env(data=synthetic_dataset(with_truth=False))
    env.reset(seed=0)
    with pytest.raises(DataError, match="no noise-free truth"):
        env.r2_truth()


def test_twin_seed_range_draws_per_reset_from_np_random():
    env = make_env(data="twin", twin_seeds=[10, 20], twin_overrides=SMALL_TWIN)
    drawn = []
    for seed in range(4):
        env.reset(seed=seed)
        drawn.append(env.dataset.attrs.get("seed", env.dataset.data.sum()))
    again = make_env(data="twin", twin_seeds=[10, 20], twin_overrides=SMALL_TWIN)
    again.reset(seed=0)
    assert again.dataset.attrs.get("seed", again.dataset.data.sum()) == drawn[0]
    assert len(set(map(str, drawn))) > 1
    # The cost model takes reads and their interval from the twin's time axis.
    assert env.cost_model.reads == 8


def test_file_data_is_read_by_path(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, synthetic_dataset().data)
    env = make_env(data=str(path))
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and np.isfinite(info["r2"])


def test_wall_clock_charging_is_opt_in():
    env = make_env(cost={"algorithm_clock": "wall"})
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    model = make_env()
    model.reset(seed=0)
    _, _, _, _, model_info = model.step(0)
    assert info["instrument_seconds"] == model_info["instrument_seconds"]
    assert info["algorithm_seconds"] > 0


def test_render_returns_rgb_frame(tmp_path):
    env = make_env(render_mode="rgb_array")
    env.reset(seed=0)
    env.step(5)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert frame.shape[1] > 3 * frame.shape[0]  # four panels side by side
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 10
    assert make_env().render() is None


def test_default_cost_gives_hours_for_full_twin_raster():
    cost = CostModel()
    from reconstruct.base import BlockLayout

    hours = cost.full_raster_seconds((60, 60), 16, BlockLayout(16, 4)) / 3600
    assert 4.0 < hours < 6.0


def test_surprise_plane_is_off_by_default_and_zero_before_any_step():
    plain, surprising = make_env(), make_env(planes=["surprise"])
    assert not plain.observation_spec.has("surprise")
    n_plain = plain.observation_space["planes"].shape[0]
    assert surprising.observation_space["planes"].shape == (n_plain + 1, 8, 8)
    obs, _ = surprising.reset(seed=0)
    assert surprising.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["planes"][-2], 0.0)  # nothing measured by a step yet
    # Every other plane is the plain env's, in the same order; the tip stays last.
    plain_obs, _ = plain.reset(seed=0)
    np.testing.assert_array_equal(np.delete(obs["planes"], -2, axis=0), plain_obs["planes"])


def test_surprise_plane_is_the_trackers_local_surprise_of_the_steps_taken():
    """The plane after each step is the local surprise (over SURPRISE_PLANE_SCALE) that a
    tracker fed the same steps gives; a repeated block changes nothing."""
    from envs.acquisition.surprise import SURPRISE_PLANE_SCALE, SurpriseTracker

    env = make_env(planes=["surprise"], reconstructor="idw", budget_fraction=0.5)
    obs, _ = env.reset(seed=0)
    tracker = SurpriseTracker(env.grid_shape)
    rng = np.random.default_rng(0)
    for _ in range(15):
        action = int(rng.choice(np.flatnonzero(env.action_masks())))
        pixel, block, _ = env.decode_action(action)
        variance = float(env.reconstructor.uncertainty()[pixel, block])
        tracker.expect(env.reconstructor, pixel, block, variance)
        obs, _, terminated, _, _ = env.step(action)
        assert tracker.record(env.reconstructor)
        expected = tracker.local_surprise().reshape(env.grid_shape) / SURPRISE_PLANE_SCALE
        np.testing.assert_allclose(obs["planes"][-2], np.clip(expected, -1, 1), atol=1e-6)
        assert env.observation_space.contains(obs) and not terminated
    assert np.abs(obs["planes"][-2]).max() > 0
    repeated, _, _, _, info = env.step(action)
    assert info["repeated"]
    np.testing.assert_array_equal(repeated["planes"], obs["planes"])


def test_energy_plane_is_the_relative_log_pixel_energy_after_the_surprise_plane():
    """With the energy plane the plane before the tip is log(pixel energy / max) over
    ENERGY_PLANE_SCALE, clipped to [-1, 0], recomputed after every step; the other planes are
    the env's without it, in the same order (the surprise plane, when shown, comes first)."""
    from envs.acquisition.energy import ENERGY_PLANE_SCALE, pixel_energy

    both = make_env(planes=["surprise", "energy"], reconstructor="idw")
    surprise_only = make_env(planes=["surprise"], reconstructor="idw")
    n_planes = surprise_only.observation_space["planes"].shape[0]
    assert both.observation_space["planes"].shape == (n_planes + 1, 8, 8)
    obs, _ = both.reset(seed=0)
    plain_obs, _ = surprise_only.reset(seed=0)
    np.testing.assert_array_equal(np.delete(obs["planes"], -2, axis=0), plain_obs["planes"])
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = int(rng.choice(np.flatnonzero(both.action_masks())))
        obs, _, terminated, _, _ = both.step(action)
        energy = pixel_energy(both.reconstructor).reshape(both.grid_shape)
        expected = np.log(np.maximum(energy / energy.max(), 1e-300)) / ENERGY_PLANE_SCALE
        np.testing.assert_allclose(obs["planes"][-2], np.clip(expected, -1, 0), atol=1e-6)
        assert both.observation_space.contains(obs) and not terminated
    assert obs["planes"][-2].max() == 0.0 and obs["planes"][-2].min() < -0.05


def test_calibrated_energy_plane_is_the_fitted_power_times_the_log_energy():
    """The calibrated-energy plane is the relative log energy times the power fitted on the
    env's own surprise records (one per measured block, its covariate the log energy its pixel
    showed when chosen); the power starts at 0 and the plane needs the surprise plane."""
    from envs.acquisition.energy import (
        ENERGY_PLANE_SCALE,
        energy_exponent,
        pixel_energy,
        relative_log_energy,
    )

    for planes in (["calibrated-energy"], ["calibrated-energy", "energy"]):
        with pytest.raises(ValueError, match="calibrated-energy"):
            make_env(planes=planes)
    env = make_env(planes=["surprise", "calibrated-energy"])
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["planes"][-2], 0.0)  # no record yet: power 0
    rng = np.random.default_rng(0)
    for step in range(12):
        shown = relative_log_energy(pixel_energy(env.reconstructor))
        action = int(rng.choice(np.flatnonzero(env.action_masks())))
        obs, _, terminated, _, _ = env.step(action)
        covariates, _ = env._surprise.covariate_records()
        assert covariates.size == step + 1
        assert covariates[-1] == pytest.approx(shown[env.decode_action(action)[0]])
        power = energy_exponent(env._surprise)
        log_energy = relative_log_energy(pixel_energy(env.reconstructor))
        expected = power * log_energy.reshape(env.grid_shape) / ENERGY_PLANE_SCALE
        np.testing.assert_allclose(obs["planes"][-2], np.clip(expected, -1, 0), atol=1e-6)
        assert env.observation_space.contains(obs) and not terminated


def test_energy_helpers_handle_zero_and_nan_estimates():
    import torch

    from envs.acquisition.energy import ENERGY_FLOOR, pixel_energy, relative_log_energy
    from reconstruct.base import Reconstructor

    class Estimate:  # just an estimate, with the reconstructors' generic pixel energy
        pixel_energy = Reconstructor.pixel_energy

        def __init__(self, values):
            self.values = torch.tensor(values, dtype=torch.float32)

        def estimate_blocks(self):
            return self.values

    values = np.ones((3, 2, 2))
    values[1] = 2.0
    values[2, 0] = np.nan  # a lost block counts as nothing
    np.testing.assert_allclose(pixel_energy(Estimate(values)), [4.0, 16.0, 2.0])
    np.testing.assert_array_equal(relative_log_energy(np.zeros(4)), 0.0)
    logs = relative_log_energy(np.array([1.0, 0.0, 1e-12]))
    np.testing.assert_allclose(logs, [0.0, np.log(ENERGY_FLOOR), np.log(ENERGY_FLOOR)])


def test_a_non_finite_reconstruction_is_never_passed_on(monkeypatch):
    """A reconstructor that breaks (NaN estimate) stops the episode with a one-line error,
    instead of showing a policy NaN planes."""
    env = make_env()
    env.reset(seed=0)
    monkeypatch.setattr(
        env.reconstructor, "uncertainty", lambda: torch.full((env.n_pixels, env.n_blocks), np.nan)
    )
    with pytest.raises(FloatingPointError, match="reconstruction is not finite"):
        env.step(int(np.flatnonzero(env.action_masks())[0]))


def test_final_step_reports_the_dynamics_accuracy_where_there_is_a_time_axis():
    env = make_env(budget_fraction=0.2)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
    assert -10 < info["r2_dynamics"] <= 1 and -10 < info["r2_dynamics_truth"] <= 1
    from reconstruct.metrics import dynamics_r2

    estimate = env.reconstructor.estimate().numpy()
    assert info["r2_dynamics"] == pytest.approx(dynamics_r2(env.dataset.data, estimate))
    flat = Dataset(env.dataset.data[..., 0], env.dataset.axes[:3], source="no time axis")
    env = make_env(data=flat, budget_fraction=0.2)
    env.reset(seed=0)
    assert "r2_dynamics" not in env.final_scores()


@pytest.mark.parametrize("reconstructor", reconstructor_names())  # all cheap on a 6 x 6 grid
def test_uneven_blocks_run_an_episode_to_full_coverage(reconstructor):
    data = synthetic_dataset(shape=(6, 6, 10, 4))
    env = make_env(data=data, n_blocks=4, reconstructor=reconstructor, budget_fraction=5.0)
    assert env.layout.applied_counts.tolist() == [3, 3, 2, 2]
    _, _, infos, _ = random_episode(env, seed=0)
    assert not env.action_masks().any(), "every block measured"
    assert infos[-1]["r2"] == pytest.approx(1.0)
    estimate = env.reconstructor.estimate().numpy()
    np.testing.assert_allclose(estimate, data.data, rtol=1e-5, atol=1e-6)
    # A pixel's blocks, tip in place, cost each of its voltages once: a full pixel.
    here = np.array([env.tip_pixel])
    algorithm = env.cost_model.algorithm_s(env.n_measurements + 1)
    blocks = [float(env.block_seconds(here, b)[0]) - algorithm for b in range(4)]
    assert sum(blocks) == pytest.approx(env.pixel_seconds)


def test_a_short_block_costs_one_voltage_less():
    env = make_env(data=synthetic_dataset(shape=(6, 6, 10, 4)), n_blocks=4, programs="free")
    env.reset(seed=0)
    seconds = [float(env.block_seconds(np.array([7]), b)[0]) for b in range(4)]
    assert seconds[0] == seconds[1] and seconds[2] == seconds[3]
    assert seconds[0] - seconds[3] == pytest.approx(env.cost_model.voltage_seconds())
    _, _, _, _, info = env.step(env.encode_action(7, 3))
    assert info["seconds"] - env._initial_design_seconds() == pytest.approx(seconds[3])


# Recorded with 16 voltages in 4 blocks before blocks could be uneven: the cost-aware GP policy's
# actions and the last three R^2 values of its episode must not change.
RECORDED_EVEN_EPISODE = {
    "actions": [
        91, 67, 63, 61, 39, 15, 13, 14, 11, 7, 3, 27, 51, 55, 59, 35, 83, 79, 75, 99, 123, 127,
        131, 107, 111, 87, 95, 71, 47, 23, 19, 119, 143, 139, 135, 133, 109, 85, 86, 81, 57, 33,
        9, 5, 1, 25, 49, 53, 77, 73, 97, 121,
    ],
    "r2": [0.4169461161384258, 0.4179469846259011, 0.4289300047932576],
    "seconds": 14.398703598751094,
}


def test_even_blocks_give_the_recorded_episode():
    from agents.baselines import UncertaintyPerSecondPolicy

    data = synthetic_dataset(shape=(6, 6, 16, 2))
    env = make_env(
        data=data, n_blocks=4, reconstructor="gp", initial_stride=3, budget_fraction=0.5,
        programs="free",
    )
    policy = UncertaintyPerSecondPolicy()
    obs, _ = env.reset(seed=2)
    policy.reset(env, seed=2)
    actions, r2, terminated = [], [], False
    while not terminated:
        action = policy.act(obs, env.action_masks())
        obs, _, terminated, _, info = env.step(action)
        actions.append(int(action))
        r2.append(info["r2"])
    assert actions == RECORDED_EVEN_EPISODE["actions"]
    assert r2[-3:] == pytest.approx(RECORDED_EVEN_EPISODE["r2"], rel=1e-9)
    assert env.seconds_used == pytest.approx(RECORDED_EVEN_EPISODE["seconds"], rel=1e-12)
