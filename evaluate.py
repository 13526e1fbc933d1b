"""Evaluate acquisition policies: how much instrument time does each save at a target accuracy?

Runs every chosen agent on every chosen dataset over several seeds, prints a table (mean and
95 % interval over seeds), writes ``results.json``, ``results.csv``, ``episodes.csv`` (one row
per episode, for paired comparisons with ``python -m studies.paired``) and PNG figures to
``--out``, and ends with one line per agent saying whether the challenge criterion (>= 25 % of
the full raster's time saved at R^2 >= 0.90, algorithm time included) holds.

Examples
--------
    python evaluate.py                                   # baselines and PPO, held-out twin samples
    python evaluate.py --agents raster,gp-uncertainty --seeds 5 --out runs/eval
    python evaluate.py --data ../shared/data/bepfm_32x32x102.npy --blocks 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from envs.sources import HELD_OUT_SEED_START

DEFAULT_AGENTS = ",".join(
    [
        "random",
        "raster",
        "static-subsample",
        "gp-uncertainty",
        "gp-uncertainty-per-second",
        "gp-surprise-per-second",
        "gp-calibrated-energy-per-second",
        "variance-reduction",
        "ppo",  # the shipped models/ppo_default.zip (train.py's default run)
        "greedy-oracle",
    ]
)


@dataclass
class EvaluateArgs:
    agents: str = DEFAULT_AGENTS
    data: str = "twin"
    seeds: int = 3
    seed_start: int = HELD_OUT_SEED_START
    grid: int = 30
    blocks: int = 4
    reconstructor: str = "gp"
    budget_fraction: float = 1.0
    targets: str = "0.90,0.95"
    stop_at: float = 0.95
    charge_decisions: str = "measured"
    threads: int = 1
    out: str = "runs/evaluate"


def parse_args(argv: list[str] | None = None) -> EvaluateArgs:
    d = EvaluateArgs()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--agents",
        default=d.agents,
        help="comma-separated policy names (name or name:argument, "
        "e.g. ppo:models/other.zip); default: every baseline and the shipped PPO model",
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="comma-separated data sources: 'twin' (held-out twin "
        "samples, one per seed) or file paths the loader reads",
    )
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds per agent and dataset")
    p.add_argument(
        "--seed-start",
        type=int,
        default=d.seed_start,
        help=f"first seed (twin samples from {HELD_OUT_SEED_START} on are never used in training)",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=d.grid,
        help="twin grid size in pixels a side (30 keeps the default run within minutes; 60 is the "
        "full-size experiment; 0: the twin's own default)",
    )
    p.add_argument(
        "--blocks", type=int, default=d.blocks, help="voltage blocks (must divide the voltage axis)"
    )
    p.add_argument(
        "--reconstructor",
        default=d.reconstructor,
        help="reconstructor name (gp, lowrank, linear, ...)",
    )
    p.add_argument(
        "--budget-fraction",
        type=float,
        default=d.budget_fraction,
        help="episode budget as a fraction of the full raster time",
    )
    p.add_argument("--targets", default=d.targets, help="comma-separated R^2 targets to report")
    p.add_argument(
        "--stop-at",
        type=float,
        default=d.stop_at,
        help="end an episode once R^2 reaches this "
        "(the curve holds its last value afterwards); 0 disables",
    )
    p.add_argument(
        "--charge-decisions",
        choices=["measured", "none"],
        default=d.charge_decisions,
        help="charge each decision's wall-clock seconds into the time axis ('none': deterministic)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads (0: torch's default); the reconstruction runs many small matrix "
        "operations, which extra threads slow down on a busy machine",
    )
    p.add_argument("--out", default=d.out, help="output folder (tables, episodes.csv and figures)")
    return EvaluateArgs(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from agents.registry import make_policy
    from agents.report import challenge_lines, format_table, write_episodes, write_results

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    targets = [float(t) for t in args.targets.split(",")]
    target_keys = [f"{t:.2f}" for t in targets]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        policies = [make_policy(spec.strip()) for spec in args.agents.split(",") if spec.strip()]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = [policy.label for policy in policies]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # their rows and curves would be merged under one name
        print(f"error: agents given twice: {', '.join(repeated)}", file=sys.stderr)
        return 2

    summaries, episodes = [], []
    try:
        for data in [d.strip() for d in args.data.split(",") if d.strip()]:
            data_summaries, data_episodes = evaluate_data(args, data, policies, targets, out)
            summaries += data_summaries
            episodes += data_episodes
    except (ValueError, OSError) as err:  # DataError is a ValueError: bad file, blocks, budget
        print(f"error: {err}", file=sys.stderr)
        return 2

    write_results(out, summaries, asdict(args))
    write_episodes(out, episodes, targets)
    print(format_table(summaries, target_keys))
    print()
    for line in challenge_lines(summaries):
        print(line)
    print(
        f"\nwrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'episodes.csv'} "
        f"and figures to {out}/"
    )
    return 0


def evaluate_data(args: EvaluateArgs, data: str, policies: list, targets: list[float], out: Path):
    """Run every policy over the seeds on one data source; plot; return the summaries and the
    ``(data name, trace)`` of every episode."""
    from tqdm import tqdm

    from agents.evaluation import run_episode, summarise
    from agents.report import plot_curves, plot_reconstructions
    from envs.factory import make_env

    data_name = "twin (held-out)" if data == "twin" else Path(data).name
    traces_by_agent, summaries = {}, []
    truth_map = None
    for policy in policies:
        traces = []
        bar = tqdm(total=args.seeds, desc=f"{data_name}: {policy.label}", unit="episode")
        for i in range(args.seeds):
            seed = args.seed_start + i
            env = make_env(**_env_kwargs(args, data, seed), **policy.env_settings())
            trace = run_episode(
                env,
                policy,
                seed,
                stop_r2=args.stop_at or None,
                charge_decisions=args.charge_decisions,
            )
            traces.append(trace)
            if truth_map is None:
                truth_map = _reference_map(env.unwrapped)
            env.close()
            bar.set_postfix(steps=len(trace.r2) - 1, final_r2=f"{trace.r2[-1]:.3f}", refresh=False)
            bar.update(1)
        bar.close()
        traces_by_agent[policy.label] = traces
        summaries.append(summarise(traces, data_name, tuple(targets)))
    stem = "twin" if data == "twin" else Path(data).stem
    title = f"{data_name}, {args.seeds} seeds"
    plot_curves(out / f"curves_{stem}.png", traces_by_agent, title, targets)
    plot_reconstructions(out / f"reconstructions_{stem}.png", traces_by_agent, truth_map)
    episodes = [(data_name, t) for traces in traces_by_agent.values() for t in traces]
    return summaries, episodes


def _env_kwargs(args: EvaluateArgs, data: str, seed: int) -> dict:
    kwargs = dict(
        data=data,
        reconstructor=args.reconstructor,
        n_blocks=args.blocks,
        budget_fraction=args.budget_fraction,
    )
    if data == "twin":
        kwargs["twin_seeds"] = seed
        if args.grid:
            kwargs["twin_overrides"] = _twin_overrides(args.grid)
    return kwargs


def _twin_overrides(grid: int) -> dict:
    """Twin settings for a square grid of ``grid`` pixels a side."""
    return {"grid": [grid, grid]}


def _reference_map(env):
    """The reference (truth when known, else measured) at the middle spectral entry."""
    source = env.dataset.truth if env.dataset.truth is not None else env.dataset.data
    return source[(slice(None), slice(None), *[s // 2 for s in source.shape[2:]])]


if __name__ == "__main__":
    sys.exit(main())
