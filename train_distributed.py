"""Train a masked PPO acquisition policy with Ray RLlib, on this machine or on a Ray cluster.

Needs the ``distributed`` extra (``pip install '.[distributed]'``). Sampling runs in
``--env-runners`` Ray actors (one CPU each), each stepping ``--envs-per-runner`` acquisition
envs built from the same JSON-safe settings as ``train.py``'s
(:func:`envs.acquisition.factory.make_env`);
the network is :class:`agents.rllib.MaskedScoreMapModule`, which never samples a masked-out
action. Each iteration prints its mean episode return; the final checkpoint (an RLlib algorithm
checkpoint: restore with ``Algorithm.from_checkpoint`` or
:func:`agents.rllib.module_from_checkpoint`) and ``history.json`` go to ``--out``.

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

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from envs.acquisition.factory import EnvConfig
from envs.data.sources import HELD_OUT_SEED_START


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument(
        "--address", default=None,
        help="Ray cluster to join ('auto', 'HOST:6379' or 'ray://HOST:10001'); default: start "
        "a local instance",
    )
    ray_group.add_argument(
        "--num-cpus", type=int, default=None,
        help="CPUs of a local instance (default: all); ignored with --address",
    )
    ray_group.add_argument(
        "--env-runners", type=int, default=2,
        help="remote sampling workers (0: sample in this process)",
    )
    ray_group.add_argument("--envs-per-runner", type=int, default=1, help="envs per env runner")
    ray_group.add_argument(
        "--learners", type=int, default=0, help="remote learner workers (0: learn in this process)"
    )

    env_group = parser.add_argument_group("environment (as in train.py)")
    env_group.add_argument("--grid", type=int, default=16, help="twin grid size (pixels a side)")
    env_group.add_argument("--n-times", type=int, default=32, help="read-outs per pulse")
    env_group.add_argument("--blocks", type=int, default=4, help="voltage blocks per pixel")
    env_group.add_argument("--reconstructor", default="gp", help="reconstructor name")
    env_group.add_argument(
        "--budget-fraction", type=float, default=0.3, help="budget as a fraction of a raster"
    )
    env_group.add_argument(
        "--train-seeds", type=int, nargs=2, default=[0, HELD_OUT_SEED_START],
        metavar=("START", "END"), help="twin seed range [START, END) drawn from at each reset",
    )
    env_group.add_argument(
        "--env-settings", default="{}",
        help="JSON object of further envs.acquisition.factory.EnvConfig settings (override the "
        "above)",
    )

    ppo_group = parser.add_argument_group("PPO")
    ppo_group.add_argument("--iterations", type=int, default=20, help="training iterations")
    ppo_group.add_argument(
        "--train-batch-size", type=int, default=2048, help="env steps per iteration (per learner)"
    )
    ppo_group.add_argument("--minibatch-size", type=int, default=256, help="SGD minibatch")
    ppo_group.add_argument("--epochs", type=int, default=4, help="passes over each batch")
    ppo_group.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    ppo_group.add_argument("--gamma", type=float, default=1.0, help="discount")
    ppo_group.add_argument("--entropy-coeff", type=float, default=0.01, help="entropy bonus")
    ppo_group.add_argument("--channels", type=int, default=32, help="network feature width")
    ppo_group.add_argument("--seed", type=int, default=0, help="seed of envs and network")
    parser.add_argument("--out", default="runs/rllib", help="folder for checkpoint and history")
    args = parser.parse_args(argv)
    if args.train_seeds[1] > HELD_OUT_SEED_START:
        parser.error(f"--train-seeds must end at or below {HELD_OUT_SEED_START} (held-out seeds)")
    return args


def env_settings(args: argparse.Namespace) -> dict[str, Any]:
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
    return config.replace(**json.loads(args.env_settings)).to_kwargs()


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One BLAS/OpenMP thread in the driver too (the learner): set before torch starts its pool.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from agents.rllib import init_ray, ppo_config

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
        checkpoint = algorithm.save_to_path(str(out / "checkpoint"))
    finally:
        algorithm.stop()
    (out / "history.json").write_text(
        json.dumps({"env_settings": settings, "args": vars(args), "history": history}, indent=2)
    )
    print(f"checkpoint: {checkpoint}")


if __name__ == "__main__":
    main()
