"""The environment under Gymnasium's and SB3's checkers, vector envs, pickling, make(), TorchRL."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.acquisition.env import AcquisitionEnv
from envs.acquisition.factory import make_env
from envs.acquisition.wrappers import MaskObservation

# Small, fast configuration; every worker builds its own twin from these JSON-safe kwargs.
SMALL = {
    "data": "twin",
    "twin_seeds": [0, 50],
    "twin_overrides": {"grid": [8, 8], "n_times": 4},
    "reconstructor": "lowrank",
    "initial_stride": 4,
    "budget_fraction": 0.3,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_small(**overrides) -> AcquisitionEnv:
    return make_env(**{**SMALL, **overrides})


def small_kwargs() -> dict:
    """``SMALL`` without the data source, which the registered spec already names."""
    return {k: v for k, v in SMALL.items() if k != "data"}


def make_small_env() -> gym.Env:
    """Top-level factory (picklable by reference) for vector-env workers."""
    return gym.make(envs.SMALL_ENV_ID, **small_kwargs())


def masked_random_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(m)) for m in np.asarray(masks, dtype=bool)])


def test_kwargs_are_json_safe():
    assert json.loads(json.dumps(SMALL)) == SMALL
    for env_id in (envs.ENV_ID, envs.SMALL_ENV_ID):
        spec = gym.spec(env_id)
        assert spec.entry_point == "envs.acquisition.factory:make_env"
        json.dumps(spec.kwargs)


def test_gymnasium_check_env_with_warnings_as_errors():
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(envs.SMALL_ENV_ID, render_mode="rgb_array", **small_kwargs())
        check_env(env.unwrapped, skip_render_check=False)


def test_sb3_check_env():
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(make_small(), warn=True)
    # The only acceptable advice concerns the float planes (a deliberate choice, not an image).
    assert all("image" in str(w.message).lower() for w in caught), [str(w.message) for w in caught]


@pytest.mark.parametrize("vector_class", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_gymnasium_vector_envs_with_masks(vector_class):
    vec = vector_class([make_small_env] * 2)
    try:
        obs, info = vec.reset(seed=7)
        assert obs["planes"].shape[0] == 2
        rng = np.random.default_rng(0)
        for _ in range(5):
            masks = np.stack(vec.call("action_masks"))
            np.testing.assert_array_equal(masks, info["action_mask"].astype(bool))
            obs, reward, terminated, truncated, info = vec.step(masked_random_actions(masks, rng))
            assert reward.shape == (2,) and not truncated.any()
    finally:
        vec.close()


def test_sb3_subproc_vec_env_and_maskable_mask_lookup():
    from sb3_contrib.common.maskable.utils import get_action_masks
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    for vec in (DummyVecEnv([make_small_env] * 2), SubprocVecEnv([make_small_env] * 2)):
        try:
            vec.seed(3)
            vec.reset()
            rng = np.random.default_rng(1)
            masks = get_action_masks(vec)
            for _ in range(5):
                assert masks.shape == (2, 8 * 8 * 4) and masks.dtype == bool
                actions = masked_random_actions(masks, rng)
                _, _, dones, infos = vec.step(actions)
                masks = get_action_masks(vec)
                assert not dones.any()
                for info, mask, action in zip(infos, masks, actions, strict=True):
                    np.testing.assert_array_equal(info["action_mask"].astype(bool), mask)
                    assert not mask[action]  # the block just measured is masked out
        finally:
            vec.close()


def test_pickled_env_continues_identically():
    env = make_small()
    env.reset(seed=2)
    env.step(5)
    clone = pickle.loads(pickle.dumps(env))
    for action in (9, 40, 9):
        a, b = env.step(action), clone.step(action)
        for key in a[0]:
            np.testing.assert_array_equal(a[0][key], b[0][key])
        assert a[1:4] == b[1:4]
        assert a[4]["seconds"] == b[4]["seconds"] and a[4]["r2"] == b[4]["r2"]


def test_make_round_trip_from_fresh_subprocess():
    kwargs = small_kwargs()
    code = (
        "import json, sys, gymnasium as gym\n"
        f"env = gym.make('envs:{envs.SMALL_ENV_ID}', **json.loads(sys.argv[1]))\n"
        "obs, info = env.reset(seed=11)\n"
        "obs, reward, terminated, truncated, info = env.step(7)\n"
        "print(json.dumps([float(obs['planes'].sum()), reward, info['seconds'], info['r2']]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    env = gym.make(envs.SMALL_ENV_ID, **kwargs)
    env.reset(seed=11)
    obs, reward, _, _, info = env.step(7)
    local = [float(obs["planes"].sum()), reward, info["seconds"], info["r2"]]
    assert remote == pytest.approx(local)


def test_mask_observation_wrapper():
    env = MaskObservation(make_small())
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["action_mask"].astype(bool), env.unwrapped.action_masks())
    obs, *_ = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
    np.testing.assert_array_equal(obs["action_mask"].astype(bool), env.action_masks())
    with pytest.raises(ValueError, match="already has"):
        MaskObservation(env)


def test_torchrl_gym_wrapper_masked_rollout():
    pytest.importorskip("torchrl")
    from torchrl.envs import GymWrapper, TransformedEnv
    from torchrl.envs.transforms import ActionMask
    from torchrl.envs.utils import check_env_specs

    base = GymWrapper(MaskObservation(make_small()), categorical_action_encoding=True)
    env = TransformedEnv(base, ActionMask())
    env.set_seed(0)
    check_env_specs(env, seed=0)
    rollout = env.rollout(12)
    masks = rollout["action_mask"].bool()
    actions = rollout["action"].long()
    assert masks.gather(-1, actions.unsqueeze(-1)).all()  # every action was a valid one
    taken = actions.tolist()
    assert len(set(taken)) == len(taken)  # and none was repeated


@pytest.mark.parametrize(
    "env_id", [envs.SMALL_ENV_ID, pytest.param(envs.ENV_ID, marks=pytest.mark.slow)]
)
def test_registered_defaults_build_and_step(env_id):
    from reconstruct.registry import reconstructor_class

    try:
        reconstructor_class(gym.spec(env_id).kwargs["reconstructor"])
    except ImportError as err:
        pytest.skip(f"registered reconstructor unavailable: {err}")
    env = gym.make(env_id)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
    assert env.observation_space.contains(obs) and np.isfinite(reward)
