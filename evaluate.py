"""Evaluate acquisition policies: how much instrument time does each save at a target accuracy?

Runs every chosen agent on every chosen dataset over several seeds and prints a compact table
(AUC, time saved and hours to R^2 >= 0.90, each as the mean and 95 % interval over seeds) and
one line per agent saying whether the challenge criterion holds: >= 25 % of the full raster's
time saved at R^2 >= 0.90, algorithm time included, judged on the interval's lower end. To
``--out`` it writes ``table.txt`` (every statistic at every target), ``results.json``,
``results.csv``, ``episodes.csv`` (one row per episode as it finishes, for paired comparisons
with ``python -m studies.paired``) and PNG figures.

An agent that raises is reported with its error and the others go on; the exit status is then 1.
A bad option is a one-line error naming it, exit status 2.

Examples
--------
    python evaluate.py                                   # baselines and PPO, held-out twin samples
    python evaluate.py --agents raster,gp-uncertainty --seeds 5 --out runs/eval
    python evaluate.py --data ../shared/data/bepfm_32x32x102.npy --blocks 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.command_line import json_object
from envs.data.sources import HELD_OUT_SEED_START
from envs.data.twin import RELAXATION_RICH

#: The twin's relaxation settings (``--twin-setting``): today's default, and one in which the
#: spatially varying relaxation carries ten times the share (docs/twin.md).
TWIN_SETTINGS = {"default": {}, "relaxation-rich": dict(RELAXATION_RICH)}

#: The smallest twin grid (pixels a side) the generator makes.
MIN_TWIN_GRID = 4

DEFAULT_AGENTS = ",".join(
    [
        "random",
        "raster",
        "static-subsample",
        "static-basis",
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
    read_windows: str = ""
    twin_setting: str = "default"
    reconstructor: str = "gp"
    reconstructor_options: str = ""
    budget_fraction: float = 1.0
    targets: str = "0.90,0.95"
    stop_r2: float = 0.95
    charge_decisions: str = "measured"
    threads: int = 1
    workers: int = 1
    ray: str = ""
    out: str = "runs/evaluate"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help``, and the description's own line breaks kept."""


def parse_args(argv: list[str] | None = None) -> EvaluateArgs:
    d = EvaluateArgs()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument(
        "--agents",
        default=d.agents,
        help="comma-separated policy names (name or name:argument, "
        "e.g. ppo:models/other.zip); the default is every baseline and the shipped PPO model",
    )
    p.add_argument(
        "--data",
        default=d.data,
        help="comma-separated data sources: 'twin' (held-out twin "
        "samples, one per seed) or file paths the loader reads",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=d.seeds,
        help="seeds per agent and dataset (2 or more give intervals, which the verdicts need)",
    )
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
        "--blocks",
        type=int,
        default=d.blocks,
        help="voltage blocks per pixel (sizes differ by one when they do not divide the voltages)",
    )
    p.add_argument(
        "--read-windows",
        default=d.read_windows,
        help="comma-separated reads per read window a measurement may choose, ascending, the "
        "last the whole curve (e.g. 16,128); empty: every measurement reads whole curves",
    )
    p.add_argument(
        "--twin-setting",
        choices=sorted(TWIN_SETTINGS),
        default=d.twin_setting,
        help="the twin's relaxation: 'default', or 'relaxation-rich' (walls creep, the "
        "relaxation varies in space; docs/twin.md)",
    )
    p.add_argument(
        "--reconstructor",
        default=d.reconstructor,
        help="reconstructor name (gp, lowrank, linear, ...)",
    )
    p.add_argument(
        "--reconstructor-options",
        default=d.reconstructor_options,
        help='the reconstructor\'s options as a JSON object, e.g. \'{"refit_mode": "deferred"}\'',
    )
    p.add_argument(
        "--budget-fraction",
        type=float,
        default=d.budget_fraction,
        help="episode budget as a fraction of the full raster time, in (0, 1] (the AUC is "
        "normalised over it)",
    )
    p.add_argument(
        "--targets",
        default=d.targets,
        help="comma-separated R^2 targets to report, each in (0, 1]; the challenge's 0.90 is "
        "always reported too",
    )
    p.add_argument(
        "--stop-r2",
        type=float,
        default=d.stop_r2,
        help="end an episode once R^2 reaches this, at least the highest target "
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
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="processes that run episodes side by side (0: one per core); with "
        "--charge-decisions none every number equals a serial run's",
    )
    p.add_argument(
        "--ray",
        default=d.ray,
        help="run the episodes as Ray tasks instead of local workers: 'local' (Ray on this "
        "machine), 'auto' (this machine's cluster) or a cluster address; needs the "
        "distributed extra (agents.ray_pool)",
    )
    p.add_argument("--out", default=d.out, help="output folder (tables, episodes.csv and figures)")
    return EvaluateArgs(**vars(p.parse_args(argv)))


def check_args(args: EvaluateArgs) -> list[float]:
    """Every option checked before anything runs; returns the R^2 targets to summarise (those
    of ``--targets`` and the challenge's).

    Raises
    ------
    ValueError
        A one-line message naming the first bad option.
    """
    from agents.report import CHALLENGE_TARGET, summary_targets
    from reconstruct import reconstructor_names
    from reconstruct.registry import check_reconstructor_options

    if not agent_specs(args.agents):
        raise ValueError("--agents: no agent given")
    if not _names(args.data):
        raise ValueError("--data: no data source given")
    for option, value, least in [
        ("--seeds", args.seeds, 1),
        ("--seed-start", args.seed_start, 0),
        ("--grid", args.grid, 0),
        ("--blocks", args.blocks, 1),
        ("--threads", args.threads, 0),
        ("--workers", args.workers, 0),
    ]:
        if value < least:
            raise ValueError(f"{option} must be at least {least}, got {value}")
    if 0 < args.grid < MIN_TWIN_GRID:
        raise ValueError(
            f"--grid must be 0 (the twin's own size) or at least {MIN_TWIN_GRID}, got {args.grid}"
        )
    try:
        _read_windows(args)
    except ValueError:
        raise ValueError(
            f"--read-windows: not a comma-separated list of whole numbers: {args.read_windows!r}"
        ) from None
    if args.twin_setting not in TWIN_SETTINGS:
        raise ValueError(
            f"--twin-setting: one of {sorted(TWIN_SETTINGS)}, got {args.twin_setting!r}"
        )
    try:
        options = json_object(args.reconstructor_options)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--reconstructor-options: {err}") from None
    if args.reconstructor not in reconstructor_names():
        known = ", ".join(reconstructor_names())
        raise ValueError(f"--reconstructor: unknown {args.reconstructor!r} (known: {known})")
    try:
        check_reconstructor_options(args.reconstructor, options)
    except ValueError as err:
        raise ValueError(f"--reconstructor-options: {err}") from None
    if not 0.0 < args.budget_fraction <= 1.0:
        raise ValueError(
            f"--budget-fraction must be in (0, 1] (a fraction of the full raster time), got "
            f"{args.budget_fraction:g}"
        )
    try:
        asked = [float(t) for t in _names(args.targets)]
    except ValueError:
        raise ValueError(
            f"--targets: not a comma-separated list of numbers: {args.targets!r}"
        ) from None
    if not asked:
        raise ValueError("--targets: no target given")
    for target in asked:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"--targets: each R^2 target must be in (0, 1], got {target:g}")
    if len(set(asked)) < len(asked):
        raise ValueError(f"--targets: a target is given twice in {args.targets!r}")
    targets = summary_targets(asked)
    if args.stop_r2 < 0:
        raise ValueError(f"--stop-r2 must be 0 (off) or in (0, 1], got {args.stop_r2:g}")
    if args.stop_r2 and not max(targets) <= args.stop_r2 <= 1.0:
        raise ValueError(
            f"--stop-r2 must be 0 (off) or in [{max(targets):g}, 1] so that episodes run until "
            f"the highest target (--targets and the challenge's {CHALLENGE_TARGET:g}) can be "
            f"reached, got {args.stop_r2:g}"
        )
    return targets


def _names(text: str) -> list[str]:
    """The non-empty entries of a comma-separated option."""
    return [name.strip() for name in text.split(",") if name.strip()]


def agent_specs(text: str) -> list[str]:
    """``--agents`` as policy specs: comma-separated, where an entry that starts with a digit
    or a point continues the argument before it, so ``static-basis:0.05,1,8,random`` is
    ``static-basis:0.05,1,8`` and ``random``."""
    specs: list[str] = []
    for entry in _names(text):
        if specs and (entry[0].isdigit() or entry[0] == "."):
            specs[-1] += "," + entry
        else:
            specs.append(entry)
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        targets = check_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from agents.catalog import make_policy
    from agents.evaluation import target_key
    from agents.report import (
        EpisodeWriter,
        challenge_lines,
        format_compact_table,
        format_table,
        write_results,
    )

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "errors.log").unlink(missing_ok=True)  # an earlier run's, not this one's
        specs = agent_specs(args.agents)
        policies = [make_policy(spec) for spec in specs]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = [policy.label for policy in policies]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # their rows and curves would be merged under one name
        print(f"error: agents given twice: {', '.join(repeated)}", file=sys.stderr)
        return 2
    data_sources = _names(args.data)
    for data in data_sources:  # a bad file, grid or block count fails here, before any episode
        try:
            _make_env(args, data, args.seed_start).close()
        except (ValueError, TypeError, OSError) as err:  # DataError is a ValueError; an
            # unknown reconstructor option is a TypeError
            print(f"error: --data {data}: {err}", file=sys.stderr)
            return 2

    summaries, failures = [], []
    progress = tqdm(total=len(data_sources) * len(policies) * args.seeds, unit="episode")
    workers = args.workers or os.cpu_count() or 1
    if args.ray:
        from agents.ray_pool import RayExecutor

        try:
            pool = RayExecutor(args.ray, args.threads)
        except ImportError as err:
            progress.close()
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        pool = _worker_pool(workers, args.threads) if workers > 1 else None
    try:
        with EpisodeWriter(out / "episodes.csv", targets) as episodes:
            for data in data_sources:
                data_summaries, data_failures = evaluate_data(
                    args, data, list(zip(policies, specs, strict=True)), targets, out, episodes,
                    progress, pool,
                )  # fmt: skip
                summaries += data_summaries
                failures += data_failures
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    progress.close()

    (out / "table.txt").write_text(
        format_table(summaries, [target_key(t) for t in targets], failures) + "\n"
    )
    write_results(out, summaries, asdict(args), failures)
    print(format_compact_table(summaries, failures))
    print()
    for line in challenge_lines(summaries, failures):
        print(line)
    print(
        f"\nwrote {out / 'table.txt'}, {out / 'results.json'}, {out / 'results.csv'}, "
        f"{out / 'episodes.csv'} and figures to {out}/"
    )
    if failures:
        names = ", ".join(f"{f.agent} on {f.data}" for f in failures)
        print(f"error: failed: {names} (tracebacks in {out / 'errors.log'})", file=sys.stderr)
        return 1
    return 0


def evaluate_data(
    args: EvaluateArgs,
    data: str,
    policies: list,
    targets: list[float],
    out: Path,
    episodes,
    progress,
    pool=None,
):
    """Run every policy (with its spec: ``(policy, spec)`` pairs) over the seeds on one data
    source, writing each episode to ``episodes`` (an :class:`agents.report.EpisodeWriter`) in
    the order a serial run ends them; plot; return the summaries and the failures (an agent that
    raises is one failure, the others go on). With a ``pool`` every episode is submitted at
    once and runs in a worker process, which builds its policy afresh from the spec."""
    from agents.evaluation import Failure, summarise
    from agents.report import plot_curves, plot_reconstructions

    data_name = "twin (held-out)" if data == "twin" else Path(data).name
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    submitted = None
    if pool is not None:
        submitted = [
            [pool.submit(_attempt_spec, args, data, spec, seed) for seed in seeds]
            for _, spec in policies
        ]
    traces_by_agent, summaries, failures = {}, [], []
    view = None  # the slice the reconstruction figure shows, from the first finished episode
    for k, (policy, _) in enumerate(policies, start=1):
        progress.set_description(f"{data_name}: agent {k}/{len(policies)} {policy.label}")
        traces, failure = [], None
        for i, seed in enumerate(seeds):
            if submitted is None:
                outcome = _attempt(args, data, policy, seed)
            else:
                outcome = submitted[k - 1][i].result()
            if isinstance(outcome, _EpisodeError):
                failure = (seed, outcome)
                break
            trace, episode_view = outcome
            view = view if view is not None else episode_view
            traces.append(trace)
            episodes.write(data_name, trace)
            progress.set_postfix(final_r2=f"{trace.r2[-1]:.3f}", refresh=False)
            progress.update(1)
        if failure is not None:  # one agent's error must not lose the others
            seed, error = failure
            failures.append(Failure(policy.label, data_name, seed, len(traces), error.message))
            with open(out / "errors.log", "a") as log:
                log.write(f"{policy.label} on {data_name}, seed {seed}:\n{error.traceback}\n")
            progress.write(f"{policy.label} failed on {data_name}, seed {seed}: {error.message}")
            progress.total -= args.seeds - len(traces)  # its remaining episodes will not run
            progress.refresh()
            if submitted is not None:
                for future in submitted[k - 1]:
                    future.cancel()
            continue
        traces_by_agent[policy.label] = traces
        summaries.append(summarise(traces, data_name, tuple(targets)))
    if traces_by_agent:
        stem = "twin" if data == "twin" else Path(data).stem
        title = f"{data_name}, {args.seeds} seed{'s' if args.seeds > 1 else ''}"
        plot_curves(out / f"curves_{stem}.png", traces_by_agent, title, targets)
        plot_reconstructions(out / f"reconstructions_{stem}.png", traces_by_agent, view)
    return summaries, failures


@dataclass
class _EpisodeError:
    """An episode that raised: its one-line message and its traceback."""

    message: str
    traceback: str


def _attempt(args: EvaluateArgs, data: str, policy, seed: int):
    """``(trace, map slice)`` of one episode, or the :class:`_EpisodeError` it raised."""
    from agents.evaluation import map_slice, run_episode
    from agents.report import CHALLENGE_TARGET

    try:
        env = _make_env(args, data, seed, policy)
        try:
            trace = run_episode(
                env, policy, seed, stop_r2=args.stop_r2 or None,
                charge_decisions=args.charge_decisions, dynamics_target=CHALLENGE_TARGET,
            )  # fmt: skip
            return trace, map_slice(env.unwrapped)
        finally:
            env.close()
    except Exception as err:  # noqa: BLE001 (reported as the agent's failure)
        return _EpisodeError(f"{type(err).__name__}: {err}", traceback.format_exc())


def _attempt_spec(args: EvaluateArgs, data: str, spec: str, seed: int):
    """:func:`_attempt` in a worker process, with the policy built there from its spec."""
    from agents.catalog import make_policy

    try:
        policy = make_policy(spec)
    except Exception as err:  # noqa: BLE001
        return _EpisodeError(f"{type(err).__name__}: {err}", traceback.format_exc())
    return _attempt(args, data, policy, seed)


def _worker_pool(workers: int, threads: int):
    """Worker processes (started afresh, not forked from a process that holds torch threads),
    each limited to ``threads`` torch threads (1 when 0)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_limit_threads,
        initargs=(threads or 1,),
    )


def _limit_threads(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _make_env(args: EvaluateArgs, data: str, seed: int, policy=None):
    """The episode's env, with the observation planes ``policy`` reads (a trained model's)."""
    from envs.acquisition.factory import make_env

    settings = policy.env_settings() if policy is not None else {}
    return make_env(**{**_env_kwargs(args, data, seed), **settings})


def _env_kwargs(args: EvaluateArgs, data: str, seed: int) -> dict:
    """JSON-safe env settings of one episode: the twin with ``seed`` (a data spec that names
    its own seed, or a file, keeps it)."""
    from envs.acquisition.factory import EnvConfig

    return EnvConfig.for_data(
        data,
        seed,
        reconstructor=args.reconstructor,
        reconstructor_kwargs=json.loads(args.reconstructor_options or "{}"),
        n_blocks=args.blocks,
        read_windows=_read_windows(args),
        budget_fraction=args.budget_fraction,
        twin_overrides=_twin_overrides(args.grid, args.twin_setting),
    ).to_kwargs()


def _read_windows(args: EvaluateArgs) -> list[int] | None:
    """``--read-windows`` as a list of reads (None: whole curves only)."""
    reads = _names(args.read_windows)
    return [int(r) for r in reads] if reads else None


def _twin_overrides(grid: int, setting: str = "default") -> dict:
    """Twin settings for a square grid of ``grid`` pixels a side (0: the twin's own) and a
    relaxation setting."""
    overrides = dict(TWIN_SETTINGS[setting])
    if grid:
        overrides["grid"] = [grid, grid]
    return overrides


if __name__ == "__main__":
    sys.exit(main())
