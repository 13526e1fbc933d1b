"""Memory and per-step time of the acquisition env on large grids (one thread).

``OMP_NUM_THREADS=1 python -m benchmarks.large_grids --grid 128`` builds the default env on a
128 x 128 twin (grids above 4096 pixels use the tiled GP), resets it, takes ``--steps`` seeded
random valid actions and prints one JSON line: build-and-reset seconds, the median and largest
step time, the peak resident memory of the process and the final R^2. ``--data FILE --blocks N``
does the same on a file. Run one case per process, so that the peak memory is that case's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from envs.acquisition.factory import EnvConfig, make_env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_grids", description=__doc__)
    parser.add_argument("--data", default="twin", help="data spec: twin, twin:SEED or a file")
    parser.add_argument("--grid", type=int, default=65, help="twin grid, pixels a side")
    parser.add_argument("--blocks", type=int, default=4, help="voltage blocks")
    parser.add_argument("--steps", type=int, default=20, help="timed env steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    env = make_env(EnvConfig.for_data(args.data, 0, args.grid, n_blocks=args.blocks, device="cpu"))
    _, info = env.reset(seed=0)
    reset_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    step_seconds = []
    for _ in range(args.steps):
        action = int(rng.choice(np.flatnonzero(env.action_masks())))
        tick = time.perf_counter()
        _, _, terminated, _, info = env.step(action)
        step_seconds.append(time.perf_counter() - tick)
        if terminated:
            break
    result = {
        "shape": list(env.dataset.shape),
        "n_blocks": env.n_blocks,
        "build_and_reset_s": round(reset_seconds, 2),
        "steps": len(step_seconds),
        "step_ms_median": round(1e3 * float(np.median(step_seconds)), 1),
        "step_ms_max": round(1e3 * max(step_seconds), 1),
        # ru_maxrss is in KiB on Linux
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "r2": round(float(info["r2"]), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
