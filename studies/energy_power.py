"""Does this sample's reconstruction error follow its pixel energy? The fitted power, per episode.

Runs ``gp-calibrated-energy-per-second`` (:class:`agents.baselines.CalibratedEnergySurprisePolicy`)
on held-out twins or on a data file and prints, at the end of each episode, what it fitted: the
number of measured blocks with a covariate, the correlation and the plain least-squares slope of
their log surprise on their pixel's relative log energy, and the power the policy used last
(:func:`envs.acquisition.energy.energy_exponent`: the slope shrunk and clipped to [0, 1]). A power
near 1 says the error scales with the energy (the twin), near 0 that it does not (the real BE-PFM
file).

Examples
--------
    python -m studies.energy_power --seeds 5 --grid 16 --n-times 128
    python -m studies.energy_power --data runs/bepfm_32x32x100.npy
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def episode_power(env, seed: int) -> dict[str, float]:
    """Run one episode of the calibrated heuristic (decisions not charged); its fit at the end."""
    from agents.baselines import CalibratedEnergySurprisePolicy
    from agents.evaluation import run_episode
    from envs.acquisition.energy import energy_exponent

    policy = CalibratedEnergySurprisePolicy()
    trace = run_episode(env, policy, seed, charge_decisions="none")
    x, y = policy.tracker.covariate_records()
    correlation = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 else float("nan")
    return {
        "blocks": int(x.size),
        "correlation": correlation,
        "slope": policy.tracker.covariate_slope(0.0),
        "power": energy_exponent(policy.tracker),
        "final_r2": float(trace.r2[-1]),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from envs.acquisition.factory import EnvConfig, make_env
    from envs.data.sources import HELD_OUT_SEED_START

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="twin", help="'twin' or a data file the loader reads")
    parser.add_argument("--seeds", type=int, default=5, help="twin samples (a file: episodes)")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START + 100)
    parser.add_argument("--grid", type=int, default=16, help="twin grid, pixels a side")
    parser.add_argument("--n-times", type=int, default=128, help="twin read-outs per pulse")
    parser.add_argument("--blocks", type=int, default=4, help="voltage blocks")
    parser.add_argument("--stop-r2", type=float, default=0.95, help="end episodes at this R^2")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    powers = []
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        config = EnvConfig.for_data(
            args.data, seed, args.grid, args.n_times, n_blocks=args.blocks, budget_fraction=1.0,
            stop_r2=args.stop_r2 or None,
        )  # fmt: skip
        try:
            env = make_env(config)
        except (ValueError, OSError) as err:  # DataError is a ValueError: bad file, blocks
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not powers:  # the header once the data have opened
            header = ("episode", "blocks", "corr", "slope", "power", "R^2")
            print(" ".join(f"{h:>{w}s}" for h, w in zip(header, (10, 7, 6, 6, 6, 6), strict=True)))
        fit = episode_power(env, seed)
        env.close()
        powers.append(fit["power"])
        print(
            f"{seed:10d} {fit['blocks']:7d} {fit['correlation']:6.2f} {fit['slope']:6.2f} "
            f"{fit['power']:6.2f} {fit['final_r2']:6.3f}"
        )
        if args.data != "twin":
            break  # one file, one deterministic episode
    print(f"power: mean {np.mean(powers):.2f}, range {min(powers):.2f}-{max(powers):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
