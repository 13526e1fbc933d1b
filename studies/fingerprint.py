"""A behaviour fingerprint: every policy's actions and AUC on fixed seeds, to compare two versions.

``python -m studies.fingerprint --out before.json`` runs every registered policy (decision time
not charged, so runs are deterministic) on two held-out 14 x 14 twins (4 blocks) and, when the
real BE-PFM file is beside the checkout, on it (2 blocks), to R^2 0.95 or the full budget, and
writes per episode the AUC, the number of actions and a hash of the action sequence. After a
change, ``python -m studies.fingerprint --compare before.json`` runs the same and lists every
episode whose actions or AUC differ (exit status 1 if any): a refactoring that keeps behaviour
lists none. A policy that needs what a dataset lacks (a trained model's block count, the twin's
structure) is skipped there.

The episodes run under the env's defaults (a twin measured with its memory, programs in pulse
order); ``--memory off --programs free`` runs the replay of a sample without memory, the only
setting before the memory was simulated, so that a record made then can still be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from agents.catalog import available_policies, make_policy
from agents.evaluation import run_episode
from envs.acquisition.factory import EnvConfig, make_env
from envs.data.sources import HELD_OUT_SEED_START

REAL_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bepfm_32x32x102.npy"
#: (data spec, seed, blocks) of each case.
TWIN_CASES = [("twin", HELD_OUT_SEED_START + i, 4) for i in range(2)]
#: Policies that need the twin (its structure) or a model trained on 4 blocks.
TWIN_ONLY = ("ppo", "structure-oracle")


class _Recorder:
    """Wraps a policy's ``act`` to keep the actions it returns."""

    def __init__(self, policy) -> None:
        self.actions: list[int] = []
        act = policy.act

        def recorded(observation, mask):
            action = act(observation, mask)
            self.actions.append(int(action))
            return action

        policy.act = recorded


def fingerprint(
    grid: int = 14, memory: str = "auto", programs: str = "sequence"
) -> dict[str, dict]:
    cases = list(TWIN_CASES) + ([(str(REAL_FILE), 0, 2)] if REAL_FILE.is_file() else [])
    results = {}
    for name in available_policies():
        for data, seed, blocks in cases:
            if data != "twin" and name in TWIN_ONLY:
                continue
            policy = make_policy(name)
            recorder = _Recorder(policy)
            config = EnvConfig.for_data(
                data, seed, grid, n_blocks=blocks, budget_fraction=1.0, memory=memory,
                programs=programs, **policy.env_settings(),
            )
            trace = run_episode(
                make_env(config), policy, seed, stop_r2=0.95, charge_decisions="none"
            )
            actions = np.asarray(recorder.actions, dtype=np.int64).tobytes()
            key = f"{name}|{Path(data).name}|{seed}"
            results[key] = {
                "auc": float(trace.auc()),
                "n": len(recorder.actions),
                "actions": hashlib.sha1(actions).hexdigest(),
            }
            print(key, results[key], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.fingerprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="", help="write the fingerprint as JSON here")
    parser.add_argument("--compare", default="", help="a fingerprint JSON to compare against")
    parser.add_argument("--grid", type=int, default=14, help="twin grid, pixels a side")
    parser.add_argument("--memory", default="auto", choices=("auto", "on", "off"),
                        help="the sample's memory (off: a replay)")
    parser.add_argument("--programs", default="sequence", choices=("sequence", "free"),
                        help="the program rule (free: any block, as a replay allows)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reference = None
    if args.compare:
        try:
            reference = json.loads(Path(args.compare).read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: --compare: {err}", file=sys.stderr)
            return 2
    results = fingerprint(args.grid, args.memory, args.programs)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if reference is None:
        return 0
    differing = [k for k in reference if k in results and reference[k] != results[k]]
    missing = [k for k in reference if k not in results]
    print(f"{len(reference) - len(differing) - len(missing)} of {len(reference)} episodes the same")
    for key in differing:
        print(f"differs: {key}: {reference[key]} -> {results[key]}")
    for key in missing:
        print(f"missing: {key}")
    return 1 if differing or missing else 0


if __name__ == "__main__":
    sys.exit(main())
