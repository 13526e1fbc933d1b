"""Train a MaskablePPO acquisition policy on synthetic twin samples.

Every training episode draws a new twin sample from the training seed range; held-out samples
(seeds from ``envs.data.sources.HELD_OUT_SEED_START`` = 100 000 on) are used only for the periodic
evaluation, one fixed sample per evaluation env. The policy is the fully convolutional score map of
:mod:`agents.ppo`, so the trained weights also run on other grid sizes (e.g. the full 60 x 60 grid
in ``evaluate.py``).

Examples
--------
    python train.py                                           # the default run (see README)
    python train.py --total-timesteps 20000 --out runs/smoke  # a quick check
    python train.py --resume runs/ppo/checkpoints/ppo_40000_steps.zip --total-timesteps 200000
    tensorboard --logdir runs/ppo/tb

Outputs, in ``--out``: ``tb/`` (TensorBoard: episode return, accuracy at budget, seconds to the
target, entropy, losses, evaluation results), ``checkpoints/``, ``best/best_model.zip`` (best
evaluation return), and the final model (``--model``, default ``<out>/model.zip``) with its full
configuration as JSON beside it (``model.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from tqdm import tqdm

from agents.channel_policy import ChannelScoreMapPolicy, action_channels
from agents.ppo import ScoreMapPolicy, travel_pixels_of
from envs import ENV_ID  # importing envs registers the acquisition envs (also in workers)
from envs.acquisition.factory import EnvConfig
from envs.acquisition.observation import ObservationSpec
from envs.command_line import add_options, option, program_parser
from envs.data.sources import HELD_OUT_SEED_START
from reconstruct.base import resolve_device


@dataclass
class TrainArgs:
    """Every setting of a training run; ``--help`` lists them with their meaning."""

    # where things go
    out: str = option("runs/ppo", "run folder: TensorBoard logs, checkpoints, best model")
    model: str = option(
        "", "final model path (.zip); its config goes beside it as .json; default <out>/model.zip"
    )
    resume: str = option(
        "",
        "checkpoint .zip to continue from (keeps its step count; --total-timesteps is the "
        "total including the steps already done)",
    )
    # the environment
    env_id: str = option(ENV_ID, "registered Gymnasium id of the acquisition env")
    grid: int = option(16, "twin grid size (pixels a side) used for training")
    n_times: int = option(
        32, "read-out times per pulse in the training twin (0: the twin's default)"
    )
    blocks: int = option(4, "voltage blocks per pixel (sizes differ by one when uneven)")
    read_windows: str = option(
        "",
        "comma-separated reads per read window, ascending, the last the whole curve (e.g. "
        "8,32); empty: whole curves only. Train --policy channels with windows: the other "
        "policy's weights fit one action per block",
    )
    reconstructor: str = option("gp", "reconstructor name (gp, lowrank, linear, ...)")
    budget_fraction: float = option(0.3, "episode budget as a fraction of the full-raster seconds")
    stop_r2: float = option(
        0.0,
        "end an episode once R^2 reaches this (as evaluate.py's --stop-at does; 0: run to the "
        "budget)",
    )
    reward: str = option(
        "auc", "'auc' (gain x remaining budget; return = normalised AUC) or 'rate'"
    )
    train_seed_start: int = option(0, "first twin seed of the training range")
    train_seed_end: int = option(
        HELD_OUT_SEED_START,
        "end (exclusive) of the training twin seed range; "
        f"must not exceed {HELD_OUT_SEED_START} (held-out seeds)",
    )
    # the algorithm
    total_timesteps: int = option(150_000, "env steps to train for (all envs together)")
    n_envs: int = option(0, "parallel training envs (0: one per CPU core)")
    vec_env: str = option(
        "subproc", "'subproc' (one process per env, OMP_NUM_THREADS=1 each) or 'dummy'"
    )
    seed: int = option(0, "seed of the network initialisation, sampling and training env draws")
    device: str = option(
        "auto", "torch device for the network: auto (CUDA when present), cpu, cuda"
    )
    torch_threads: int = option(0, "torch threads in the learner process (0: torch's default)")
    learning_rate: float = option(1e-4, "Adam learning rate")
    n_steps: int = option(1024, "steps per env per rollout")
    batch_size: int = option(256, "minibatch size")
    n_epochs: int = option(4, "passes over each rollout")
    gamma: float = option(1.0, "discount; 1.0 keeps the return equal to the normalised AUC")
    gae_lambda: float = option(0.95, "GAE lambda")
    clip_range: float = option(0.2, "PPO clip range")
    ent_coef: float = option(0.0, "entropy bonus coefficient")
    vf_coef: float = option(0.5, "value loss coefficient")
    max_grad_norm: float = option(0.5, "gradient clipping norm")
    reward_scale: float = option(
        3.0, "rewards are multiplied by this while training (AUC rewards are tiny)"
    )
    heuristic_prior: bool = option(
        True,
        "start the actor as gp-uncertainty-per-second (log-uncertainty and travel prior planes)",
    )
    temperature: float = option(
        0.05, "softmax temperature of the heuristic start (smaller: closer to greedy)"
    )
    scaled_head: bool = option(
        False,
        "divide the actor head's output by the temperature (weights in log-score units) instead "
        "of folding 1/temperature into its weights",
    )
    planes: str = option(
        "surprise,calibrated-energy",
        "comma-separated optional observation planes "
        "(envs.acquisition.observation.OPTIONAL_PLANES: surprise, energy, calibrated-energy; "
        "empty for none); with the heuristic prior the "
        "actor starts as the heuristic that reads the same planes",
    )
    policy: str = option(
        "score-map",
        "network: 'score-map' (one logit per pixel and block from one layer: the weights fit "
        "one block count) or 'channels' (weights shared over blocks and action channels: one "
        "model for any block count, agents.channel_policy)",
    )
    channels: int = option(16, "feature channels of the convolutional score map")
    block_features: int = option(8, "features of the shared block encoder (--policy channels)")
    head_hidden: int = option(16, "hidden units of the shared per-channel head (--policy channels)")
    dilations: str = option("1,2,4,8", "comma-separated dilations of the residual conv blocks")
    # evaluation, checkpoints, progress
    eval_seeds: int = option(
        6, f"held-out twin samples (seeds {HELD_OUT_SEED_START}, ...) per evaluation"
    )
    eval_freq: int = option(20_000, "env steps between evaluations (0: never)")
    checkpoint_freq: int = option(20_000, "env steps between checkpoints (0: never)")
    target_r2: float = option(0.90, "accuracy whose time to reach is logged")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        problems = []
        if self.train_seed_end > HELD_OUT_SEED_START:
            problems.append(
                f"train_seed_end {self.train_seed_end} reaches into the held-out seeds "
                f"(>= {HELD_OUT_SEED_START})"
            )
        if self.train_seed_start >= self.train_seed_end:
            problems.append(
                f"empty training seed range [{self.train_seed_start}, {self.train_seed_end})"
            )
        if self.vec_env not in ("subproc", "dummy"):
            problems.append(f"vec_env must be 'subproc' or 'dummy', got {self.vec_env!r}")
        if self.n_envs == 0:  # recorded as the number it became, so a run's record is exact
            self.n_envs = os.cpu_count() or 1
        for name in (
            "grid",
            "blocks",
            "total_timesteps",
            "n_envs",
            "n_steps",
            "batch_size",
            "n_epochs",
            "channels",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            ObservationSpec(self.blocks, optional=self.plane_names())
        except ValueError as err:
            problems.append(f"planes: {err}")
        try:
            windows = self.window_reads()
        except ValueError:
            problems.append(
                f"read_windows must be comma-separated integers, got {self.read_windows!r}"
            )
        else:
            if windows and self.policy != "channels":
                problems.append("read windows need --policy channels")
        if not 0.0 <= self.stop_r2 < 1.0:
            problems.append(f"stop_r2 must be in [0, 1), got {self.stop_r2}")
        if not 0.0 < self.budget_fraction <= 1.0:
            problems.append(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        try:
            self.dilation_tuple()
        except ValueError:
            problems.append(
                f"dilations must be comma-separated positive integers, got {self.dilations!r}"
            )
        if problems:
            raise ValueError("invalid training arguments: " + "; ".join(problems))

    def window_reads(self) -> list[int] | None:
        reads = [int(r) for r in self.read_windows.split(",") if r.strip()]
        return reads or None

    def plane_names(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.planes.split(",") if p.strip())

    def dilation_tuple(self) -> tuple[int, ...]:
        values = tuple(int(d) for d in self.dilations.split(",") if d.strip())
        if not values or min(values) < 1:
            raise ValueError(self.dilations)
        return values

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model else Path(self.out) / "model.zip"


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Command-line options, one per :class:`TrainArgs` field (``--total-timesteps`` etc.).

    ``--config FILE.json`` reads settings from a JSON object of :class:`TrainArgs` fields (as
    the ``"args"`` of a model's JSON record, which a run writes beside its model); options on
    the command line override it.
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config", default="")
    known, rest = config_parser.parse_known_args(argv)
    defaults = {}
    if known.config:
        defaults.update(read_config(known.config))
    parser = program_parser("python train.py", __doc__)
    parser.add_argument(
        "--config", default="", help="JSON file of settings (command-line options override it)"
    )
    add_options(parser, TrainArgs, defaults=defaults)
    options = vars(parser.parse_args([*rest, "--config", known.config]))
    options.pop("config")
    return TrainArgs(**options)


def read_config(path: str) -> dict[str, Any]:
    """Settings from a JSON file: a :class:`TrainArgs` object, or a model's record with one
    under ``"args"``; unknown names are an error that lists them."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the config {path}: {err}") from None
    settings = record.get("args", record) if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} holds no JSON object of training settings")
    settings = dict(settings)
    if "planes" not in settings and "surprise_plane" in settings:
        # Records written when the optional planes were three flags.
        surprise, energy = settings.pop("surprise_plane"), settings.pop("energy_plane", False)
        calibrated = settings.pop("calibrate_energy", False) and energy and surprise
        planes = ["surprise"] * bool(surprise)
        planes += ["calibrated-energy" if calibrated else "energy"] * bool(energy)
        settings["planes"] = ",".join(planes)
    known = {f.name for f in dataclasses.fields(TrainArgs)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    return settings


# --------------------------------------------------------------------------- environments
def env_kwargs(args: TrainArgs, twin_seeds: int | list[int]) -> dict[str, Any]:
    """JSON-safe settings of the acquisition env (:class:`envs.acquisition.factory.EnvConfig`) for
    a twin
    seed or seed range."""
    config = EnvConfig.for_data(
        "twin",
        twin_seeds,
        grid=args.grid,
        n_times=args.n_times,
        reconstructor=args.reconstructor,
        n_blocks=args.blocks,
        budget_fraction=args.budget_fraction,
        reward=args.reward,
        stop_r2=args.stop_r2 or None,
        planes=list(args.plane_names()),
        read_windows=args.window_reads(),
    )
    return config.to_kwargs()


class ScaleReward(gym.RewardWrapper):
    """Multiplies rewards by a constant (PPO's value loss prefers returns well above 0.01)."""

    def __init__(self, env: gym.Env, scale: float) -> None:
        super().__init__(env)
        self.scale = float(scale)

    def reward(self, reward: float) -> float:
        return float(reward) * self.scale


def make_env(
    env_id: str, kwargs: dict[str, Any], reward_scale: float = 1.0, worker: bool = False
) -> Callable[[], gym.Env]:
    """A factory for one monitored env. In a worker process (``worker=True``: a subprocess
    vector env) it first limits torch to one thread, since several workers on a few cores
    otherwise oversubscribe them; in the learner's own process (a ``DummyVecEnv``) it leaves
    the thread count alone, which ``--torch-threads`` sets. The monitor sits inside the reward
    scaling, so logged episode returns stay in the env's own units (normalised AUC)."""

    def thunk() -> gym.Env:
        if worker:
            os.environ["OMP_NUM_THREADS"] = "1"
            torch.set_num_threads(1)
        env = Monitor(gym.make(env_id, **kwargs))
        return ScaleReward(env, reward_scale) if reward_scale != 1.0 else env

    return thunk


def probe_env(args: TrainArgs) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """What the score map needs from the training env, right after the initial design: the
    pixel pitches of tip travel that cost as much as one block measured at the tip (the ``d0``
    of the travel prior, from the env's cost model), the observation spec, and the action
    channels (:func:`agents.channel_policy.action_channels`, for ``--policy channels``)."""
    env = gym.make(args.env_id, **env_kwargs(args, args.train_seed_start))
    env.reset(seed=args.seed)
    pixels = travel_pixels_of(env)
    spec = env.unwrapped.observation_spec.to_dict()
    channels = action_channels(env).to_dict()
    env.close()
    return pixels, spec, channels



def make_vec_env(
    env_id: str, settings: list[dict[str, Any]], kind: str, reward_scale: float = 1.0
) -> VecEnv:
    """Subprocess or in-process vector env of one monitored env per entry of ``settings``."""
    workers = kind == "subproc" and len(settings) > 1
    factories = [make_env(env_id, kwargs, reward_scale, worker=workers) for kwargs in settings]
    return SubprocVecEnv(factories) if workers else DummyVecEnv(factories)


# --------------------------------------------------------------------------- logging callbacks
class EpisodeTracker:
    """Per-env bookkeeping of the accuracy trace: seconds at which ``target`` was first reached."""

    def __init__(self, n_envs: int, target: float) -> None:
        self.target = target
        self.reached_at = [math.nan] * n_envs

    def step(self, index: int, info: dict[str, Any], done: bool) -> tuple[float, float] | None:
        """Feed one env's step; at episode end return ``(final R^2, seconds to target or NaN)``."""
        if "r2" in info and math.isnan(self.reached_at[index]) and info["r2"] >= self.target:
            self.reached_at[index] = float(info["seconds"])
        if not done:
            return None
        result = (float(info.get("r2", math.nan)), self.reached_at[index])
        self.reached_at[index] = math.nan
        return result


def log_episode(logger: Any, prefix: str, result: tuple[float, float], target: float) -> None:
    """Record one finished episode's accuracy at budget and time to target (means per dump)."""
    r2, seconds = result
    logger.record_mean(f"{prefix}/r2_at_budget", r2)
    logger.record_mean(f"{prefix}/reached_{target:.2f}", float(not math.isnan(seconds)))
    if not math.isnan(seconds):
        logger.record_mean(f"{prefix}/seconds_to_{target:.2f}", seconds)


class AcquisitionMetricsCallback(BaseCallback):
    """Logs accuracy at budget and seconds to the target R^2 of training episodes."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.tracker: EpisodeTracker | None = None

    def _on_training_start(self) -> None:
        self.tracker = EpisodeTracker(self.training_env.num_envs, self.target)

    def _on_step(self) -> bool:
        steps = zip(self.locals["infos"], self.locals["dones"], strict=True)
        for index, (info, done) in enumerate(steps):
            result = self.tracker.step(index, info, bool(done))
            if result is not None:
                log_episode(self.logger, "rollout", result, self.target)
        return True


class AcquisitionEvalCallback(MaskableEvalCallback):
    """MaskableEvalCallback that also logs the held-out accuracy at budget and seconds to target."""

    def __init__(self, *args: Any, target: float = 0.90, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.tracker = EpisodeTracker(self.eval_env.num_envs, target)

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        result = self.tracker.step(locals_["i"], locals_["info"], bool(locals_["done"]))
        if result is not None:
            log_episode(self.logger, "eval", result, self.target)


class ProgressBarCallback(BaseCallback):
    """A tqdm bar over env steps (starts at the resumed step count)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(
            total=self.total, initial=self.model.num_timesteps, unit="step", dynamic_ncols=True
        )

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- the run
def write_config(args: TrainArgs, path: Path, extra: dict[str, Any]) -> Path:
    """Write the full configuration, seed and environment of a run as JSON beside the model."""
    record = {
        "args": dataclasses.asdict(args),
        "env_id": args.env_id,
        "train_env_kwargs": env_kwargs(args, [args.train_seed_start, args.train_seed_end]),
        "eval_seeds": [HELD_OUT_SEED_START, HELD_OUT_SEED_START + args.eval_seeds],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def new_model(
    args: TrainArgs,
    env: gym.Env | VecEnv,
    device: str | torch.device = "cpu",
    tensorboard_log: str | None = None,
) -> MaskablePPO:
    """An untrained MaskablePPO with the score-map policy as ``args`` configure it, on ``env``
    (the one place the model is built: training and supervised studies share it)."""
    travel, spec, channels = probe_env(args)
    shared = {
        "channels": args.channels,
        "dilations": args.dilation_tuple(),
        "heuristic_prior": args.heuristic_prior,
        "temperature": args.temperature,
        "scaled_head": args.scaled_head,
        "observation_spec": spec,
    }
    if args.policy == "score-map":
        policy, policy_kwargs = ScoreMapPolicy, {**shared, "travel_pixels": travel}
    elif args.policy == "channels":
        policy = ChannelScoreMapPolicy
        policy_kwargs = {
            **shared,
            "action_channels": channels,
            "block_features": args.block_features,
            "head_hidden": args.head_hidden,
        }
    else:
        raise ValueError(f"--policy must be 'score-map' or 'channels', got {args.policy!r}")
    return MaskablePPO(
        policy,
        env,
        learning_rate=args.learning_rate,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        clip_range=args.clip_range,
        ent_coef=args.ent_coef,
        vf_coef=args.vf_coef,
        max_grad_norm=args.max_grad_norm,
        policy_kwargs=policy_kwargs,
        tensorboard_log=tensorboard_log,
        seed=args.seed,
        device=device,
    )


def train(args: TrainArgs) -> MaskablePPO:
    """Run (or resume) training as configured; return the trained model."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    train_range = [args.train_seed_start, args.train_seed_end]
    train_env = make_vec_env(
        args.env_id, [env_kwargs(args, train_range)] * args.n_envs, args.vec_env, args.reward_scale
    )
    if args.resume:
        saved = MaskablePPO.load(args.resume, device=device)
        wanted = ObservationSpec(args.blocks, optional=args.plane_names())
        difference = saved.policy.observation_spec.mismatch(wanted)
        if difference:
            raise ValueError(
                f"{args.resume} was trained on {saved.policy.observation_spec.describe()}, not "
                f"on what these options give ({difference}): resume it with --planes "
                f"{','.join(saved.policy.observation_spec.optional)}"
            )
        model = MaskablePPO.load(
            args.resume, env=train_env, device=device, tensorboard_log=str(out / "tb")
        )
    else:
        model = new_model(args, train_env, device=device, tensorboard_log=str(out / "tb"))
    # A resumed run draws fresh training samples rather than replaying the first ones.
    train_env.seed(args.seed + model.num_timesteps)
    remaining = args.total_timesteps - model.num_timesteps
    if remaining <= 0:
        raise ValueError(
            f"the checkpoint already has {model.num_timesteps} steps >= --total-timesteps "
            f"{args.total_timesteps}: ask for more"
        )

    callbacks: list[BaseCallback] = [AcquisitionMetricsCallback(args.target_r2)]
    if args.checkpoint_freq:
        callbacks.append(
            CheckpointCallback(
                max(args.checkpoint_freq // args.n_envs, 1),
                str(out / "checkpoints"),
                name_prefix="ppo",
            )
        )
    if args.eval_freq and args.eval_seeds:
        eval_env = make_vec_env(
            args.env_id,
            [env_kwargs(args, HELD_OUT_SEED_START + i) for i in range(args.eval_seeds)],
            args.vec_env,
        )
        callbacks.append(
            AcquisitionEvalCallback(
                eval_env,
                n_eval_episodes=args.eval_seeds,
                eval_freq=max(args.eval_freq // args.n_envs, 1),
                best_model_save_path=str(out / "best"),
                log_path=str(out / "eval"),
                deterministic=True,
                target=args.target_r2,
            )
        )
    if args.progress:
        callbacks.append(ProgressBarCallback(args.total_timesteps))

    start = time.perf_counter()
    model.learn(
        remaining,
        callback=CallbackList(callbacks),
        tb_log_name="ppo",
        reset_num_timesteps=not args.resume,
    )
    seconds = time.perf_counter() - start
    model.save(args.model_path)
    write_config(
        args,
        args.model_path.with_suffix(".json"),
        {
            "device": str(device),
            "num_timesteps": int(model.num_timesteps),
            "train_seconds": round(seconds, 1),
            "steps_per_second": round(remaining / seconds, 1),
            "parameters": int(sum(p.numel() for p in model.policy.parameters())),
        },
    )
    train_env.close()
    if args.eval_freq and args.eval_seeds:
        eval_env.close()
    return model


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:  # a bad option or config: one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = train(args)
    print(
        f"trained {model.num_timesteps} steps; model at {args.model_path}, config at "
        f"{args.model_path.with_suffix('.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
