"""train.py: arguments, a short run and its outputs, resume, and (slow) learning beyond random."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from agents.catalog import make_policy
from agents.evaluation import run_episode
from envs.data.sources import HELD_OUT_SEED_START
from studies import ppo_curves

#: Tiny, fast settings: 12 x 12 twin, 16 read-outs, a cheap reconstructor, short episodes.
TINY = [
    "--grid", "12", "--n-times", "16", "--reconstructor", "idw", "--budget-fraction", "0.1",
    "--n-envs", "2", "--vec-env", "dummy", "--n-steps", "64", "--batch-size", "64",
    "--n-epochs", "2", "--channels", "8", "--dilations", "1,2", "--eval-seeds", "1",
    "--no-progress",
]  # fmt: skip


def run(tmp_path, *extra: str) -> MaskablePPO:
    return train.train(train.parse_args([*TINY, "--out", str(tmp_path), *extra]))


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("--total-timesteps", "--resume", "--device", "--eval-freq", "--train-seed-end"):
        assert name in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-seed-end", str(HELD_OUT_SEED_START + 1)], "held-out"),
        (["--train-seed-start", "50", "--train-seed-end", "50"], "empty training seed range"),
        (["--vec-env", "threads"], "vec_env"),
        (["--dilations", "1,0"], "dilations"),
        (["--budget-fraction", "0"], "budget_fraction"),
        (["--stop-r2", "1.5"], "stop_r2"),
        (["--read-windows", "8,x"], "read_windows"),
        (["--read-windows", "8,32"], "read windows need --policy channels"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        train.parse_args(argv)
    assert train.main(argv) == 2  # one line on stderr, no traceback


def test_read_windows_reach_the_training_env():
    args = train.parse_args([*TINY, "--policy", "channels", "--read-windows", "4,16"])
    assert train.env_kwargs(args, [0, 10])["read_windows"] == [4, 16]


def test_env_kwargs_are_json_safe_and_keep_evaluation_held_out():
    args = train.parse_args(TINY)
    kwargs = train.env_kwargs(args, [args.train_seed_start, args.train_seed_end])
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["twin_seeds"][1] <= HELD_OUT_SEED_START
    assert kwargs["stop_r2"] is None  # episodes run to the budget unless --stop-r2 is given
    stopping = train.env_kwargs(train.parse_args([*TINY, "--stop-r2", "0.95"]), 0)
    assert stopping["stop_r2"] == 0.95
    assert gym.make(train.ENV_ID, **stopping).unwrapped.stop_r2 == 0.95


def test_planes_option_reaches_env_policy_and_config(tmp_path):
    default = train.env_kwargs(train.parse_args(TINY), 0)["planes"]
    assert default == ["surprise", "calibrated-energy"]  # the default
    off = train.parse_args([*TINY, "--planes", ""])
    assert train.env_kwargs(off, 0)["planes"] == []
    model = run(
        tmp_path, "--planes", "surprise", "--total-timesteps", "64", "--eval-freq", "0",
        "--checkpoint-freq", "64",
    )  # fmt: skip
    assert model.policy.observation_spec.optional == ("surprise",)
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["args"]["planes"] == "surprise"
    assert config["train_env_kwargs"]["planes"] == ["surprise"]
    loaded = MaskablePPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.observation_spec.optional == ("surprise",)
    with pytest.raises(ValueError, match="resume it with --planes surprise"):
        run(tmp_path, "--planes", "", "--total-timesteps", "128", "--eval-freq", "0",
            "--resume", str(tmp_path / "checkpoints" / "ppo_64_steps.zip"))  # fmt: skip
    with pytest.raises(ValueError, match="planes"):
        train.parse_args([*TINY, "--planes", "energy,calibrated-energy"])


def test_config_file_sets_options_and_the_command_line_overrides_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"args": {"grid": 20, "planes": "surprise", "seed": 3}}))
    args = train.parse_args(["--config", str(path), "--seed", "4"])
    assert (args.grid, args.planes, args.seed) == (20, "surprise", 4)
    # a shipped model's record reproduces its settings, flags of older records included
    record = Path(train.__file__).parent / "models" / "ppo_energy.json"
    if record.is_file():
        assert train.parse_args(["--config", str(record)]).planes == "surprise,energy"
    path.write_text(json.dumps({"gird": 20}))
    with pytest.raises(ValueError, match="unknown settings \\['gird'\\]"):
        train.parse_args(["--config", str(path)])


def test_episode_tracker_reports_first_time_at_target():
    tracker = train.EpisodeTracker(n_envs=2, target=0.9)
    assert tracker.step(0, {"r2": 0.5, "seconds": 1.0}, done=False) is None
    assert tracker.step(0, {"r2": 0.91, "seconds": 2.0}, done=False) is None
    assert tracker.step(0, {"r2": 0.95, "seconds": 3.0}, done=False) is None
    assert tracker.step(0, {"r2": 0.97, "seconds": 4.0}, done=True) == (0.97, 2.0)
    r2, seconds = tracker.step(1, {"r2": 0.4, "seconds": 9.0}, done=True)
    assert r2 == 0.4 and math.isnan(seconds)
    # the next episode of env 0 starts afresh
    assert math.isnan(tracker.step(0, {"r2": 0.2, "seconds": 1.0}, done=True)[1])


def test_short_run_writes_model_config_checkpoints_and_logs(tmp_path):
    model = run(
        tmp_path, "--total-timesteps", "256", "--eval-freq", "128", "--checkpoint-freq", "128"
    )
    assert model.num_timesteps == 256
    assert (tmp_path / "model.zip").is_file()
    assert (tmp_path / "checkpoints" / "ppo_256_steps.zip").is_file()
    assert (tmp_path / "best" / "best_model.zip").is_file()
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["args"]["seed"] == 0 and config["args"]["grid"] == 12
    assert config["num_timesteps"] == 256 and config["steps_per_second"] > 0
    events = EventAccumulator(str(next((tmp_path / "tb").iterdir())))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("rollout/ep_rew_mean", "rollout/r2_at_budget", "eval/mean_reward",
                "eval/r2_at_budget", "train/entropy_loss", "train/value_loss"):  # fmt: skip
        assert tag in tags, tag
    # the training-curve figure is drawn from these logs
    figure = tmp_path / "curves.png"
    assert ppo_curves.main([str(tmp_path / "tb"), "--out", str(figure), "--reference", "0.1"]) == 0
    assert figure.stat().st_size > 10_000
    # by default the figure goes into the run folder, never onto a tracked file of the project
    assert ppo_curves.main([str(tmp_path / "tb")]) == 0
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
    steps, _ = ppo_curves.read_scalars(tmp_path / "tb")["train/entropy_loss"]
    assert steps.max() <= 256 and np.all(np.diff(steps) > 0)


def test_curves_of_a_folder_without_logs_is_a_clear_error(tmp_path, capsys):
    assert ppo_curves.main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err


def test_resume_continues_the_step_count(tmp_path):
    run(tmp_path, "--total-timesteps", "128", "--eval-freq", "0", "--checkpoint-freq", "128")
    checkpoint = tmp_path / "checkpoints" / "ppo_128_steps.zip"
    assert checkpoint.is_file()
    resumed = run(
        tmp_path, "--total-timesteps", "256", "--eval-freq", "0", "--checkpoint-freq", "128",
        "--resume", str(checkpoint),
    )  # fmt: skip
    assert resumed.num_timesteps == 256
    assert MaskablePPO.load(tmp_path / "model.zip", device="cpu").num_timesteps == 256
    assert (tmp_path / "checkpoints" / "ppo_256_steps.zip").is_file()
    with pytest.raises(ValueError, match="already has 256 steps"):
        run(tmp_path, "--total-timesteps", "256", "--eval-freq", "0", "--resume",
            str(tmp_path / "model.zip"))  # fmt: skip


def test_same_seed_same_model(tmp_path):
    first = run(
        tmp_path / "a", "--total-timesteps", "128", "--eval-freq", "0", "--checkpoint-freq", "0"
    )
    second = run(
        tmp_path / "b", "--total-timesteps", "128", "--eval-freq", "0", "--checkpoint-freq", "0"
    )
    for p, q in zip(first.policy.parameters(), second.policy.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())


@pytest.mark.slow
def test_short_training_beats_random_on_held_out_seeds(tmp_path):
    """A few thousand steps with the default environment (16 x 16 twin, GP, 0.3 budget) give a
    policy that beats random acquisition on held-out samples and stays close to where it
    started, gp-uncertainty-per-second (the heuristic prior).

    On a 12 x 12 twin with 16 read-outs the GP heuristics themselves lose to random (normalised
    AUC 0.042 vs 0.067 over these 8 seeds), so a policy that starts from them cannot be expected
    to beat random there after a few thousand steps: the test uses the training defaults.
    """
    settings = ["--grid", "16", "--n-times", "32", "--reconstructor", "gp",
                "--budget-fraction", "0.3", "--n-envs", "1", "--n-steps", "1024",
                "--batch-size", "256", "--channels", "16", "--dilations", "1,2,4,8",
                "--no-progress"]  # fmt: skip
    short_run = ["--total-timesteps", "4096", "--eval-freq", "0", "--checkpoint-freq", "0"]
    train.train(train.parse_args([*settings, "--out", str(tmp_path), *short_run]))
    args = train.parse_args(settings)
    mean_auc = {}
    for spec in (f"ppo:{tmp_path / 'model.zip'}", "random", "gp-uncertainty-per-second"):
        policy = make_policy(spec)
        aucs = []
        for i in range(8):
            env = gym.make(train.ENV_ID, **train.env_kwargs(args, HELD_OUT_SEED_START + i))
            aucs.append(run_episode(env, policy, seed=i, charge_decisions="none").auc())
        mean_auc[policy.name] = float(np.mean(aucs))
    assert mean_auc["ppo"] > mean_auc["random"], mean_auc
    assert mean_auc["ppo"] > mean_auc["gp-uncertainty-per-second"] - 0.02, mean_auc


def test_in_process_envs_leave_the_learners_thread_count_alone():
    """A DummyVecEnv builds its envs in the learner's process: they must not override
    --torch-threads (subprocess workers do limit themselves to one thread)."""
    import torch

    args = train.parse_args(TINY)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        env = train.make_vec_env(args.env_id, [train.env_kwargs(args, 0)], "dummy")
        assert torch.get_num_threads() == 2
        env.close()
    finally:
        torch.set_num_threads(threads)


def test_train_distributed_help_shows_its_examples_and_every_default(capsys):
    import dataclasses

    import train_distributed

    with pytest.raises(SystemExit) as exit_info:
        train_distributed.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "python train_distributed.py --address auto --env-runners 8" in text  # the docstring
    for field in dataclasses.fields(train_distributed.DistributedArgs):
        assert "--" + field.name.replace("_", "-") in text
    assert text.count("(default:") + text.count("default: start") + text.count(
        "(default: all)"
    ) + text.count("default: none") >= len(dataclasses.fields(train_distributed.DistributedArgs))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-seeds", f"0,{HELD_OUT_SEED_START + 1}"], "held-out"),
        (["--train-seeds", "5"], "START,END"),
        (["--env-settings", '{"gridd": 3}'], "gridd"),
        (["--iterations", "0"], "--iterations"),
    ],
)
def test_train_distributed_bad_options_are_one_line(argv, message, capsys):
    import train_distributed

    with pytest.raises(ValueError, match=message):
        train_distributed.parse_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        train_distributed.main(argv)
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_train_distributed_settings_reach_the_env():
    import train_distributed

    args = train_distributed.parse_args(
        ["--grid", "8", "--train-seeds", "3,9", "--env-settings", '{"reconstructor": "idw"}']
    )
    settings = train_distributed.env_settings(args)
    assert settings["twin_seeds"] == [3, 9] and settings["reconstructor"] == "idw"
