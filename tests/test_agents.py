"""Baseline policies on a small environment: valid actions only, the raster covers everything,
the oracle beats random."""

import numpy as np
import pytest
import torch

from agents import available_policies, make_policy
from agents.baselines import serpentine_pixels
from agents.evaluation import run_episode

BASELINES = [
    "random",
    "raster",
    "static-subsample",
    "static-basis",
    "gp-uncertainty",
    "gp-uncertainty-per-second",
    "gp-surprise-per-second",
    "gp-energy-surprise-per-second",
    "variance-reduction",
    "greedy-oracle",
    "structure-oracle",
]


def small_env(**overrides):
    from envs.acquisition.factory import make_env

    kwargs = dict(
        data="twin",
        twin_seeds=3,
        twin_overrides={"grid": [10, 10], "n_times": 16},
        n_blocks=4,
        budget_fraction=0.3,
    )
    kwargs.update(overrides)
    return make_env(**kwargs)


def test_every_baseline_is_registered():
    assert set(BASELINES) <= set(available_policies())


def test_unknown_policy_names_the_available_ones():
    with pytest.raises(ValueError, match="available: .*raster"):
        make_policy("no-such-policy")


def test_serpentine_moves_to_neighbours_only():
    order = serpentine_pixels((4, 5))
    assert sorted(order) == list(range(20))
    rows, cols = np.divmod(order, 5)
    steps = np.abs(np.diff(rows)) + np.abs(np.diff(cols))
    assert (steps == 1).all()


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_takes_only_valid_actions(name):
    env = small_env()
    policy = make_policy(name)
    obs, info = env.reset(seed=0)
    policy.reset(env, seed=0)
    for _ in range(40):
        mask = info["action_mask"].astype(bool)
        action = policy.act(obs, mask)
        assert mask[action], f"{name} chose a measured block"
        obs, _, terminated, truncated, info = env.step(action)
        assert not info["repeated"]
        if terminated or truncated:
            break


def test_raster_visits_every_block_once():
    env = small_env(budget_fraction=2.0)
    trace = run_episode(env, make_policy("raster"), seed=0, charge_decisions="none")
    unwrapped = env.unwrapped
    assert unwrapped.measured.all()
    initial = len(unwrapped.initial_pixels) * unwrapped.n_blocks
    assert trace.n_measurements == unwrapped.measured.size
    assert len(trace.r2) - 1 == unwrapped.measured.size - initial


def test_static_subsample_covers_every_pixel_before_repeating_one():
    env = small_env(budget_fraction=2.0, memory="off", programs="free")
    policy = make_policy("static-subsample")
    obs, info = env.reset(seed=0)
    policy.reset(env, seed=0)
    n_pixels = 100
    measured_before = env.unwrapped.measured.any(1).copy()
    for _ in range(int((~measured_before).sum())):
        obs, _, terminated, _, info = env.step(policy.act(obs, info["action_mask"].astype(bool)))
    assert env.unwrapped.measured.any(1).all()
    assert env.unwrapped.measured.sum() == n_pixels + 3 * int(measured_before.sum())


def test_oracle_is_at_least_as_good_as_random():
    seeds = [0, 1]
    oracle = [
        run_episode(small_env(), make_policy("greedy-oracle"), s, charge_decisions="none").auc()
        for s in seeds
    ]
    random = [
        run_episode(small_env(), make_policy("random"), s, charge_decisions="none").auc()
        for s in seeds
    ]
    assert np.mean(oracle) >= np.mean(random)


def test_episode_is_deterministic_without_wall_clock_charging():
    a = run_episode(
        small_env(), make_policy("gp-uncertainty-per-second"), 5, charge_decisions="none"
    )
    b = run_episode(
        small_env(), make_policy("gp-uncertainty-per-second"), 5, charge_decisions="none"
    )
    np.testing.assert_array_equal(a.seconds, b.seconds)
    np.testing.assert_array_equal(a.r2, b.r2)


def test_surprise_policy_marks_where_the_model_was_wrong():
    """A measurement far off the model's prediction raises the local surprise around its pixel
    (and not far away); with weight 0 the policy acts exactly like gp-uncertainty-per-second."""
    import torch

    from agents.baselines import SurprisePerSecondPolicy

    env = small_env(budget_fraction=1.0, memory="off", programs="free")
    obs, info = env.reset(seed=0)
    policy = SurprisePerSecondPolicy(weight=0.25)
    policy.reset(env, seed=0)
    for _ in range(60):  # past the bootstrap: the model now predicts with a basis
        obs, _, _, _, info = env.step(policy.act(obs, info["action_mask"].astype(bool)))
    assert policy.tracker.record(env.reconstructor)  # the last step's block
    before = policy.local_surprise().copy()
    pixel, block = 55, 2
    assert not env.measured[pixel, block]
    variance = float(env.reconstructor.uncertainty()[pixel, block])

    class FarOff:
        """The model's prediction, 100 predicted standard deviations off."""

        def predict_block(self, pixel: int, block: int) -> torch.Tensor:
            return env.reconstructor.predict_block(pixel, block) + 100.0 * np.sqrt(variance)

    policy.tracker.expect(FarOff(), pixel, block, variance)
    env.step(pixel * env.n_blocks + block)
    assert policy.tracker.record(env.reconstructor)
    after = policy.local_surprise().reshape(env.grid_shape)
    change = after - before.reshape(env.grid_shape)
    row, col = divmod(pixel, env.grid_shape[1])
    assert change[row, col] > 1.0
    assert abs(change[0, 0]) < 0.1 * change[row, col]

    plain = run_episode(
        small_env(), make_policy("gp-uncertainty-per-second"), 2, charge_decisions="none"
    )
    zero = run_episode(
        small_env(), make_policy("gp-surprise-per-second:0"), 2, charge_decisions="none"
    )
    np.testing.assert_array_equal(plain.r2, zero.r2)


def test_surprise_tracker_records_each_expected_block_once():
    """Nothing pending or a block that was not measured records nothing; a second record of
    the same block does not count it twice."""
    from envs.acquisition.surprise import SurpriseTracker

    env = small_env(reconstructor="idw")
    env.reset(seed=0)
    tracker = SurpriseTracker(env.grid_shape)
    assert not tracker.record(env.reconstructor)
    np.testing.assert_array_equal(tracker.local_surprise(), 0.0)
    action = int(np.flatnonzero(env.action_masks())[0])
    pixel, block, _ = env.decode_action(action)
    tracker.expect(env.reconstructor, pixel, block, 1.0)
    assert not tracker.record(env.reconstructor)  # not measured yet: dropped
    tracker.expect(env.reconstructor, pixel, block, 1.0)
    env.step(action)
    assert tracker.record(env.reconstructor)
    once = tracker.local_surprise().copy()
    assert not tracker.record(env.reconstructor)
    np.testing.assert_array_equal(tracker.local_surprise(), once)
    with pytest.raises(ValueError, match="sigma"):
        SurpriseTracker(env.grid_shape, sigma=0.0)


def test_energy_policy_scores_the_surprise_heuristic_times_the_pixel_energy():
    """gp-energy-surprise-per-second picks the valid block whose surprise-heuristic score times
    its pixel's estimated energy is largest, at every step (the two heuristics then differ)."""
    from envs.acquisition.energy import pixel_energy

    env = small_env(budget_fraction=0.5)
    obs, info = env.reset(seed=1)
    energy_policy = make_policy("gp-energy-surprise-per-second")
    energy_policy.reset(env, seed=1)
    differs = 0
    for _ in range(40):
        mask = info["action_mask"].astype(bool)
        action = energy_policy.act(obs, mask)
        # act first recorded the previous step's surprise: the factor it then used.
        surprise = np.exp(0.25 * energy_policy.tracker.local_surprise())
        variance = env.reconstructor.uncertainty().numpy().reshape(-1)
        pixel_factor = np.repeat(surprise * pixel_energy(env.reconstructor), env.n_blocks)
        scores = np.where(mask, variance / env.action_seconds() * pixel_factor, -np.inf)
        assert action == int(np.argmax(scores))
        surprise_only = variance / env.action_seconds() * np.repeat(surprise, env.n_blocks)
        without_energy = np.where(mask, surprise_only, -np.inf)
        differs += action != int(np.argmax(without_energy))
        obs, _, terminated, _, info = env.step(action)
        assert not terminated
    assert differs > 5


def test_surprise_tracker_fits_the_slope_of_the_log_surprise_on_a_covariate():
    """Blocks whose squared error is exp(2 x) times their variance give log surprises of slope
    2 in x: the shrunk least-squares slope recovers it (exactly without shrinkage); blocks
    without a finite covariate count for the surprise but not for the slope."""
    import torch

    from envs.acquisition.surprise import SurpriseTracker

    class Model:  # predicts 0 everywhere; a measured block holds its measured values
        def __init__(self):
            self.measured = np.zeros((16, 1), dtype=bool)
            self.values = np.zeros((16, 3))

        def predict_block(self, pixel, block):
            return torch.tensor(self.values[pixel])  # a copy, as a model's prediction is

    model, tracker = Model(), SurpriseTracker((4, 4))
    covariates = np.linspace(-3.0, 0.0, 8)
    for pixel, x in enumerate(covariates):
        assert tracker.covariate_slope(0.0) == 0.0 or pixel >= 2
        tracker.expect(model, pixel, 0, variance=0.5, covariate=float(x))
        model.measured[pixel] = True
        model.values[pixel] = np.sqrt(0.5) * np.exp(x)  # squared error exp(2 x) x variance
        assert tracker.record(model)
    for pixel, x in [(8, np.nan), (9, None)]:
        tracker.expect(model, pixel, 0, variance=0.5, covariate=x)
        model.measured[pixel] = True
        model.values[pixel] = 100.0
        assert tracker.record(model)
    assert tracker.covariate_slope(0.0) == pytest.approx(2.0, rel=1e-3)  # log(ratio + 1e-6)
    spread = float(np.sum((covariates - covariates.mean()) ** 2))
    shrunk = 2.0 * spread / (spread + 10.0)
    assert tracker.covariate_slope(10.0) == pytest.approx(shrunk, rel=1e-3)
    tracker.reset()
    assert tracker.covariate_slope(0.0) == 0.0


def test_calibrated_energy_policy_weighs_the_energy_by_its_fitted_power():
    """gp-calibrated-energy-per-second starts as gp-surprise-per-second (no data, power 0) and
    then scores surprise heuristic x energy^power with the power fitted on the episode's
    blocks; on the twin that power becomes positive, and stays within [0, 1]."""
    from envs.acquisition.energy import energy_exponent, pixel_energy, relative_log_energy

    env = small_env(budget_fraction=0.5)
    obs, info = env.reset(seed=1)
    policy = make_policy("gp-calibrated-energy-per-second")
    policy.reset(env, seed=1)
    first = make_policy("gp-surprise-per-second")
    first.reset(env, seed=1)
    mask = info["action_mask"].astype(bool)
    action = policy.act(obs, mask)
    assert action == first.act(obs, mask)
    powers = []
    for _ in range(40):
        obs, _, terminated, _, info = env.step(action)
        assert not terminated
        mask = info["action_mask"].astype(bool)
        action = policy.act(obs, mask)
        power = energy_exponent(policy.tracker)
        surprise = np.exp(0.25 * policy.tracker.local_surprise())
        energy = np.exp(power * relative_log_energy(pixel_energy(env.reconstructor)))
        variance = env.reconstructor.uncertainty().numpy().reshape(-1)
        factor = np.repeat(surprise * energy, env.n_blocks)
        scores = np.where(mask, variance / env.action_seconds() * factor, -np.inf)
        assert action == int(np.argmax(scores))
        powers.append(power)
    assert 0.0 <= min(powers) and max(powers) <= 1.0 and max(powers) > 0.2


def test_energy_power_reports_the_calibrated_fit_of_each_episode(capsys):
    """``python -m studies.energy_power`` prints one row per twin episode and the power is the
    one the calibrated heuristic would use next, in [0, 1]."""
    from studies.energy_power import episode_power, main

    fit = episode_power(small_env(budget_fraction=1.0, stop_r2=0.9), seed=3)
    assert fit["blocks"] > 20 and -1.0 <= fit["correlation"] <= 1.0
    # Shrinkage keeps the plain slope's sign and lessens it; the clip keeps the power in [0, 1].
    if fit["slope"] <= 0:
        assert fit["power"] == 0.0
    else:
        assert 0.0 < fit["power"] <= min(fit["slope"], 1.0)
    assert main(["--seeds", "2", "--grid", "8", "--n-times", "16", "--stop-r2", "0.8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("power: mean")
    assert main(["--data", "missing.npy"]) == 2
    assert "file not found: missing.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


def test_structure_oracle_knows_the_twin_without_its_disorder():
    from envs.data.twin import twin_dataset

    env = small_env()
    policy = make_policy("structure-oracle")
    assert policy.privileged
    env.reset(seed=0)
    policy.reset(env, seed=0)
    config = {"grid": [10, 10], "n_times": 16, "pinning_disorder": 0.0}
    expected = env.layout.to_blocks(torch.from_numpy(twin_dataset(3, **config).truth))
    np.testing.assert_allclose(policy.structure_blocks, expected.double().numpy())
    # Not the truth of the sample itself: that has the disorder.
    truth = env.layout.to_blocks(torch.from_numpy(env.dataset.truth)).double().numpy()
    assert np.abs(policy.structure_blocks - truth).max() > 0.01
    # Files have no disorder-free twin.
    from envs.data.dataset import Dataset

    file_env = small_env(data=Dataset(env.dataset.data, env.dataset.axes))
    file_env.reset(seed=0)
    with pytest.raises(ValueError, match="needs twin data"):
        make_policy("structure-oracle").reset(file_env, seed=0)


# ----------------------------------------------------------------- the policies' view of the env
def test_the_view_is_read_only_and_shows_the_current_state():
    from envs.acquisition.view import AcquisitionView, ModelView

    env = small_env(read_windows=[8, 16])
    env.reset(seed=0)
    view = env.unwrapped.view
    assert isinstance(view, AcquisitionView) and view is env.unwrapped.view  # built once
    for name in ("measured", "grid_shape", "budget_seconds", "model", "n_blocks", "reconstructor"):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(view, name, None)
    with pytest.raises(AttributeError, match="read-only"):
        del view.measured
    with pytest.raises(AttributeError, match="read-only"):
        view.model.uncertainty = None
    # Arrays of the env's state are read-only and not the env's own.
    for array in (view.measured, view.unit_measured, view.segments_read, view.action_masks()):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array.reshape(-1)[0] = 1
    assert not np.shares_memory(view.segments_read, env.unwrapped.segments_read)
    # The model's tensors are copies: writing into them changes nothing in the model.
    model = view.model
    assert isinstance(model, ModelView) and not hasattr(model, "add")
    assert not hasattr(model, "reset")
    before = env.unwrapped.reconstructor.uncertainty().clone()
    model.uncertainty().fill_(-1.0)
    model.measured.fill_(True)
    for estimate in (model.estimate_blocks(), view.estimate()):  # the large arrays: read-only
        assert not estimate.flags.writeable
        with pytest.raises(ValueError):
            estimate.reshape(-1)[0] = 1.0
    assert torch.equal(env.unwrapped.reconstructor.uncertainty(), before)
    np.testing.assert_array_equal(view.estimate(), env.unwrapped.estimate().numpy())
    assert not env.unwrapped.reconstructor.measured.all()
    # It reads the env every time: a step shows at once.
    action = int(np.flatnonzero(view.action_masks())[0])
    pixel, block, window = view.decode_action(action)
    assert view.encode_action(pixel, block, window) == action
    taken = view.n_measurements
    env.step(action)
    assert view.n_measurements == taken + 1 and view.segments_read[pixel, block] > 0
    assert not view.action_masks()[action]
    np.testing.assert_array_equal(view.action_seconds(), env.unwrapped.action_seconds())


def test_a_policy_keeps_the_view_and_only_a_privileged_one_reaches_the_truth():
    from envs.acquisition.view import PrivilegedView

    env = small_env()
    env.reset(seed=0)
    plain = make_policy("gp-uncertainty-per-second")
    plain.reset(env, seed=0)
    assert plain.view is env.unwrapped.view and not hasattr(plain, "env")
    assert not isinstance(plain.view, PrivilegedView)
    for truth in ("reference_blocks", "dataset", "reconstructor", "instrument"):
        assert not hasattr(plain.view, truth)
    with pytest.raises(PermissionError, match="not privileged"):
        plain.view.privileged(plain)

    oracle = make_policy("greedy-oracle")
    oracle.reset(env, seed=0)
    assert oracle.privileged and isinstance(oracle.view, PrivilegedView)
    reference = oracle.view.reference_blocks()
    assert not reference.flags.writeable
    np.testing.assert_array_equal(reference, env.unwrapped.reference_blocks.numpy())
    assert oracle.view.dataset is env.unwrapped.dataset


def test_the_view_travels_with_its_env():
    import copy
    import pickle

    env = small_env()
    env.reset(seed=0)
    for clone in (copy.deepcopy(env.unwrapped), pickle.loads(pickle.dumps(env.unwrapped))):
        assert clone.view is not env.unwrapped.view
        clone.step(int(np.flatnonzero(clone.action_masks())[0]))
        assert clone.view.n_measurements == env.unwrapped.view.n_measurements + 1


def test_policies_read_the_env_only_through_its_view():
    """No policy module keeps or reads the env itself: only ``.view`` (see the policies'
    interface, :mod:`agents.policy`)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("baselines.py", "channel_policy.py", "ppo.py", "policy.py"):
        source = (root / "agents" / name).read_text()
        assert not re.search(r"self\.env\b", source), name
        assert not re.findall(r"env\.unwrapped\.(?!view\b)\w+", source), name
