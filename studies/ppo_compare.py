"""Paired comparison of PPO models against a heuristic on fixed held-out twin seeds.

Runs each policy on the same held-out twin samples in the *training* environment of ``train.py``
(its grid, read-outs, blocks, reconstructor and budget; decisions not charged, so every episode is
deterministic) and prints, per policy, the mean normalised AUC and R^2 at the budget, and the
paired difference to the reference policy with its 95 % t-interval and the number of seeds on
which the policy is better. Paired differences on the same samples separate policies that
per-policy intervals cannot (the samples differ far more from each other than the policies do).
Several comma-separated references give one table per reference from the same episodes.

Examples
--------
    python -m studies.ppo_compare runs/diag_a/model.zip runs/diag_b/model.zip
    python -m studies.ppo_compare models/ppo_default.zip --seeds 20 --seed-start 100100 \
        --reference gp-uncertainty-per-second --json runs/compare.json
    python -m studies.ppo_compare runs/ppo_surprise/model.zip models/ppo_default.zip \
        --reference gp-uncertainty-per-second,gp-surprise-per-second
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Paired differences on the same seeds: mean, 95 % t-interval and the seeds above the reference.
from agents.statistics import paired_differences as paired


def run_policy(
    spec: str, seeds: list[int], train_args, target: float = 0.90
) -> dict[str, list[float]]:
    """AUC, final R^2 and seconds to ``target`` (NaN: not reached) of one policy
    (``make_policy`` spec) on each seed."""
    from agents.catalog import make_policy
    from agents.evaluation import run_episode
    from agents.training import env_kwargs
    from envs.acquisition.factory import make_env

    policy = make_policy(spec)
    auc, r2, seconds = [], [], []
    for seed in seeds:
        env = make_env(**env_kwargs(train_args, seed))
        trace = run_episode(env, policy, seed, charge_decisions="none")
        auc.append(float(trace.auc()))
        r2.append(float(trace.r2[-1]))
        seconds.append(trace.seconds_to(target))
        env.close()
    return {"auc": auc, "r2": r2, "seconds": seconds}


def print_table(
    results: dict[str, dict[str, list[float]]], reference: str, seeds: list[int], target: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Print every policy's means and its paired differences to ``reference``; return those
    differences per policy (``paired_auc``, ``paired_seconds_saved``)."""
    print(
        f"{'policy':50s} {'AUC':>7s} {'R2@T':>7s}   paired AUC diff [95 %]      better"
        f"   s to {target:.2f}  extra s, paired [95 %]     faster"
    )
    base = results[reference]
    paired_entries = {}
    for spec, values in results.items():
        auc, r2 = np.array(values["auc"]), np.array(values["r2"])
        seconds = np.array(values["seconds"])
        line = f"{spec[-50:]:50s} {auc.mean():7.4f} {r2.mean():7.4f}"
        entry: dict[str, dict[str, float]] = {}
        if spec != reference:
            d = paired(auc, np.array(base["auc"]))
            entry["paired_auc"] = d
            line += (
                f"   {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                f"  {d['better']:2d}/{len(seeds)}"
            )
        else:
            line += " " * 41
        line += f"   {seconds.mean():9.1f}"
        if spec != reference and np.isfinite(seconds).all():
            ref_seconds = np.array(base["seconds"])
            if np.isfinite(ref_seconds).all():
                # reference minus policy: positive where the policy is faster (its count);
                # printed negated, as the seconds the policy needs beyond the reference
                s = paired(ref_seconds, seconds)
                entry["paired_seconds_saved"] = s
                line += (
                    f"  {-s['mean']:+8.1f} [{-s['high']:+8.1f}, {-s['low']:+8.1f}]"
                    f"  {s['better']:2d}/{len(seeds)}"
                )
        print(line)
        if entry:
            paired_entries[spec] = entry
    return paired_entries


def main(argv: list[str] | None = None) -> int:
    import torch

    from agents.training import TrainArgs
    from envs.data.sources import HELD_OUT_SEED_START

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="PPO model .zip files (or policy specs)")
    parser.add_argument(
        "--reference",
        default="gp-uncertainty-per-second",
        help="policy spec(s) to pair against, comma-separated (one table each)",
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START + 100)
    parser.add_argument("--grid", type=int, default=TrainArgs.grid)
    parser.add_argument("--n-times", type=int, default=TrainArgs.n_times)
    parser.add_argument("--budget-fraction", type=float, default=TrainArgs.budget_fraction)
    parser.add_argument("--stop-r2", type=float, default=TrainArgs.stop_r2)
    parser.add_argument("--target", type=float, default=0.90, help="R^2 whose seconds to compare")
    parser.add_argument("--json", default="", help="also write every number here")
    args = parser.parse_args(argv)
    if args.seed_start < HELD_OUT_SEED_START:
        parser.error(f"--seed-start must be >= {HELD_OUT_SEED_START} (held-out seeds)")
    torch.set_num_threads(1)

    train_args = TrainArgs(
        grid=args.grid,
        n_times=args.n_times,
        budget_fraction=args.budget_fraction,
        stop_r2=args.stop_r2,
    )
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    references = [r.strip() for r in args.reference.split(",") if r.strip()]
    if not references:
        parser.error("--reference needs at least one policy")
    specs = references + [
        f"ppo:{m}" if Path(m).suffix == ".zip" or Path(m).is_file() else m for m in args.models
    ]
    specs = list(dict.fromkeys(specs))  # each policy runs once
    results = {spec: run_policy(spec, seeds, train_args, args.target) for spec in specs}
    print(
        f"seeds {seeds[0]}-{seeds[-1]}, grid {args.grid}, {args.n_times} read-outs, budget "
        f"{args.budget_fraction}, stop at {args.stop_r2 or 'budget'}"
    )
    report = {"seeds": seeds, "policies": {}, "paired": {}}
    for spec, values in results.items():
        auc = np.array(values["auc"])
        report["policies"][spec] = {**values, "auc_mean": float(auc.mean())}
    for reference in references:
        print(f"\nreference: {reference}")
        report["paired"][reference] = print_table(results, reference, seeds, args.target)
    if len(references) == 1:  # the layout of earlier reports: paired numbers in each policy
        for spec, entry in report["paired"][references[0]].items():
            report["policies"][spec].update(entry)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
