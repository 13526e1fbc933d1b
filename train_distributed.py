"""Train a masked PPO acquisition policy with Ray RLlib, on this machine or on a Ray cluster.

Needs the ``distributed`` extra (``pip install -e '.[distributed]'``; with ``test`` for its
tests: ``pip install -e '.[distributed,test]'``). Sampling runs in
``--env-runners`` Ray actors (one CPU each), each stepping ``--envs-per-runner`` acquisition
envs built from the same JSON-safe settings as ``train.py``'s
(:func:`envs.acquisition.factory.make_env`);
the network is :class:`agents.rllib.MaskedScoreMapModule`, which never samples a masked-out
action. Each iteration prints its mean episode return; the final checkpoint (an RLlib algorithm
checkpoint: restore with ``Algorithm.from_checkpoint`` or
:func:`agents.rllib.module_from_checkpoint`) and ``history.json`` go to ``--out``;
``python evaluate.py --agents rllib:OUT/checkpoint`` (or ``ppo:OUT/checkpoint``) evaluates the
trained policy (docs/training.md has a run that learns on 2 cores, and its evaluation).

Example
-------
On a cluster (``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others,
the project's dependencies installed on each), from the repository root of the head node::

    python train_distributed.py --address auto --env-runners 8 --iterations 50 --out runs/rllib

Recent Ray versions (2.60 here) start a cluster with token authentication: nodes and driver need
the cluster's token (``~/.ray/auth_token`` or ``$RAY_AUTH_TOKEN``) and ``RAY_AUTH_MODE=token``
in their environment, or a driver fails with "Failed to connect to Ray cluster".

Leave out ``--address`` to start a local Ray instance instead; a quick check on a small twin::

    python train_distributed.py --iterations 2 --env-runners 2 --grid 8 --n-times 8 \\
        --reconstructor idw --train-batch-size 256 --out runs/rllib-smoke
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.acquisition.factory import EnvConfig
from envs.command_line import add_options, fail, option, program_parser, settings_from
from envs.data.sources import HELD_OUT_SEED_START

PROG = "python train_distributed.py"


@dataclass
class DistributedArgs:
    """Every setting of an RLlib training run; ``--help`` lists them with their defaults."""

    # Ray
    address: str | None = option(
        None,
        "Ray cluster to join ('auto', 'HOST:6379' or 'ray://HOST:10001'); default: start a "
        "local instance",
    )
    num_cpus: int | None = option(
        None, "CPUs of a local instance (default: all); ignored with --address"
    )
    env_runners: int = option(2, "remote sampling workers (0: sample in this process)")
    envs_per_runner: int = option(1, "envs per env runner")
    learners: int = option(0, "remote learner workers (0: learn in this process)")
    # the environment (as in train.py)
    grid: int = option(16, "twin grid size (pixels a side)")
    n_times: int = option(32, "read-outs per pulse (0: the twin's default, 128)")
    blocks: int = option(4, "voltage blocks per pixel")
    reconstructor: str = option("gp", "reconstructor name")
    budget_fraction: float = option(0.3, "budget as a fraction of a raster")
    train_seeds: list[int] = option(
        [0, HELD_OUT_SEED_START],
        "twin seed range [START, END) drawn from at each reset; END at most "
        f"{HELD_OUT_SEED_START} (held-out seeds)",
        metavar="START,END",
    )
    env_settings: dict = option(
        {},
        "JSON object of further envs.acquisition.factory.EnvConfig settings (override the "
        "above; default: none)",
        metavar="JSON",
    )
    # PPO
    iterations: int = option(20, "training iterations")
    train_batch_size: int = option(2048, "env steps per iteration (per learner)")
    minibatch_size: int = option(256, "SGD minibatch")
    epochs: int = option(4, "passes over each batch")
    lr: float = option(3e-4, "Adam learning rate")
    gamma: float = option(1.0, "discount")
    entropy_coeff: float = option(0.01, "entropy bonus")
    channels: int = option(32, "network feature width")
    seed: int = option(0, "seed of envs and network")
    out: str = option("runs/rllib", "folder for checkpoint and history")

    def __post_init__(self) -> None:
        if len(self.train_seeds) != 2:
            raise ValueError(f"--train-seeds takes START,END, got {self.train_seeds}")
        start, end = self.train_seeds
        if end > HELD_OUT_SEED_START:
            raise ValueError(
                f"--train-seeds must end at or below {HELD_OUT_SEED_START} (held-out seeds)"
            )
        if start >= end:
            raise ValueError(f"--train-seeds: empty range [{start}, {end})")
        for name in ("grid", "blocks", "envs_per_runner", "iterations",
                     "train_batch_size", "minibatch_size", "epochs", "channels"):  # fmt: skip
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        for name in ("env_runners", "learners", "n_times"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"--budget-fraction must be in (0, 1], got {self.budget_fraction}")
        try:
            env_settings(self)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--env-settings: {err}") from None


def parse_args(argv: Sequence[str] | None = None) -> DistributedArgs:
    """The settings from the command line; a bad value is a ``ValueError`` naming the option."""
    parser = program_parser(PROG, __doc__)
    add_options(parser, DistributedArgs)
    return settings_from(DistributedArgs, parser.parse_args(argv))


def env_settings(args: DistributedArgs) -> dict[str, Any]:
    """JSON-safe env settings from the command line."""
    config = EnvConfig.for_data(
        "twin",
        twin_seeds=list(args.train_seeds),
        grid=args.grid,
        n_times=args.n_times,
        n_blocks=args.blocks,
        reconstructor=args.reconstructor,
        budget_fraction=args.budget_fraction,
        device="cpu",  # env runners are CPU actors
    )
    return config.replace(**args.env_settings).to_kwargs()


def iteration_summary(iteration: int, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The numbers worth a line per iteration, from an RLlib result dict."""
    from agents.rllib import CHECKED_ACTIONS_METRIC, INVALID_ACTIONS_METRIC

    runners = result.get("env_runners", {})

    def number(key: str) -> float | None:
        value = runners.get(key)
        return None if value is None else float(value)

    return {
        "iteration": iteration,
        "episode_return_mean": number("episode_return_mean"),
        "episodes": number("num_episodes_lifetime"),
        "env_steps": number("num_env_steps_sampled_lifetime"),
        "invalid_actions": number(INVALID_ACTIONS_METRIC),
        "actions_checked": number(CHECKED_ACTIONS_METRIC),
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:  # one line naming the option, exit status 2
        fail(PROG, str(err))
    # One BLAS/OpenMP thread in the driver too (the learner), as in every env runner.
    from agents.training import limit_threads

    limit_threads(1)
    try:
        from agents.rllib import init_ray, ppo_config, save_checkpoint
    except ImportError as err:
        fail(PROG, str(err), status=1)

    settings = env_settings(args)
    init_ray(args.address, num_cpus=args.num_cpus)
    config = ppo_config(
        settings,
        num_env_runners=args.env_runners,
        num_envs_per_env_runner=args.envs_per_runner,
        num_learners=args.learners,
        train_batch_size=args.train_batch_size,
        minibatch_size=args.minibatch_size,
        num_epochs=args.epochs,
        lr=args.lr,
        gamma=args.gamma,
        entropy_coeff=args.entropy_coeff,
        channels=args.channels,
        seed=args.seed,
    )
    algorithm = config.build_algo()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    history = []
    try:
        for iteration in range(1, args.iterations + 1):
            start = time.perf_counter()
            result = algorithm.train()
            summary = iteration_summary(iteration, result, time.perf_counter() - start)
            history.append(summary)
            ret = summary["episode_return_mean"]
            print(
                f"iteration {iteration}/{args.iterations}: "
                f"return {'n/a' if ret is None else f'{ret:.4f}'}, "
                f"episodes {summary['episodes'] or 0:.0f}, "
                f"env steps {summary['env_steps'] or 0:.0f}, "
                f"invalid actions {summary['invalid_actions'] or 0:.0f}, "
                f"{summary['seconds']:.1f} s",
                flush=True,
            )
        checkpoint = save_checkpoint(algorithm, out / "checkpoint", settings)
    finally:
        algorithm.stop()
    (out / "history.json").write_text(
        json.dumps(
            {"env_settings": settings, "args": dataclasses.asdict(args), "history": history},
            indent=2,
        )
    )
    print(f"checkpoint: {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
