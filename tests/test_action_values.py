"""The one-step action-value study: its simulated values are the real steps' gains."""

from __future__ import annotations

import json

import numpy as np

import train
from agents.ppo import PPOPolicy
from envs.acquisition.factory import make_env
from studies.action_values import candidate_values, collect, main, summarise

SMALL = ["--grid", "10", "--n-times", "16", "--budget-fraction", "0.15"]


def small_env_kwargs(seed) -> dict:
    return train.env_kwargs(train.parse_args([*SMALL, "--out", "unused"]), seed)


def test_simulated_value_equals_the_gain_of_the_step_and_leaves_the_env_alone():
    env = make_env(**small_env_kwargs(3))
    env.reset(seed=3)
    for _ in range(25):
        env.step(int(np.flatnonzero(env.action_masks())[5]))
    actions = np.flatnonzero(env.action_masks())[:4]
    before, measured = env.r2_now, env.reconstructor.n_measured
    values = candidate_values(env, actions)
    assert env.r2_now == before and env.reconstructor.n_measured == measured
    seconds = env.action_seconds()[actions[2]]
    env.step(int(actions[2]))
    assert np.isclose(values[2] * seconds, env.r2_now - before, rtol=1e-6, atol=1e-9)


def test_collected_states_put_the_heuristic_pick_first():
    samples = collect(small_env_kwargs([0, 100]), 2, every=10, candidates=4, progress=False)
    n = len(samples["value"])
    assert n > 0 and samples["candidates"].shape == (n, 4)
    top_half = samples["score"][:, :2]
    assert np.all(top_half[:, 0] >= top_half[:, 1])
    assert np.all(top_half.min(1) >= samples["score"][:, 2:].max(1))
    chosen = samples["masks"][np.arange(n)[:, None], samples["candidates"]]
    assert chosen.all()  # only valid actions are simulated
    summary = summarise(samples)
    assert summary["states"] == n and 0 <= summary["fraction_negative"] <= 1


def test_fit_writes_a_model_that_runs_as_a_policy(tmp_path):
    extra = ["--channels", "8", "--dilations", "1,2"]
    result = main(
        ["--out", str(tmp_path), "--episodes", "3", "--every", "8", "--candidates", "4",
         "--fit", "--epochs", "1", "--quiet", *SMALL, *extra]
    )  # fmt: skip
    assert len(result["fit"]["epochs"]) == 1
    assert set(result["fit"]["heuristic"]) == {"held_out_spearman", "held_out_pick_value"}
    assert json.loads((tmp_path / "action_values.json").read_text())["summary"]["states"] > 0
    env = make_env(**small_env_kwargs(7))
    observation, _ = env.reset(seed=7)
    policy = PPOPolicy(tmp_path / "model.zip")
    policy.reset(env, seed=7)
    action = policy.act(observation, env.action_masks())
    assert env.action_masks()[action]
