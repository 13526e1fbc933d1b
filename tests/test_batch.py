"""Batch decisions: each step sets the score's weights and takes k measurements."""

from __future__ import annotations

import numpy as np
import pytest

from agents.catalog import make_policy
from envs.acquisition.batch import BatchDecisionEnv, WeightedScore, top_actions_one_per_pixel
from envs.acquisition.factory import make_env


def _env(**settings):
    return make_env(
        twin_overrides={"grid": [10, 10], "n_times": 8},
        initial_stride=3,
        budget_fraction=0.3,
        device="cpu",
        **settings,
    )


@pytest.mark.parametrize("windows", [None, [2, 8]])
def test_the_heuristic_weights_rank_actions_as_the_heuristic(windows):
    env = _env(read_windows=windows)
    observation, info = env.reset(seed=0)
    heuristic = make_policy("gp-uncertainty-per-second")
    heuristic.reset(env, seed=0)
    score = WeightedScore.from_action(np.zeros(4))
    for _ in range(5):
        mask = env.action_masks()
        expected = heuristic.act(observation, mask)
        assert int(np.argmax(score.log_scores(env))) == expected
        observation, *_ = env.step(expected)


def test_top_actions_take_one_per_pixel_best_first():
    scores = np.array([1.0, 5.0, -np.inf, -np.inf, 3.0, 4.0, 2.0, 0.5])  # 4 pixels x 2
    chosen = top_actions_one_per_pixel(scores, per_pixel=2, k=3)
    assert chosen.tolist() == [1, 5, 6]  # pixel 1 has no finite score
    assert top_actions_one_per_pixel(scores, 2, k=10).tolist() == [1, 5, 6]


def test_a_step_takes_k_measurements_and_episodes_end():
    batch = BatchDecisionEnv(_env(), k=5)
    features, _ = batch.reset(seed=1)
    assert batch.observation_space.contains(features)
    start = batch.acquisition.n_measurements
    features, reward, terminated, _, info = batch.step(np.zeros(4, dtype=np.float32))
    assert info["measurements"] == 5 and batch.acquisition.n_measurements == start + 5
    assert np.isfinite(features).all() and np.isfinite(reward)
    steps = 1
    while not terminated:
        action = batch.action_space.sample()
        _, _, terminated, _, info = batch.step(action)
        steps += 1
    assert steps > 2


def test_bad_decisions_and_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        BatchDecisionEnv(_env(), k=0)
    batch = BatchDecisionEnv(_env(), k=2)
    batch.reset(seed=0)
    for bad in (np.zeros(3), np.array([np.nan, 0, 0, 0])):
        with pytest.raises(ValueError, match="4 finite numbers"):
            batch.step(bad)
    # out-of-range samples are clipped to the weights' ranges, not refused
    weights = WeightedScore.from_action(np.array([9.0, -9.0, 0.0, 0.0]))
    assert (weights.uncertainty_power, weights.cost_power) == (2.0, 0.0)
