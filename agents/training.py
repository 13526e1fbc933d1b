"""The settings of a MaskablePPO training run, and what builds its envs and its model.

Library code shared by the program ``train.py`` (which adds the main loop and its logging
callbacks) and the studies that train or evaluate in the same setting
(``studies.action_values``, ``studies.ppo_compare``): :class:`TrainArgs` (every setting, one
command-line option each, in :mod:`envs.command_line`'s style), :func:`parse_args` and
:func:`read_config` (a model's recorded settings back), :func:`env_kwargs` (the JSON-safe env
settings of a twin seed or seed range), the vector env factory and :func:`new_model`.

Threads: :func:`limit_threads` sets one BLAS/OpenMP thread per process by default
(``TrainArgs.torch_threads`` = 1). Several envs and a learner on a few cores otherwise
oversubscribe them: on 2 cores the default run went from 8 to about 50 env steps per second
(docs/training.md has the measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.channel_policy import ChannelScoreMapPolicy, action_channels
from agents.ppo import ScoreMapPolicy, travel_pixels_of
from envs import ENV_ID  # importing envs registers the acquisition envs (also in workers)
from envs.acquisition.factory import EnvConfig
from envs.acquisition.observation import ObservationSpec
from envs.acquisition.programs import programs_option
from envs.command_line import add_options, option, program_parser
from envs.data.sources import HELD_OUT_SEED_START
from envs.instruments.memory import memory_option

#: Environment variables that size the BLAS / OpenMP thread pools of numpy and torch; a worker
#: process reads them when it starts, so they are set before any worker is started.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """One thread pool size for this process and every process it starts from now on.

    ``threads`` >= 1 sets torch's intra-op threads here and the BLAS/OpenMP variables
    (:data:`THREAD_VARIABLES`) that worker processes (a subprocess vector env) read when they
    import numpy and torch; 0 leaves both at their defaults (torch: one thread per core).
    """
    if threads < 1:
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


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
    memory: str = memory_option()
    programs: str = programs_option()
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
    torch_threads: int = option(
        1,
        "torch and BLAS threads in the learner and in each worker process (0: the libraries' "
        "defaults, one per core, much slower on a few cores: docs/training.md)",
    )
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
        if self.torch_threads < 0:
            problems.append(f"torch_threads must be >= 0, got {self.torch_threads}")
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


def parse_args(
    argv: Sequence[str] | None = None, *, prog: str = "python train.py", doc: str | None = None
) -> TrainArgs:
    """Command-line options, one per :class:`TrainArgs` field (``--total-timesteps`` etc.).

    ``--config FILE.json`` reads settings from a JSON object of :class:`TrainArgs` fields (as
    the ``"args"`` of a model's JSON record, which a run writes beside its model); options on
    the command line override it. ``prog`` and ``doc`` (the program's docstring) make
    ``--help``; a bad value is a ``ValueError`` naming the option.
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config", default="")
    known, rest = config_parser.parse_known_args(argv)
    defaults = {}
    if known.config:
        defaults.update(read_config(known.config))
    parser = program_parser(prog, doc)
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
    """JSON-safe settings of the acquisition env (:class:`envs.acquisition.factory.EnvConfig`)
    for a twin seed or seed range."""
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
        memory=args.memory,
        programs=args.programs,
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
