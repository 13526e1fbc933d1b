"""Environment speed: steps per second of one env and of vector envs, and where a step's time goes.

Run ``python -m benchmarks.environment`` (add ``--help`` for options). It builds the acquisition
environment on the (60, 60, 16, 128) twin with the GP reconstructor, steps a masked random policy
until ``--fraction`` (default 20 %) of all blocks are measured, then times

1. one environment on one CPU thread, with a breakdown of the step into the instrument replay,
   the reconstruction update, R^2, the observation (component maps, uncertainty) and the rest;
2. ``AsyncVectorEnv`` with 4 and 8 workers (one thread each), in env steps per second;
3. a straight-line fit of the algorithm's wall time per step (update and observation, not the
   privileged R^2) against the number of measured blocks: the calibration of
   ``CostModel.algorithm_base_s`` and ``algorithm_per_block_s``.

Numbers are for the machine it runs on; compare ratios within one run.
"""

from __future__ import annotations

import os

# One thread per process: on a few shared cores, intra-op threading of small tensor operations
# costs more than it gains, and vector-env workers would oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from envs.acquisition.env import AcquisitionEnv  # noqa: E402
from envs.acquisition.factory import EnvConfig, make_env  # noqa: E402


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return EnvConfig.for_data(
        "twin",
        0,
        args.grid,
        args.times,
        reconstructor=args.reconstructor,
        device=args.device,
        budget_fraction=1.0,
        planes=[p for p in args.planes.split(",") if p],
    ).to_kwargs()


def _make_env(kwargs: dict[str, Any]) -> gym.Env:
    torch.set_num_threads(1)
    return make_env(**kwargs)


def _timed(obj: Any, name: str, totals: dict[str, float]) -> None:
    """Replace ``obj.name`` by a wrapper that adds its wall time to ``totals[name]``."""
    method: Callable[..., Any] = getattr(obj, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*a, **k)
        finally:
            totals[name] += time.perf_counter() - start

    setattr(obj, name, wrapper)


def _warm_up(
    env: AcquisitionEnv, fraction: float, rng: np.random.Generator
) -> list[tuple[int, float]]:
    """Random masked steps until ``fraction`` of the blocks are measured; returns
    (blocks measured, algorithm wall seconds of the step) for the calibration fit."""
    totals: dict[str, float] = defaultdict(float)
    for name in ("add", "component_maps", "uncertainty"):
        _timed(env.reconstructor, name, totals)
    samples = []
    target = int(fraction * env.measured.size)
    while env.n_measurements < target:
        before = sum(totals.values())
        env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        samples.append((env.n_measurements, sum(totals.values()) - before))
    for name in ("add", "component_maps", "uncertainty"):
        delattr(env.reconstructor, name)  # back to the class methods
    return samples


def bench_single(args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of one env on one thread, with the per-part breakdown and the calibration."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    env = _make_env(_env_kwargs(args))
    env.reset(seed=0)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    samples = _warm_up(env, args.fraction, rng)
    warm_s = time.perf_counter() - start
    n, seconds = np.array(samples, dtype=np.float64).T
    slope, intercept = np.polyfit(n, seconds, 1)

    totals: dict[str, float] = defaultdict(float)
    _timed(env.instrument, "measure", totals)
    for name in ("add", "r2", "component_maps", "uncertainty"):
        _timed(env.reconstructor, name, totals)
    start = time.perf_counter()
    for _ in range(args.steps):
        env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    total = time.perf_counter() - start
    parts = {name: totals[name] / args.steps * 1e3 for name in totals}
    parts["rest (masks, policy choice, bookkeeping)"] = total / args.steps * 1e3 - sum(
        parts.values()
    )
    return {
        "shape": list(env.dataset.shape),
        "device": str(env.device),
        "build_and_reset_s": build_s,
        "warm_up_steps": len(samples),
        "warm_up_s": warm_s,
        "fraction_measured": env.n_measurements / env.measured.size,
        "steps_per_s": args.steps / total,
        "ms_per_step": parts,
        "algorithm_fit": {"base_s": float(intercept), "per_block_s": float(slope)},
    }


def bench_vector(args: argparse.Namespace, n_envs: int) -> dict[str, Any]:
    """Env steps/s of ``n_envs`` asynchronous workers (one thread each) after the warm-up."""
    factory = partial(_make_env, _env_kwargs(args))
    vec = gym.vector.AsyncVectorEnv([factory] * n_envs)
    try:
        start = time.perf_counter()
        _, info = vec.reset(seed=0)
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        n_blocks = info["action_mask"].shape[1]
        target = int(args.fraction * n_blocks)

        def step() -> dict[str, Any]:
            actions = [rng.choice(np.flatnonzero(m)) for m in info["action_mask"]]
            return vec.step(np.array(actions))[4]

        while int(info["n_measurements"].min()) < target:
            info = step()
        start = time.perf_counter()
        n_steps = max(1, args.steps // n_envs)
        for _ in range(n_steps):
            info = step()
        elapsed = time.perf_counter() - start
    finally:
        vec.close()
    return {
        "n_envs": n_envs,
        "build_and_reset_s": build_s,
        "env_steps_per_s": n_steps * n_envs / elapsed,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", type=int, default=60, help="twin grid side (default 60)")
    p.add_argument("--times", type=int, default=128, help="read-outs per pulse (default 128)")
    p.add_argument("--reconstructor", default="gp", help="reconstructor name (default gp)")
    p.add_argument("--device", default="auto", help="torch device; 'auto' picks CUDA when present")
    p.add_argument("--fraction", type=float, default=0.2, help="blocks measured before timing")
    p.add_argument("--steps", type=int, default=400, help="timed env steps (per benchmark)")
    p.add_argument("--vector", default="4,8", help="vector-env sizes, comma separated; '' skips")
    p.add_argument(
        "--planes",
        default="",
        help="comma-separated optional observation planes (surprise, energy, calibrated-energy)",
    )
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    print(f"cores visible: {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    single = bench_single(args)
    print(
        f"one env, twin {tuple(single['shape'])}, {args.reconstructor} on {single['device']}, "
        f"{single['fraction_measured']:.1%} measured: {single['steps_per_s']:.0f} steps/s "
        f"(build+reset {single['build_and_reset_s']:.1f} s, warm-up {single['warm_up_steps']} "
        f"steps in {single['warm_up_s']:.1f} s)"
    )
    for name, ms in sorted(single["ms_per_step"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42s} {ms:8.3f} ms/step")
    fit = single["algorithm_fit"]
    print(
        f"algorithm wall time per step ~ {fit['base_s'] * 1e3:.3f} ms + "
        f"{fit['per_block_s'] * 1e6:.3f} us x blocks measured (update + observation)"
    )
    results: dict[str, Any] = {"single": single, "vector": []}
    for size in [int(s) for s in args.vector.split(",") if s.strip()]:
        vector = bench_vector(args, size)
        results["vector"].append(vector)
        print(
            f"AsyncVectorEnv x{size}: {vector['env_steps_per_s']:.0f} env steps/s "
            f"(build+reset {vector['build_and_reset_s']:.1f} s)"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
