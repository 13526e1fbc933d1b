"""The Ray RLlib path (agents.rllib): the masked module, the env creator, training on local Ray.

Skipped when Ray RLlib (the ``distributed`` extra) is not installed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib")

import ray  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from tiny_settings import TINY_ENV  # noqa: E402

from agents.rllib import (  # noqa: E402
    CHECKED_ACTIONS_METRIC,
    INVALID_ACTION_KEY,
    INVALID_ACTIONS_METRIC,
    MASK_KEY,
    MaskedScoreMapModule,
    init_ray,
    make_rllib_env,
    module_from_checkpoint,
    ppo_config,
)

TINY = TINY_ENV


def observation_batch(env, n_steps: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of observations from a few valid steps, as tensors with a batch axis."""
    observation, _ = env.reset(seed=seed)
    observations = [observation]
    rng = np.random.default_rng(seed)
    for _ in range(n_steps - 1):
        action = int(rng.choice(np.flatnonzero(observation[MASK_KEY])))
        observation, *_ = env.step(action)
        observations.append(observation)
    return {
        key: torch.as_tensor(np.stack([o[key] for o in observations]))
        for key in observations[0]
    }


@pytest.fixture(scope="module")
def env():
    return make_rllib_env(dict(TINY))


@pytest.fixture(scope="module")
def local_ray():
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_env_creator_takes_json_settings_and_exposes_the_mask(env):
    json.dumps(TINY)
    observation, info = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    np.testing.assert_array_equal(observation[MASK_KEY].astype(bool), env.action_masks())
    assert info[INVALID_ACTION_KEY] is False
    with pytest.raises(TypeError, match="unknown env setting"):
        make_rllib_env({**TINY, "gridd": 3})


def test_a_masked_out_action_is_flagged(env):
    observation, _ = env.reset(seed=1)
    action = int(np.flatnonzero(observation[MASK_KEY])[0])
    *_, info = env.step(action)
    assert info[INVALID_ACTION_KEY] is False
    *_, info = env.step(action)  # the block was just measured: now masked out
    assert info[INVALID_ACTION_KEY] is True


def test_module_gives_masked_actions_no_mass_in_every_phase(env):
    module = MaskedScoreMapModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"channels": 8},
    )
    observation = observation_batch(env)
    mask = observation[MASK_KEY].bool()
    assert (~mask).any()  # the initial design already masks some blocks
    for forward in (module.forward_exploration, module.forward_inference, module.forward_train):
        logits = forward({Columns.OBS: observation})[Columns.ACTION_DIST_INPUTS]
        assert logits.shape == mask.shape
        probabilities = torch.softmax(logits, dim=-1)
        assert torch.all(probabilities[~mask] == 0)
        assert torch.isfinite(logits).all()  # lowest finite value, not -inf: no NaN downstream
        assert mask.gather(1, logits.argmax(dim=1, keepdim=True)).all()
        samples = torch.distributions.Categorical(logits=logits).sample((200,))
        assert mask.gather(1, samples.T).all()
    values = module.compute_values({Columns.OBS: observation})
    assert values.shape == (mask.shape[0],) and torch.isfinite(values).all()


def test_module_rejects_an_observation_without_mask(env):
    from gymnasium import spaces

    without_mask = spaces.Dict(
        {k: v for k, v in env.observation_space.spaces.items() if k != MASK_KEY}
    )
    with pytest.raises(ValueError, match="MaskObservation"):
        MaskedScoreMapModule(observation_space=without_mask, action_space=env.action_space)


def test_ppo_config_rejects_settings_a_worker_could_not_receive():
    with pytest.raises(TypeError, match="JSON-safe"):
        ppo_config({**TINY, "twin_overrides": {"grid": np.array([8, 8])}})


def test_ppo_trains_on_local_ray_with_valid_actions_and_the_checkpoint_restores(
    local_ray, env, tmp_path
):
    config = ppo_config(
        TINY,
        num_env_runners=1,  # one remote sampling actor: the path a cluster takes
        train_batch_size=128,
        minibatch_size=64,
        num_epochs=2,
        channels=8,
    )
    algorithm = config.build_algo()
    try:
        for _ in range(2):
            runners = algorithm.train()["env_runners"]
        module = algorithm.get_module()
        checkpoint = algorithm.save_to_path(str(tmp_path / "checkpoint"))
    finally:
        algorithm.stop()

    steps = runners["num_env_steps_sampled_lifetime"]
    assert steps >= 2 * 128
    assert runners[CHECKED_ACTIONS_METRIC] == steps  # every sampled action was checked ...
    assert runners[INVALID_ACTIONS_METRIC] == 0  # ... and none was masked out
    assert np.isfinite(runners["episode_return_mean"])

    restored = module_from_checkpoint(checkpoint)
    observation = observation_batch(env, seed=5)
    with torch.no_grad():
        expected = module.forward_inference({Columns.OBS: observation})
        actual = restored.forward_inference({Columns.OBS: observation})
    torch.testing.assert_close(
        actual[Columns.ACTION_DIST_INPUTS], expected[Columns.ACTION_DIST_INPUTS]
    )


@pytest.mark.slow
def test_a_checkpoint_evaluates_through_the_catalog_by_a_relative_path(
    local_ray, tmp_path, monkeypatch
):
    from agents.catalog import is_rllib_checkpoint, make_policy
    from agents.evaluation import run_episode
    from agents.rllib import RLlibPolicy, save_checkpoint
    from envs.acquisition.factory import make_env

    config = ppo_config(
        TINY, num_env_runners=0, train_batch_size=64, minibatch_size=64, num_epochs=1, channels=8
    )
    algorithm = config.build_algo()
    try:
        algorithm.train()
        save_checkpoint(algorithm, tmp_path / "run" / "checkpoint", TINY)
    finally:
        algorithm.stop()
    monkeypatch.chdir(tmp_path)  # RLlib itself refuses a relative path ("empty scheme")
    assert is_rllib_checkpoint("run/checkpoint") and not is_rllib_checkpoint("run")
    restored = module_from_checkpoint("run/checkpoint")
    assert isinstance(restored, MaskedScoreMapModule)
    for spec in ("rllib:run/checkpoint", "ppo:run/checkpoint"):
        policy = make_policy(spec)
        assert isinstance(policy, RLlibPolicy)
        env = make_env(**{**TINY, **policy.env_settings()})
        trace = run_episode(env, policy, seed=60, charge_decisions="none")
        assert len(trace.r2) > 10 and np.isfinite(trace.auc())
    with pytest.raises(ValueError, match="voltage blocks"):
        policy.reset(make_env(**{**TINY, "n_blocks": 2}), seed=0)
    with pytest.raises(FileNotFoundError, match="no RLlib algorithm checkpoint"):
        make_policy("rllib:run")
