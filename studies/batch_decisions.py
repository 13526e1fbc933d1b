"""Does the batch-decision formulation learn? Train PPO on
:class:`envs.acquisition.batch.BatchDecisionEnv`
and compare it, paired on held-out twins, with the same env at the heuristic's weights and with
the one-measurement heuristic.

``python -m studies.batch_decisions --timesteps 2048 --out runs/batch`` trains (training twin
seeds only), then runs every held-out seed three ways and prints each one's AUC (the normalised
area under R^2 against charged seconds, decisions not charged, so runs are deterministic) and
the paired differences with 95 % t-intervals; ``--out`` receives the model, ``results.json``
and a figure of the training return.

- ``learned``: the trained policy's mean weights at each decision;
- ``batch-heuristic``: the same env with the action 0 (``gp-uncertainty-per-second``'s weights,
  ``k`` measurements per decision);
- ``gp-uncertainty-per-second``: the one-measurement heuristic on the one-measurement env.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.catalog import make_policy
from agents.evaluation import run_episode
from agents.statistics import t_interval
from envs.acquisition.batch import WEIGHT_NAMES, BatchDecisionEnv, WeightedScore
from envs.acquisition.factory import EnvConfig, make_env
from envs.data.sources import HELD_OUT_SEED_START

#: The training setting of ``train.py``'s default run: 16 x 16 twins, 32 reads, 4 blocks.
SETTINGS: dict[str, Any] = {"budget_fraction": 0.3, "n_blocks": 4}


def batch_env(seeds: int | list[int], k: int, grid: int, n_times: int) -> BatchDecisionEnv:
    config = EnvConfig.for_data("twin", seeds, grid, n_times, **SETTINGS)
    return BatchDecisionEnv(make_env(config), k=k)


def batch_auc(env: BatchDecisionEnv, seed: int, decide) -> tuple[float, list[list[float]]]:
    """AUC of one episode, deciding with ``decide(features) -> action``; and the weights used."""
    features, _ = env.reset(seed=seed)
    total, done, weights = 0.0, False, []
    while not done:
        action = decide(features)
        score = WeightedScore.from_action(action)
        weights.append([getattr(score, name) for name in WEIGHT_NAMES])
        features, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    # The AUC reward's return is the normalised area above the starting accuracy.
    return total + float(env.acquisition.r2_start), weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.batch_decisions", description=__doc__)
    parser.add_argument("--timesteps", type=int, default=2048, help="PPO decisions to train")
    parser.add_argument("--k", type=int, default=16, help="measurements per decision")
    parser.add_argument("--grid", type=int, default=16, help="twin pixels a side")
    parser.add_argument("--n-times", type=int, default=32, help="reads per pulse of the twin")
    parser.add_argument("--seeds", type=int, default=10, help="held-out seeds to compare on")
    parser.add_argument("--seed-start", type=int, default=HELD_OUT_SEED_START + 2000)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    if args.timesteps < 1 or args.seeds < 2 or args.k < 1:
        print("error: need --timesteps >= 1, --seeds >= 2 and --k >= 1")
        return 2
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_env = Monitor(batch_env([0, HELD_OUT_SEED_START], args.k, args.grid, args.n_times))
    model = PPO(
        "MlpPolicy",
        train_env,
        n_steps=64,  # about four episodes of 16 decisions per update
        batch_size=32,
        n_epochs=8,
        gamma=1.0,
        learning_rate=3e-4,
        policy_kwargs={"log_std_init": -1.0, "net_arch": [32, 32]},
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    model.learn(args.timesteps)
    model.save(out / "model.zip")
    returns = [float(r) for r in train_env.get_episode_rewards()]

    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    aucs: dict[str, list[float]] = {"learned": [], "batch-heuristic": [], "one-measurement": []}
    learned_weights = []
    zero = np.zeros(len(WEIGHT_NAMES), dtype=np.float32)
    for seed in seeds:
        env = batch_env(seed, args.k, args.grid, args.n_times)
        auc, weights = batch_auc(env, seed, lambda f: model.predict(f, deterministic=True)[0])
        aucs["learned"].append(auc)
        learned_weights.append(weights)
        aucs["batch-heuristic"].append(batch_auc(env, seed, lambda f: zero)[0])
        single = make_env(EnvConfig.for_data("twin", seed, args.grid, args.n_times, **SETTINGS))
        trace = run_episode(
            single, make_policy("gp-uncertainty-per-second"), seed, charge_decisions="none"
        )
        aucs["one-measurement"].append(float(trace.auc()))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in aucs.items()))
    report: dict[str, Any] = {"args": vars(args), "seeds": seeds, "auc": aucs,
                              "training_returns": returns, "learned_weights": learned_weights}
    print()
    for name, values in aucs.items():
        print(f"{name:>16}: AUC {np.mean(values):.4f}")
    for name in ("learned", "batch-heuristic"):
        for reference in ("batch-heuristic", "one-measurement"):
            if name == reference:
                continue
            diff = np.asarray(aucs[name]) - np.asarray(aucs[reference])
            mean, low, high = t_interval(diff)
            better = int((diff > 0).sum())
            report.setdefault("paired", {})[f"{name} - {reference}"] = [mean, low, high, better]
            print(f"{name} - {reference}: {mean:+.4f} [{low:+.4f}, {high:+.4f}], "
                  f"{better}/{len(diff)} seeds better")  # fmt: skip
    (out / "results.json").write_text(json.dumps(report, indent=2))
    _plot(out / "training_returns.png", returns)
    print(f"\nwrote {out / 'results.json'}, {out / 'training_returns.png'}, {out / 'model.zip'}")
    return 0


def _plot(path: Path, returns: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(returns, lw=0.8, alpha=0.5, label="episode return")
    if len(returns) >= 10:
        window = max(5, len(returns) // 10)
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(returns)), smooth, label=f"mean of {window}")
    ax.set_xlabel("training episode")
    ax.set_ylabel("return (AUC above the start)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
