"""The score-map actor-critic and the "ppo" policy: action order, grid-size independence, masking,
save/load round trip, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.catalog import available_policies, make_policy
from agents.ppo import PPOPolicy, ScoreMapPolicy, observation_to_tensors, travel_pixels_of
from envs.acquisition.energy import energy_exponent
from envs.acquisition.env import AcquisitionEnv
from envs.acquisition.factory import make_env

#: A cheap reconstructor keeps these tests fast; the network does not care what fills the planes.
RECONSTRUCTOR = "idw"
SMALL_NET = {"channels": 8, "dilations": (1, 2)}


def planes_of(surprise: bool = False, energy: bool = False, calibrated: bool = False) -> list:
    """The optional observation planes of these choices."""
    energy_plane = "calibrated-energy" if calibrated else "energy"
    return ["surprise"] * surprise + [energy_plane] * energy


def small_env(grid: int = 12, seeds: int | list[int] = (0, 50), **kwargs) -> AcquisitionEnv:
    """A small twin env: ``grid`` x ``grid`` pixels, 16 read-outs, a short budget."""
    return make_env(
        twin_seeds=list(seeds) if isinstance(seeds, tuple) else seeds,
        twin_overrides={"grid": [grid, grid], "n_times": 16},
        reconstructor=RECONSTRUCTOR,
        budget_fraction=kwargs.pop("budget_fraction", 0.1),
        device="cpu",
        **kwargs,
    )


def dict_space(n_planes: int, grid: tuple[int, int], n_scalars: int = 3) -> spaces.Dict:
    return spaces.Dict(
        {
            "planes": spaces.Box(-1.0, 1.0, (n_planes, *grid), np.float32),
            "scalars": spaces.Box(0.0, 1.0, (n_scalars,), np.float32),
        }
    )


def make_network(grid: tuple[int, int], n_blocks: int = 3, n_planes: int = 4) -> ScoreMapPolicy:
    """A network over arbitrary planes (not the env's layout, so no heuristic prior)."""
    torch.manual_seed(0)
    return ScoreMapPolicy(
        dict_space(n_planes, grid),
        spaces.Discrete(grid[0] * grid[1] * n_blocks),
        lambda _: 1e-3,
        heuristic_prior=False,
        **SMALL_NET,
    )


def _trained_model(
    path, steps: int, n_steps: int, n_epochs: int, env_kwargs: dict | None = None, **policy_kwargs
) -> MaskablePPO:
    """A MaskablePPO score-map model trained ``steps`` steps on the 12 x 12 env (with
    ``env_kwargs``), saved at ``path``."""
    vec_env = DummyVecEnv([lambda: small_env(**(env_kwargs or {}))])
    spec = vec_env.envs[0].unwrapped.observation_spec.to_dict()
    model = MaskablePPO(
        ScoreMapPolicy,
        vec_env,
        n_steps=n_steps,
        batch_size=64,
        n_epochs=n_epochs,
        seed=0,
        policy_kwargs={**SMALL_NET, "observation_spec": spec, **policy_kwargs},
        device="cpu",
    )
    model.learn(steps)
    model.save(path)
    vec_env.close()
    return model


@pytest.fixture(scope="module")
def trained_model_path(tmp_path_factory) -> str:
    """A MaskablePPO score-map model after a few hundred steps on the 12 x 12 env."""
    path = tmp_path_factory.mktemp("ppo") / "model.zip"
    _trained_model(path, steps=256, n_steps=128, n_epochs=2)
    return str(path)


def test_logits_follow_the_env_action_order():
    """Logit ``(row * ny + col) * nb + block`` must come from plane ``block`` at (row, col)."""
    grid, n_blocks = (5, 7), 3
    net = make_network(grid, n_blocks, n_planes=n_blocks)
    # Make the trunk pass the planes through unchanged: stem copies plane b to channel b, the
    # residual blocks add nothing, the 1x1 head reads channel b as block b's logit.
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        stem = net.features_extractor.stem[0]
        for b in range(n_blocks):
            stem.weight[b, b, 1, 1] = 10.0
            net.mlp_extractor.logits.weight[b, b, 0, 0] = 1.0
    for row, col, block in [(0, 0, 0), (4, 6, 2), (2, 5, 1), (3, 0, 2)]:
        planes = np.zeros((n_blocks, *grid), np.float32)
        planes[block, row, col] = 1.0
        obs = observation_to_tensors({"planes": planes, "scalars": np.zeros(3, np.float32)}, "cpu")
        logits = net.score_logits(obs)[0]
        assert logits.shape == (grid[0] * grid[1] * n_blocks,)
        assert int(logits.argmax()) == (row * grid[1] + col) * n_blocks + block


def test_weights_do_not_depend_on_grid_size():
    small, large = make_network((6, 6)), make_network((17, 11))
    large.load_state_dict(small.state_dict())  # strict: same names and shapes
    obs = {
        "planes": np.random.default_rng(0).uniform(-1, 1, (4, 17, 11)).astype(np.float32),
        "scalars": np.full(3, 0.5, np.float32),
    }
    with torch.no_grad():
        logits = small.score_logits(observation_to_tensors(obs, "cpu"))
        values = small.predict_values(observation_to_tensors(obs, "cpu"))
    assert logits.shape == (1, 17 * 11 * 3)
    assert values.shape == (1, 1)
    n_params = sum(p.numel() for p in make_network((6, 6)).parameters())
    assert n_params < 100_000


@pytest.mark.parametrize(
    ("scaled_head", "surprise", "energy", "calibrated", "heuristic_name"),
    [
        (False, False, False, False, "gp-uncertainty-per-second"),
        (True, False, False, False, "gp-uncertainty-per-second"),
        (False, True, False, False, "gp-surprise-per-second"),
        (True, True, False, False, "gp-surprise-per-second"),
        (False, True, True, False, "gp-energy-surprise-per-second"),
        (True, True, True, False, "gp-energy-surprise-per-second"),
        (False, True, True, True, "gp-calibrated-energy-per-second"),
    ],
)
def test_untrained_prior_acts_like_the_heuristic(
    scaled_head, surprise, energy, calibrated, heuristic_name
):
    """With the heuristic prior the untrained greedy policy is the cost-aware heuristic: same
    action at every step of an episode with the GP reconstructor (ties included), whether the
    temperature is folded into the head's weights or divides its output; with the surprise
    plane it is gp-surprise-per-second, with the energy plane too
    gp-energy-surprise-per-second, and with the calibrated energy plane
    gp-calibrated-energy-per-second."""
    env = make_env(
        twin_seeds=3,
        twin_overrides={"grid": [10, 10], "n_times": 16},
        reconstructor="gp",
        budget_fraction=0.15,
        device="cpu",
        planes=planes_of(surprise, energy, calibrated),
    )
    observation, _ = env.reset(seed=0)
    torch.manual_seed(0)
    network = ScoreMapPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        travel_pixels=travel_pixels_of(env),
        temperature=0.05,
        scaled_head=scaled_head,
        observation_spec=env.observation_spec.to_dict(),
        **SMALL_NET,
    )
    head_weights = network.mlp_extractor.logits.weight.abs().max().item()
    assert head_weights == pytest.approx(1.0 if scaled_head else 20.0)
    heuristic = make_policy(heuristic_name)
    heuristic.reset(env, seed=0)
    terminated, steps, travelled = False, 0, 0.0
    while not terminated:
        mask = env.action_masks()
        with torch.no_grad():
            logits = network.score_logits(observation_to_tensors(observation, "cpu"))[0]
        action = int(np.argmax(np.where(mask, logits.double().numpy(), -np.inf)))
        assert action == heuristic.act(observation, mask), f"step {steps}"
        before = env.tip_pixel
        observation, _, terminated, _, _ = env.step(action)
        travelled += env.cost_model.travel_seconds(before, env.tip_pixel, env.grid_shape)
        steps += 1
    assert steps > 20 and travelled > 0
    if surprise:  # the surprise term took part
        assert np.abs(observation["planes"][-2 - int(energy)]).max() > 0.01
    if energy and not calibrated:  # and the energy term: pixels differ by more than a factor e
        assert observation["planes"][-2].min() < -1 / 8
    if calibrated:  # and the energy term, to a fitted power between 0 and 1
        assert 0.0 < energy_exponent(env._surprise) < 1.0
        assert observation["planes"][-2].min() < -0.01


def test_prior_needs_the_env_plane_layout():
    with pytest.raises(ValueError, match="heuristic_prior=False"):
        ScoreMapPolicy(dict_space(4, (6, 6)), spaces.Discrete(36 * 3), lambda _: 1e-3)
    # 3 blocks: 2 x 3 block planes and a tip leave one component map, none with a surprise plane
    ScoreMapPolicy(dict_space(8, (6, 6)), spaces.Discrete(36 * 3), lambda _: 1e-3)
    with pytest.raises(ValueError, match="a surprise plane, a tip plane"):
        ScoreMapPolicy(
            dict_space(8, (6, 6)), spaces.Discrete(36 * 3), lambda _: 1e-3, surprise_plane=True
        )
    with pytest.raises(ValueError, match="temperature"):
        ScoreMapPolicy(
            dict_space(9, (6, 6)), spaces.Discrete(36 * 3), lambda _: 1e-3, temperature=0.0
        )


def test_rejects_spaces_it_cannot_score():
    with pytest.raises(ValueError, match="Dict observation space"):
        ScoreMapPolicy(spaces.Box(0, 1, (4, 6, 6)), spaces.Discrete(36), lambda _: 1e-3)
    with pytest.raises(ValueError, match="multiple of the 6 x 6 pixels"):
        ScoreMapPolicy(dict_space(4, (6, 6)), spaces.Discrete(37), lambda _: 1e-3)


def test_save_load_round_trip_gives_identical_actions(trained_model_path):
    model = MaskablePPO.load(trained_model_path, device="cpu")
    policy = PPOPolicy(trained_model_path, device="cpu")
    env = small_env(seeds=7)
    observation, info = env.reset(seed=3)
    policy.reset(env, seed=3)
    actions_model, actions_policy = [], []
    for _ in range(20):
        mask = env.action_masks()
        expected, _ = model.predict(observation, deterministic=True, action_masks=mask)
        action = policy.act(observation, mask)
        actions_model.append(int(expected))
        actions_policy.append(action)
        observation, _, terminated, _, info = env.step(action)
        if terminated:
            break
    assert actions_policy == actions_model
    assert len(set(actions_policy)) == len(actions_policy)


def test_never_picks_a_masked_action_even_where_it_scores_highest(trained_model_path):
    policy = PPOPolicy(trained_model_path, device="cpu")
    env = small_env(seeds=11, budget_fraction=0.4)
    observation, info = env.reset(seed=0)
    policy.reset(env, seed=0)
    steps, terminated = 0, False
    while not terminated:
        mask = env.action_masks()
        # Hide the unmasked favourite too: the policy must move to the next valid action.
        favourite = int(np.argmax(policy.action_logits(observation)))
        mask[favourite] = False
        action = policy.act(observation, mask)
        assert mask[action], f"step {steps}: chose masked action {action}"
        observation, _, terminated, _, info = env.step(action)
        assert not info["repeated"]
        steps += 1
    assert steps > 50


def test_runs_on_a_grid_it_was_not_trained_on(trained_model_path):
    policy = PPOPolicy(trained_model_path, device="cpu")
    env = small_env(grid=18, seeds=5)
    observation, info = env.reset(seed=1)
    policy.reset(env, seed=1)
    chosen = set()
    for _ in range(10):
        action = policy.act(observation, env.action_masks())
        assert 0 <= action < 18 * 18 * env.n_blocks
        chosen.add(action)
        observation, _, terminated, _, info = env.step(action)
    assert len(chosen) == 10


def test_travel_prior_follows_the_instruments_prices(trained_model_path):
    """Reset takes the travel prior's scale from the env's cost model (10x slower travel: a
    tenth of the pixels cost one block)."""
    policy = PPOPolicy(trained_model_path, device="cpu")
    scales = []
    for travel in (0.01, 0.1):
        env = small_env(seeds=5, cost={"travel_s_per_pixel": travel})
        env.reset(seed=0)
        policy.reset(env, seed=0)
        scales.append(policy.network.features_extractor.prior.travel_pixels)
        assert scales[-1] == pytest.approx(travel_pixels_of(env))
    assert scales[1] == pytest.approx(scales[0] / 10, rel=1e-6)


def test_block_count_mismatch_is_a_clear_error(trained_model_path):
    policy = PPOPolicy(trained_model_path, device="cpu")
    env = small_env(seeds=5, n_blocks=2)
    observation, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="2 blocks per pixel|4 blocks per pixel"):
        policy.act(observation, env.action_masks())


def test_registered_as_ppo(trained_model_path, tmp_path):
    assert "ppo" in available_policies()
    policy = make_policy(f"ppo:{trained_model_path}")
    assert isinstance(policy, PPOPolicy) and policy.label == "ppo:model"  # not the shipped one
    with pytest.raises(FileNotFoundError, match="no PPO model"):
        make_policy(f"ppo:{tmp_path / 'missing.zip'}")


def test_scaled_head_survives_save_and_load(tmp_path):
    model = _trained_model(
        tmp_path / "m.zip", steps=64, n_steps=64, n_epochs=1, temperature=0.1, scaled_head=True
    )
    policy = PPOPolicy(tmp_path / "m.zip", device="cpu")
    assert policy.network.scaled_head
    assert policy.network.mlp_extractor.logit_scale == pytest.approx(10.0)
    env = small_env()
    observation, _ = env.reset(seed=1)
    tensors = observation_to_tensors(observation, "cpu")
    with torch.no_grad():
        expected = model.policy.score_logits(tensors)[0].double().numpy()
    np.testing.assert_allclose(policy.action_logits(observation), expected, rtol=1e-6)


def test_paired_comparison_counts_and_interval():
    from studies.ppo_compare import paired

    result = paired(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 2.5, 2.0, 3.0]))
    assert result["mean"] == pytest.approx(0.5)
    assert result["better"] == 3
    assert result["low"] < 0.5 < result["high"]


def _greedy_actions(policy: PPOPolicy, env: AcquisitionEnv, seed: int, steps: int) -> list[int]:
    observation, _ = env.reset(seed=seed)
    policy.reset(env, seed=seed)
    actions = []
    for _ in range(steps):
        actions.append(policy.act(observation, env.action_masks()))
        observation, _, terminated, _, _ = env.step(actions[-1])
        if terminated:
            break
    return actions


def test_surprise_model_round_trip_and_refuses_envs_without_the_plane(tmp_path):
    """A model trained with the surprise plane saves its observation spec; loaded, it acts as
    the saved model does on an env built with its settings, and an env that observes other
    planes is refused with a message naming the difference."""
    model = _trained_model(
        tmp_path / "s.zip", steps=64, n_steps=64, n_epochs=1, env_kwargs={"planes": ["surprise"]},
    )  # fmt: skip
    assert model.policy.observation_spec.optional == ("surprise",)
    policy = PPOPolicy(tmp_path / "s.zip", device="cpu")
    assert policy.env_settings()["planes"] == ["surprise"]
    assert policy.network.features_extractor.prior.surprise is not None
    env = small_env(seeds=7, **policy.env_settings())
    observation, _ = env.reset(seed=3)
    policy.reset(env, seed=3)
    # The policy reads the travel prior's scale from the env (reset); the saved model has its own.
    model.policy.features_extractor.prior.travel_pixels = travel_pixels_of(env)
    for _ in range(25):
        mask = env.action_masks()
        expected, _ = model.predict(observation, deterministic=True, action_masks=mask)
        action = policy.act(observation, mask)
        assert action == int(expected)
        observation, _, terminated, _, _ = env.step(action)
        assert not terminated
    actions = _greedy_actions(policy, small_env(seeds=7, planes=["surprise"]), 3, 40)
    assert len(set(actions)) == len(actions)
    for planes in ([], ["surprise", "energy"]):
        with pytest.raises(ValueError, match="optional planes \\[surprise\\] against"):
            policy.reset(small_env(seeds=7, planes=planes), seed=3)
    # Without an env, an observation lacking the plane is a clear error.
    fresh = PPOPolicy(tmp_path / "s.zip", device="cpu")
    plain_observation, _ = small_env(seeds=7).reset(seed=3)
    with pytest.raises(ValueError, match="'planes': \\['surprise'\\]"):
        fresh.action_logits(plain_observation)


@pytest.mark.parametrize("calibrated", [False, True])
def test_energy_model_runs_on_its_own_planes_and_names_what_differs(tmp_path, calibrated):
    """A model trained with the surprise and energy planes (calibrated or not) saves them;
    envs showing one, none, or the other kind of energy plane are refused by name."""
    trained = planes_of(True, True, calibrated)
    model = _trained_model(
        tmp_path / "e.zip", steps=64, n_steps=64, n_epochs=1, env_kwargs={"planes": trained},
    )  # fmt: skip
    assert list(model.policy.observation_spec.optional) == trained
    policy = PPOPolicy(tmp_path / "e.zip", device="cpu")
    assert policy.network.features_extractor.prior.energy is not None
    reference = _greedy_actions(policy, small_env(seeds=7, planes=trained), 3, 30)
    assert len(set(reference)) == len(reference) > 20
    other = planes_of(True, True, not calibrated)
    for shown in ([], planes_of(energy=True), ["surprise"], other):
        with pytest.raises(ValueError, match="optional planes"):
            policy.reset(small_env(seeds=7, planes=shown), seed=3)


def test_models_without_the_planes_refuse_an_envs_optional_planes(trained_model_path):
    policy = PPOPolicy(trained_model_path, device="cpu")
    assert policy.env_settings()["planes"] == []
    plain = _greedy_actions(policy, small_env(seeds=7), 3, 30)
    assert len(plain) == 30
    with pytest.raises(ValueError, match="optional planes \\[none\\] against \\[surprise\\]"):
        policy.reset(small_env(seeds=7, planes=["surprise"]), seed=3)


@pytest.mark.parametrize(
    ("name", "options", "energy", "calibrated"),
    [
        ("ppo_default", [], True, True),
        ("ppo_energy", ["--planes", "surprise,energy"], True, False),
        ("ppo_surprise", ["--planes", "surprise"], False, False),
        # (each documented command also names --n-envs 1 --vec-env dummy: they ran on one env)
    ],
)
def test_shipped_models_match_their_documented_training_commands(name, options, energy, calibrated):
    import json

    import train
    from agents.ppo import DEFAULT_MODEL_PATH

    path = DEFAULT_MODEL_PATH.with_name(f"{name}.zip")
    if not path.is_file():
        pytest.skip(f"no shipped {name}")
    policy = PPOPolicy(path, device="cpu")
    assert policy.env_settings()["planes"] == planes_of(True, energy, calibrated)
    prior_planes = policy.n_blocks + 2 + int(energy)
    assert policy.network.features_extractor.prior.n_outputs == prior_planes
    # The documented command (models/README.md) is the configuration that made the model.
    recorded = json.loads(path.with_suffix(".json").read_text())["args"]
    if "planes" not in recorded:  # saved when the optional planes were flags
        flags = [recorded.pop(k, False) for k in ("surprise_plane", "energy_plane")]
        recorded["planes"] = ",".join(planes_of(*flags, recorded.pop("calibrate_energy", False)))
    one_env = ["--n-envs", "1", "--vec-env", "dummy"]
    documented = vars(
        train.parse_args([*options, "--model", str(path), "--torch-threads", "1", *one_env])
    )
    # An option added after the model was saved ran at its default then.
    recorded = {**vars(train.parse_args([])), **recorded}
    differing = {
        k for k in documented if k not in ("out", "model") and recorded[k] != documented[k]
    }
    assert not differing


def test_compare_pairs_against_each_reference_from_one_set_of_episodes(tmp_path, capsys):
    import json

    from studies.ppo_compare import main

    out = tmp_path / "compare.json"
    argv = ["raster", "--reference", "random,static-subsample", "--seeds", "2", "--grid", "10",
            "--n-times", "16", "--budget-fraction", "0.1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "reference: random" in text and "reference: static-subsample" in text
    report = json.loads(out.read_text())
    assert set(report["policies"]) == {"random", "static-subsample", "raster"}
    for reference, others in report["paired"].items():
        assert set(others) == {"random", "static-subsample", "raster"} - {reference}
    raster, random = report["policies"]["raster"]["auc"], report["policies"]["random"]["auc"]
    difference = report["paired"]["random"]["raster"]["paired_auc"]["mean"]
    assert difference == pytest.approx(np.mean(raster) - np.mean(random))


def test_an_rllib_policy_without_ray_is_one_line_naming_the_extra():
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("Ray is installed (tests/test_rllib.py evaluates a checkpoint)")
    with pytest.raises(ValueError, match=r"distributed"):
        make_policy("rllib:runs/rllib/checkpoint")
