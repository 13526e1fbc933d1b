"""The block-count-free score map (agents.channel_policy): one set of weights on any block count
and grid, its heuristic start, the shared head over several channels per block, and the errors
for observations it cannot serve."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.catalog import make_policy
from agents.channel_policy import (
    DESCRIPTOR_FEATURES,
    ActionChannels,
    ChannelHeads,
    ChannelScoreMapPolicy,
    action_channels,
    block_channels,
)
from agents.ppo import DEFAULT_MODEL_PATH, PPOPolicy, observation_to_tensors
from envs.acquisition.factory import make_env

SMALL_NET = {"channels": 8, "block_features": 4, "head_hidden": 8, "dilations": (1, 2)}
TEMPERATURE = 0.05


def tiny_env(n_blocks: int = 4, grid: int = 8, planes=(), reconstructor: str = "idw", **kwargs):
    """A small twin env: ``grid`` x ``grid`` pixels, 16 voltages, 16 read-outs."""
    return make_env(
        twin_seeds=kwargs.pop("twin_seeds", 3),
        twin_overrides={"grid": [grid, grid], "n_times": 16},
        reconstructor=reconstructor,
        budget_fraction=kwargs.pop("budget_fraction", 0.15),
        device="cpu",
        n_blocks=n_blocks,
        planes=list(planes),
        **kwargs,
    )


def network_for(env, **kwargs) -> ChannelScoreMapPolicy:
    """An untrained policy built on ``env`` (after its reset)."""
    torch.manual_seed(0)
    return ChannelScoreMapPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        observation_spec=env.observation_spec.to_dict(),
        action_channels=action_channels(env).to_dict(),
        temperature=TEMPERATURE,
        **{**SMALL_NET, **kwargs},
    )


def logits_of(network, observation) -> np.ndarray:
    with torch.no_grad():
        return network.score_logits(observation_to_tensors(observation, "cpu"))[0].double().numpy()


def test_one_set_of_weights_acts_on_any_block_count_and_grid():
    trained_on = tiny_env(4)
    trained_on.reset(seed=0)
    network = network_for(trained_on, heuristic_prior=False)
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    for n_blocks in (3, 4, 6, 9):
        for grid in (8, 11):
            env = tiny_env(n_blocks, grid)
            observation, _ = env.reset(seed=1)
            network.adapt_to(env)
            assert network.n_blocks == n_blocks
            logits = logits_of(network, observation)
            assert logits.shape == (grid * grid * n_blocks,) and np.isfinite(logits).all()
            with torch.no_grad():
                value = network.predict_values(observation_to_tensors(observation, "cpu"))
            assert value.shape == (1, 1)
            mask = env.action_masks()
            action = int(np.argmax(np.where(mask, logits, -np.inf)))
            env.step(action)  # a valid action of this env
    for name, tensor in network.state_dict().items():  # nothing was resized or replaced
        assert torch.equal(tensor, weights[name]), name
    assert sum(p.numel() for p in network.parameters()) < 30_000


@pytest.mark.parametrize(
    ("n_blocks", "planes", "heuristic_name"),
    [
        (4, [], "gp-uncertainty-per-second"),
        (3, ["surprise"], "gp-surprise-per-second"),  # 6, 5 and 5 voltages: uneven costs
        (6, ["surprise", "energy"], "gp-energy-surprise-per-second"),
        (9, ["surprise", "calibrated-energy"], "gp-calibrated-energy-per-second"),
    ],
)
def test_untrained_logits_are_the_heuristics_log_score(n_blocks, planes, heuristic_name):
    """Built on 4 blocks and moved to ``n_blocks``, the untrained policy scores every valid
    action by the heuristic's log score over the temperature (up to a constant), and its greedy
    action is the heuristic's at every step of an episode."""
    # Every block of a pixel open at once (the free replay), so that whole pixels compare.
    built_on = tiny_env(4, planes=planes, reconstructor="gp", programs="free")
    built_on.reset(seed=0)
    network = network_for(built_on)
    env = tiny_env(n_blocks, grid=10, planes=planes, reconstructor="gp", programs="free")
    observation, _ = env.reset(seed=0)
    network.adapt_to(env)
    # At the start (no surprise recorded yet, energies equal for every block of a pixel):
    # uncertainty / seconds is the score of every one of these heuristics but a pixel factor.
    score = env.reconstructor.uncertainty().numpy().reshape(-1) / env.action_seconds()
    usable = env.action_masks().reshape(-1, n_blocks).all(axis=1)  # no floored uncertainty
    logits = (logits_of(network, observation) * TEMPERATURE).reshape(-1, n_blocks)[usable]
    pixel_factor = logits - np.log(score.reshape(-1, n_blocks)[usable])
    spread = pixel_factor - pixel_factor.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(spread, 0.0, atol=2e-4)
    if not planes:  # no pixel factor at all: one constant over every action
        assert np.ptp(pixel_factor) < 2e-4

    heuristic = make_policy(heuristic_name)
    heuristic.reset(env, seed=0)
    terminated, steps = False, 0
    while not terminated:
        mask = env.action_masks()
        action = int(np.argmax(np.where(mask, logits_of(network, observation), -np.inf)))
        assert action == heuristic.act(observation, mask), f"step {steps}"
        observation, _, terminated, _, _ = env.step(action)
        steps += 1
    assert steps > 20


def test_descriptors_place_each_block_in_the_pulse_sequence():
    env = tiny_env(3)
    env.reset(seed=0)
    channels = action_channels(env)
    assert channels.features == DESCRIPTOR_FEATURES
    assert channels.n_channels == channels.n_blocks == 3
    share = channels.descriptors[:, DESCRIPTOR_FEATURES.index("voltage_share")]
    np.testing.assert_allclose(share, [6 / 16, 5 / 16, 5 / 16])
    cost = channels.descriptors[:, DESCRIPTOR_FEATURES.index("log_relative_cost")]
    assert cost[0] > 0 > cost[1] == cost[2]  # the block of 6 voltages costs more
    low = block_channels([np.array([0, 1]), np.array([14, 15])], 16, np.ones(2), 0.01)
    mean = low.descriptors[:, DESCRIPTOR_FEATURES.index("voltage_mean")]
    np.testing.assert_allclose(mean, [0.5 / 15, 14.5 / 15])
    assert low.travel_pixels == pytest.approx(100.0)


def windowed_channels(n_blocks: int, n_windows: int) -> ActionChannels:
    """Synthetic channels as an env with read windows would list them: channel ``c`` measures
    block ``c // n_windows``, its descriptor adds the window's read fraction."""
    blocks = np.repeat(np.arange(n_blocks), n_windows)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (n_blocks, len(DESCRIPTOR_FEATURES)))[blocks]
    read_fraction = np.tile((np.arange(n_windows) + 1) / n_windows, n_blocks)[:, None]
    return ActionChannels(
        blocks, np.hstack([base, read_fraction]), 40.0, (*DESCRIPTOR_FEATURES, "read_fraction")
    )


def test_the_head_scores_several_channels_per_block_with_shared_weights():
    """Two read windows per block: every channel is scored by the same head from the trunk,
    its own block's features, its prior planes and its descriptor, in the action order
    ``(pixel * n_blocks + block) * n_windows + window``."""
    n_blocks, n_windows, grid = 3, 2, (4, 5)
    channels = windowed_channels(n_blocks, n_windows)
    torch.manual_seed(0)
    head = ChannelHeads(trunk_dim=6, block_dim=4, prior_dim=3, descriptor_dim=6, hidden=5)
    for parameter in head.parameters():  # random, including the output layer
        torch.nn.init.normal_(parameter)
    generator = torch.Generator().manual_seed(1)
    trunk = torch.randn(2, 6, *grid, generator=generator)
    blocks = torch.randn(2, n_blocks, 4, *grid, generator=generator)
    prior = torch.randn(2, channels.n_channels, 3, *grid, generator=generator)
    descriptors = torch.as_tensor(channels.descriptors)
    channel_blocks = torch.as_tensor(channels.blocks)
    with torch.no_grad():
        flat = head.forward_actor((trunk, blocks, prior, channel_blocks, descriptors))
        assert flat.shape == (2, grid[0] * grid[1] * n_blocks * n_windows)
        for c in range(channels.n_channels):  # each channel alone gives its own logits
            one = slice(c, c + 1)
            alone = head.channel_logits(
                trunk, blocks, prior[:, one], channel_blocks[one], descriptors[one]
            )[:, 0]
            row, col, block, window = 3, 1, c // n_windows, c % n_windows
            action = ((row * grid[1] + col) * n_blocks + block) * n_windows + window
            assert torch.allclose(flat[:, action], alone[:, row, col], atol=1e-5)
        # The windows of one block differ only by their descriptors, and those matter.
        same_inputs = prior[:, 0:1].expand(-1, 2, -1, -1, -1)
        both = head.channel_logits(trunk, blocks, same_inputs, channel_blocks[:2], descriptors[:2])
        assert not torch.allclose(both[:, 0], both[:, 1])
        # Another block's features do not enter a channel's own part.
        changed = blocks.clone()
        changed[:, 2] += 1.0
        before = head.channel_logits(trunk, blocks, prior, channel_blocks, descriptors)
        after = head.channel_logits(trunk, changed, prior, channel_blocks, descriptors)
        moved = (before - after).abs().amax(dim=(0, 2, 3))
        assert (moved[:4] == 0).all() and (moved[4:] > 0).all()


def test_the_whole_network_serves_several_channels_per_block():
    """A policy whose action channels are two read windows per block (descriptors with a read
    fraction) scores ``pixels x blocks x windows`` actions on the env's observation."""
    env = tiny_env(4)
    observation, _ = env.reset(seed=0)
    channels = windowed_channels(4, 2)
    nx, ny = env.grid_shape
    network = ChannelScoreMapPolicy(
        env.observation_space,
        spaces.Discrete(nx * ny * channels.n_channels),
        lambda _: 1e-3,
        observation_spec=env.observation_spec.to_dict(),
        action_channels=channels.to_dict(),
        **SMALL_NET,
    )
    logits = logits_of(network, observation).reshape(nx * ny, 4, 2)
    # at the heuristic start a block's windows differ by their cost term only (equal here)
    np.testing.assert_allclose(logits[..., 0], logits[..., 1], atol=1e-5)
    with pytest.raises(ValueError, match="read_fraction"):
        network.adapt_to(env)  # the env's channels lack the model's descriptor feature


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    """An untrained MaskablePPO with the channel policy on a 4-block env with the surprise
    plane, saved (its loading and acting are what is tested, not its learning)."""
    path = tmp_path_factory.mktemp("channels") / "channels_model.zip"
    vec_env = DummyVecEnv([lambda: tiny_env(4, planes=["surprise"])])
    env = vec_env.envs[0]
    env.reset(seed=0)
    model = MaskablePPO(
        ChannelScoreMapPolicy,
        vec_env,
        n_steps=64,
        batch_size=64,
        seed=0,
        policy_kwargs={
            **SMALL_NET,
            "observation_spec": env.unwrapped.observation_spec.to_dict(),
            "action_channels": action_channels(env).to_dict(),
        },
        device="cpu",
    )
    model.learn(64)  # one update: the saved weights are not the initial ones
    model.save(path)
    vec_env.close()
    return str(path)


def test_a_saved_model_runs_on_other_block_counts(saved_model):
    policy = PPOPolicy(saved_model, device="cpu")
    assert policy.block_count_free and policy.env_settings()["planes"] == ["surprise"]
    for n_blocks in (3, 9):
        env = tiny_env(n_blocks, grid=9, planes=["surprise"])
        observation, _ = env.reset(seed=2)
        policy.reset(env, seed=2)
        assert policy.n_blocks == n_blocks
        for _ in range(5):
            action = policy.act(observation, env.action_masks())
            assert 0 <= action < 81 * n_blocks
            observation, _, _, _, info = env.step(action)
            assert not info["repeated"]


def test_a_model_on_an_env_it_cannot_serve_is_a_one_line_error(saved_model):
    policy = PPOPolicy(saved_model, device="cpu")
    for settings, difference in (
        ({"planes": []}, "optional planes [surprise] against [none]"),
        ({"planes": ["surprise"], "n_components": 2}, "3 component maps against 2"),
    ):
        env = tiny_env(6, **settings)
        env.reset(seed=0)
        with pytest.raises(ValueError) as error:
            policy.reset(env, seed=0)
        message = str(error.value)
        assert difference in message and "\n" not in message
        assert "voltage blocks" not in message  # the block count is no difference for it
    # Without a reset, an observation of another contract is refused by the network itself.
    plain, _ = tiny_env(4, planes=[]).reset(seed=0)
    with pytest.raises(ValueError, match="fits no block count") as error:
        policy.action_logits(plain)
    assert "\n" not in str(error.value)
    nine, _ = tiny_env(9, planes=["surprise"]).reset(seed=0)
    with pytest.raises(ValueError, match="holds 9 voltage blocks, the policy's action channels 4"):
        policy.action_logits(nine)


def test_evaluate_reports_a_model_that_cannot_serve_and_goes_on(tmp_path, capsys, monkeypatch):
    """A model tied to 4 blocks on a 3-block run: its failure is one line naming the
    difference, the other agents' episodes are all there, the exit status is 1."""
    import evaluate

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped model")
    monkeypatch.setattr(
        evaluate,
        "_twin_overrides",
        lambda grid, setting="default": {"grid": [grid, grid], "n_times": 16},
    )
    out = tmp_path / "eval"
    argv = ["--agents", "ppo,random", "--blocks", "3", "--seeds", "2", "--grid", "8",
            "--budget-fraction", "0.2", "--charge-decisions", "none",
            "--out", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 1
    table = capsys.readouterr().out.splitlines()
    failure = [line for line in table if line.startswith("ppo ") and "FAILED" in line]
    assert len(failure) == 1 and "4 voltage blocks against 3" in failure[0]
    with open(out / "episodes.csv") as f:
        assert [row["agent"] for row in csv.DictReader(f)] == ["random", "random"]


def test_the_shipped_channel_model_matches_its_command_and_runs_on_any_block_count():
    import json

    import train

    path = DEFAULT_MODEL_PATH.with_name("ppo_channels.zip")
    if not path.is_file():
        pytest.skip("no shipped ppo_channels")
    policy = PPOPolicy(path, device="cpu")
    assert policy.block_count_free
    assert policy.env_settings()["planes"] == ["surprise", "calibrated-energy"]
    # The documented command (models/README.md) is the configuration that made the model.
    recorded = json.loads(path.with_suffix(".json").read_text())["args"]
    documented = vars(train.parse_args([
        "--policy", "channels", "--total-timesteps", "100000", "--out", "runs/ppo_channels",
        "--model", "runs/ppo_channels/model.zip", "--torch-threads", "1", "--no-progress",
        "--n-envs", "1", "--vec-env", "dummy",
    ]))  # fmt: skip
    # An option added after the model was saved ran at its default then.
    assert {**vars(train.parse_args([])), **recorded} == documented
    for n_blocks in (3, 9):
        env = tiny_env(n_blocks, grid=9, **policy.env_settings())
        observation, _ = env.reset(seed=0)
        policy.reset(env, seed=0)
        action = policy.act(observation, env.action_masks())
        assert 0 <= action < 81 * n_blocks


def test_read_windows_are_channels_of_the_same_weights():
    """On an env with read windows the channels are (block, window) pairs that end at a unit;
    a short window reads a smaller share for fewer seconds; the weights built on a plain env
    score the windowed env's actions, and only valid ones are chosen."""
    plain = tiny_env(2)
    plain.reset(seed=0)
    network = network_for(plain)
    env = tiny_env(2, read_windows=[4, 16])
    observation, _ = env.reset(seed=0)
    channels = action_channels(env)
    assert channels.n_channels == 4 and channels.n_blocks == env.n_units == 8
    assert channels.blocks.tolist() == [0, 3, 4, 7]  # units where each window ends
    share = channels.features.index("voltage_share")
    cost = channels.features.index("log_relative_cost")
    short, full = channels.descriptors[0], channels.descriptors[1]
    assert short[share] == pytest.approx(full[share] / 4) and short[cost] < full[cost]
    network.adapt_to(env)
    logits = logits_of(network, observation)
    assert logits.shape == (env.action_space.n,) and np.isfinite(logits).all()
    mask = env.action_masks()
    assert mask[int(np.argmax(np.where(mask, logits, -np.inf)))]
