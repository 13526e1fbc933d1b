"""Train a MaskablePPO acquisition policy on synthetic twin samples.

Every training episode draws a new twin sample from the training seed range; held-out samples
(seeds from ``envs.data.sources.HELD_OUT_SEED_START`` = 100 000 on) are used only for the periodic
evaluation, one fixed sample per evaluation env. The policy is the fully convolutional score map of
:mod:`agents.ppo`, so the trained weights also run on other grid sizes (e.g. the full 60 x 60 grid
in ``evaluate.py``).

Examples
--------
    python train.py                                           # the default run (see README)
    python train.py --total-timesteps 20000 --out runs/smoke  # a quick check (3-11 min, 2 cores)
    python train.py --resume runs/ppo/checkpoints/ppo_40000_steps.zip --total-timesteps 200000
    tensorboard --logdir runs/ppo/tb

Outputs, in ``--out``: ``tb/`` (TensorBoard: episode return, accuracy at budget, seconds to the
target, entropy, losses, evaluation results), ``checkpoints/``, ``best/best_model.zip`` (best
evaluation return), and the final model (``--model``, default ``<out>/model.zip``) with its full
configuration as JSON beside it (``model.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from tqdm import tqdm

from agents import training
from agents.training import (  # noqa: F401  (re-exported: the names train.py always had)
    ENV_ID,
    ScaleReward,
    TrainArgs,
    env_kwargs,
    limit_threads,
    make_env,
    make_vec_env,
    new_model,
    probe_env,
    read_config,
)
from envs.acquisition.observation import ObservationSpec
from envs.data.sources import HELD_OUT_SEED_START
from reconstruct.base import resolve_device


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Command-line options, one per :class:`agents.training.TrainArgs` field; ``--config
    FILE.json`` reads a model's recorded settings (options on the command line override them)."""
    return training.parse_args(argv, prog="python train.py", doc=__doc__)


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


def train(args: TrainArgs) -> MaskablePPO:
    """Run (or resume) training as configured; return the trained model."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    # Before any worker process starts: they read the thread variables when they import torch.
    limit_threads(args.torch_threads)

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
