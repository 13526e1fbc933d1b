"""Evaluate acquisition policies: how much instrument time does each save at a target accuracy?

Runs every chosen agent on every chosen dataset over several seeds and prints a compact table
(AUC, time saved and hours to R^2 >= 0.90, each as the mean and 95 % interval over seeds) and
one line per agent saying whether the challenge criterion holds: >= 25 % of the full raster's
time saved at R^2 >= 0.90, algorithm time included, judged on the interval's lower end. To
``--out`` it writes ``table.txt`` (every statistic at every target), ``results.json``,
``results.csv``, ``episodes.csv`` (one row per episode as it finishes, for paired comparisons
with ``python -m studies.paired``), ``traces/`` (each episode's curve), ``run.json`` (the
settings) and PNG figures.

A run never destroys another: a folder that holds one is continued with ``--resume`` (the
episodes in its ``episodes.csv`` are not run again; the tables cover them all; the settings
must be those stored in ``run.json``, and options not given take them) or replaced with
``--overwrite``. A run stopped by SIGTERM or Ctrl-C stops its workers, keeps its finished
episodes and exits with status 143 (130); workers also end when the run is killed.

Every option is checked before the first episode (reconstructor options and agent arguments by
building them): a bad one is a one-line error naming it, exit status 2. An agent that raises
later is reported in one line and in the tables with its error, the others go on; the exit
status is then 1 (also when every agent failed: the tables then hold only the failures).

Examples
--------
    python evaluate.py                                   # baselines and PPO, held-out twin samples
    python evaluate.py --agents raster,gp-uncertainty --seeds 5 --out runs/eval
    python evaluate.py --data ../shared/data/bepfm_32x32x102.npy --blocks 2
    python evaluate.py --resume --out runs/eval          # continue a stopped run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from envs.acquisition.programs import programs_option
from envs.command_line import add_options, json_object, option, program_parser, settings_from
from envs.data.sources import HELD_OUT_SEED_START
from envs.data.twin import RELAXATION_RICH
from envs.instruments.memory import memory_option

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


#: Settings that decide an episode's numbers: a resumed run must keep them (those not listed,
#: how the episodes run and where the files go, may change between sessions).
RUN_SETTINGS = (
    "agents", "data", "seeds", "seed_start", "grid", "blocks", "read_windows", "twin_setting",
    "reconstructor", "reconstructor_options", "budget_fraction", "targets", "stop_r2",
    "charge_decisions", "memory", "programs",
)  # fmt: skip

#: The files and folders a run writes to ``--out`` (besides its figures): their presence makes
#: the folder a run, which ``--resume`` continues and ``--overwrite`` replaces.
RUN_FILES = (
    "run.json", "episodes.csv", "traces", "results.json", "results.csv", "table.txt",
    "errors.log",
)  # fmt: skip


@dataclass
class EvaluateArgs:
    """Every setting of an evaluation; ``__post_init__`` checks them all before any episode
    (a ``ValueError`` of one line naming the option)."""

    agents: str = option(
        DEFAULT_AGENTS,
        "comma-separated policy names (name or name:argument, e.g. ppo:models/other.zip); the "
        "default is every baseline and the shipped PPO model",
        metavar="NAMES",
    )
    data: str = option(
        "twin",
        "comma-separated data sources: 'twin' (held-out twin samples, one per seed) or file "
        "paths the loader reads",
        metavar="SOURCES",
    )
    seeds: int = option(
        3, "seeds per agent and dataset (2 or more give intervals, which the verdicts need)"
    )
    seed_start: int = option(
        HELD_OUT_SEED_START,
        f"first seed (twin samples from {HELD_OUT_SEED_START} on are never used in training)",
    )
    grid: int = option(
        30,
        "twin grid size in pixels a side (30 keeps the default run within minutes; 60 is the "
        "full-size experiment; 0: the twin's own default)",
    )
    blocks: int = option(
        4, "voltage blocks per pixel (sizes differ by one when they do not divide the voltages)"
    )
    read_windows: str = option(
        "",
        "comma-separated reads per read window a measurement may choose, ascending, the last "
        "the whole curve (e.g. 16,128); empty (the default): every measurement reads whole "
        "curves",
        metavar="READS",
    )
    memory: str = memory_option()
    programs: str = programs_option()
    twin_setting: str = option(
        "default",
        "the twin's relaxation: 'default', or 'relaxation-rich' (walls creep, the relaxation "
        "varies in space; docs/twin.md)",
        choices=sorted(TWIN_SETTINGS),
    )
    reconstructor: str = option("gp", "reconstructor name (gp, lowrank, linear, idw, ...)")
    reconstructor_options: str = option(
        "",
        'the reconstructor\'s options as a JSON object, e.g. \'{"refit_mode": "deferred"}\' '
        "(empty, the default: its own defaults)",
        metavar="JSON",
    )
    budget_fraction: float = option(
        1.0,
        "episode budget as a fraction of the full raster time, in (0, 1] (the AUC is "
        "normalised over it)",
    )
    targets: str = option(
        "0.90,0.95",
        "comma-separated R^2 targets to report, each in (0, 1]; the challenge's 0.90 is always "
        "reported too",
    )
    stop_r2: float = option(
        0.95,
        "end an episode once R^2 reaches this, at least the highest target (the curve holds "
        "its last value afterwards); 0 disables",
    )
    charge_decisions: str = option(
        "measured",
        "charge each decision's wall-clock seconds into the time axis ('none': deterministic)",
        choices=("measured", "none"),
    )
    threads: int = option(
        1,
        "torch threads (0: torch's default); the reconstruction runs many small matrix "
        "operations, which extra threads slow down on a busy machine",
    )
    workers: int = option(
        1,
        "processes that run episodes side by side (0: one per core); with --charge-decisions "
        "none every number equals a serial run's",
    )
    ray: str = option(
        "",
        "run the episodes as Ray tasks instead of local workers: 'local' (Ray on this "
        "machine), 'auto' (this machine's cluster) or a cluster address; needs the distributed "
        "extra (agents.ray_pool); empty (the default): local workers",
        metavar="ADDRESS",
    )
    out: str = option(
        "runs/evaluate",
        "output folder (tables, episodes.csv, traces/ and figures); a folder that already holds "
        "a run needs --resume or --overwrite",
    )
    resume: bool = option(
        False,
        "continue the run in --out: episodes already in its episodes.csv are not run again, "
        "the tables cover them all; options not given take the run's stored values, and those "
        "given must match them",
    )
    overwrite: bool = option(
        False, "replace the run in --out (its tables, episodes, traces and figures)"
    )

    def __post_init__(self) -> None:
        self._check_values()
        self._check_ray()
        self._check_out()
        self._check_reconstructor()
        self._build_policies()
        self._check_data()

    # ----------------------------------------------------------------- the checks, in order
    def _check_values(self) -> None:
        if not agent_specs(self.agents):
            raise ValueError("--agents: no agent given")
        if not _names(self.data):
            raise ValueError("--data: no data source given")
        for option_name, value, least in [
            ("--seeds", self.seeds, 1),
            ("--seed-start", self.seed_start, 0),
            ("--grid", self.grid, 0),
            ("--blocks", self.blocks, 1),
            ("--threads", self.threads, 0),
            ("--workers", self.workers, 0),
        ]:
            if value < least:
                raise ValueError(f"{option_name} must be at least {least}, got {value}")
        if 0 < self.grid < MIN_TWIN_GRID:
            raise ValueError(
                f"--grid must be 0 (the twin's own size) or at least {MIN_TWIN_GRID}, got "
                f"{self.grid}"
            )
        try:
            _read_windows(self)
        except ValueError:
            raise ValueError(
                f"--read-windows: not a comma-separated list of whole numbers: "
                f"{self.read_windows!r}"
            ) from None
        if self.twin_setting not in TWIN_SETTINGS:
            raise ValueError(
                f"--twin-setting: one of {sorted(TWIN_SETTINGS)}, got {self.twin_setting!r}"
            )
        if self.charge_decisions not in ("measured", "none"):
            raise ValueError(
                f"--charge-decisions: 'measured' or 'none', got {self.charge_decisions!r}"
            )
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(
                f"--budget-fraction must be in (0, 1] (a fraction of the full raster time), got "
                f"{self.budget_fraction:g}"
            )
        try:
            asked = [float(t) for t in _names(self.targets)]
        except ValueError:
            raise ValueError(
                f"--targets: not a comma-separated list of numbers: {self.targets!r}"
            ) from None
        if not asked:
            raise ValueError("--targets: no target given")
        for target in asked:
            if not 0.0 < target <= 1.0:
                raise ValueError(f"--targets: each R^2 target must be in (0, 1], got {target:g}")
        if len(set(asked)) < len(asked):
            raise ValueError(f"--targets: a target is given twice in {self.targets!r}")
        from agents.report import CHALLENGE_TARGET

        highest = max(self.summary_targets())
        if self.stop_r2 < 0:
            raise ValueError(f"--stop-r2 must be 0 (off) or in (0, 1], got {self.stop_r2:g}")
        if self.stop_r2 and not highest <= self.stop_r2 <= 1.0:
            raise ValueError(
                f"--stop-r2 must be 0 (off) or in [{highest:g}, 1] so that episodes run until "
                f"the highest target (--targets and the challenge's {CHALLENGE_TARGET:g}) can "
                f"be reached, got {self.stop_r2:g}"
            )

    def _check_ray(self) -> None:
        if self.ray:
            try:
                import ray  # noqa: F401
            except ImportError as err:
                raise ValueError(
                    f"--ray {self.ray}: Ray does not import ({_one_line(err)}); install the "
                    "distributed extra or leave --ray out"
                ) from None

    def _check_out(self) -> None:
        """``--out`` a folder (or nothing yet); one that holds a run is continued only with
        ``--resume`` and the same settings, replaced only with ``--overwrite``."""
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite: give one of them (continue or replace)")
        present = run_files(out)
        if self.resume:
            if not (out / "episodes.csv").is_file():
                raise ValueError(f"--resume: {out} holds no run to continue (no episodes.csv)")
            stored = stored_settings(out)
            differences = [
                f"{_flag(name)} {_shown(stored[name])} there, {_shown(getattr(self, name))} here"
                for name in RUN_SETTINGS
                if name in stored and stored[name] != getattr(self, name)
            ]
            missing = [_flag(name) for name in RUN_SETTINGS if name not in stored]
            if missing:
                differences.append(f"{', '.join(missing)} not stored with the run")
            if differences:
                raise ValueError(
                    f"--resume: the run in {out} was made with other settings: "
                    + "; ".join(differences)
                )
        elif present and not self.overwrite:
            raise ValueError(
                f"--out {out} already holds a run ({', '.join(present)}): add --resume to "
                "continue it or --overwrite to replace it"
            )

    def _check_reconstructor(self) -> None:
        """The reconstructor's name, option names and option types, and a small one built
        with those options, so that a bad value fails here, not in the episodes."""
        from reconstruct import make_reconstructor, reconstructor_names
        from reconstruct.registry import check_reconstructor_options

        try:
            options = json_object(self.reconstructor_options)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--reconstructor-options: {err}") from None
        if self.reconstructor not in reconstructor_names():
            known = ", ".join(reconstructor_names())
            raise ValueError(f"--reconstructor: unknown {self.reconstructor!r} (known: {known})")
        try:
            check_reconstructor_options(self.reconstructor, options)
            make_reconstructor(self.reconstructor, (4, 4), (4, 4), **options)
        except Exception as err:  # noqa: BLE001 (whatever the constructor raises, one line)
            raise ValueError(f"--reconstructor-options: {_one_line(err)}") from None

    def _build_policies(self) -> None:
        """Every agent built from its name and argument (kept for the run); labels unique."""
        from agents.catalog import make_policy

        policies = []
        for spec in agent_specs(self.agents):
            try:
                policies.append(make_policy(spec))
            except (ValueError, TypeError, OSError) as err:
                raise ValueError(f"--agents {spec}: {_one_line(err)}") from None
        labels = [policy.label for policy in policies]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:  # their rows and curves would be merged under one name
            raise ValueError(f"--agents: agents given twice: {', '.join(repeated)}")
        self._policies = policies

    def _check_data(self) -> None:
        """A bad file, grid or block count fails here, before any episode."""
        for data in _names(self.data):
            try:
                _make_env(self, data, self.seed_start).close()
            except (ValueError, TypeError, OSError) as err:  # DataError is a ValueError
                raise ValueError(f"--data {data}: {_one_line(err)}") from None

    def __getstate__(self) -> dict:
        """Pickled for worker processes without the built agents (a worker builds its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "_policies"}

    # ----------------------------------------------------------------- what the run uses
    def summary_targets(self) -> list[float]:
        """The R^2 targets to summarise: those of ``--targets`` and the challenge's."""
        from agents.report import summary_targets

        return summary_targets([float(t) for t in _names(self.targets)])

    def policies(self) -> list:
        """The agents (built once, by the checks), in ``--agents`` order."""
        return self._policies

    def specs(self) -> list[str]:
        return agent_specs(self.agents)

    def run_settings(self) -> dict:
        """The settings a resumed run must keep (stored in ``run.json``)."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (type included when the message is empty)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run_files(out: Path) -> list[str]:
    """The run's files present in ``out`` (empty: no run there)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def stored_settings(out: Path) -> dict:
    """The settings stored with the run in ``out`` (``run.json``); ``ValueError`` when there
    are none to read."""
    path = out / "run.json"
    try:
        record = json.loads(path.read_text())
        settings = record["settings"]
    except FileNotFoundError:
        raise ValueError(
            f"--resume: {out} stores no settings (no run.json: a run made before --resume "
            "existed), so it cannot be continued"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: cannot read {path}: {_one_line(err)}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--resume: {path} holds no settings")
    return settings


def parse_args(argv: list[str] | None = None) -> EvaluateArgs:
    """The settings from the command line, checked (``ValueError``: one line naming the
    option; a value of the wrong kind exits with status 2 from the parser). With ``--resume``
    the options not given take the values stored with the run."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--out", default=EvaluateArgs.__dataclass_fields__["out"].default)
    early.add_argument("--resume", action="store_true")
    known, _ = early.parse_known_args(argv)
    defaults = {}
    if known.resume and (Path(known.out) / "run.json").is_file():
        stored = stored_settings(Path(known.out))
        defaults = {name: stored[name] for name in RUN_SETTINGS if name in stored}
    parser = program_parser("python evaluate.py", __doc__)
    add_options(parser, EvaluateArgs, defaults=defaults)
    return settings_from(EvaluateArgs, parser.parse_args(argv))


def check_args(args: EvaluateArgs) -> list[float]:
    """The R^2 targets to summarise (``args`` was checked when it was made; kept for callers
    of the earlier two-step form)."""
    return args.summary_targets()


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


class _Stopped(Exception):
    """SIGTERM arrived: stop the workers and end the run (its finished episodes are kept)."""


def _stop_on_sigterm(signum, frame) -> None:
    raise _Stopped()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:  # a bad option: one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    targets = args.summary_targets()
    import torch
    from tqdm import tqdm

    from agents.evaluation import target_key
    from agents.report import (
        EpisodeWriter,
        challenge_lines,
        finished_episodes,
        format_compact_table,
        format_table,
        sample_label,
        write_results,
    )

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite:
        _remove_run(out)
    (out / "errors.log").unlink(missing_ok=True)  # an earlier session's, not this one's
    done = finished_episodes(out / "episodes.csv") if args.resume else {}
    if not args.resume:
        record = {"program": "evaluate.py", "settings": args.run_settings()}
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    policies, specs = args.policies(), args.specs()
    data_sources = _names(args.data)

    summaries, failures = [], []
    total = len(data_sources) * len(policies) * args.seeds
    if done:
        print(f"resuming {out}: {len(done)} episodes done, {total - len(done)} to run")
    progress = tqdm(total=total, initial=min(len(done), total), unit="episode")
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
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # only there can a signal handler be set
        previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    stopped = None
    try:
        with EpisodeWriter(out / "episodes.csv", targets, append=args.resume) as episodes:
            for data in data_sources:
                data_summaries, data_failures = evaluate_data(
                    args, data, list(zip(policies, specs, strict=True)), targets, out, episodes,
                    progress, pool, done,
                )  # fmt: skip
                summaries += data_summaries
                failures += data_failures
    except (_Stopped, KeyboardInterrupt) as err:
        stopped = "SIGTERM" if isinstance(err, _Stopped) else "interrupt"
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        if pool is not None:
            if stopped:
                _terminate(pool)
            pool.shutdown(wait=not stopped, cancel_futures=True)
    progress.close()
    if stopped:
        print(
            f"error: stopped ({stopped}); the finished episodes are in {out / 'episodes.csv'}: "
            f"continue with --resume --out {out}",
            file=sys.stderr,
        )
        return 130 if stopped == "interrupt" else 128 + signal.SIGTERM

    label = sample_label(args.memory, args.programs)
    (out / "table.txt").write_text(
        label + "\n" + format_table(summaries, [target_key(t) for t in targets], failures) + "\n"
    )
    write_results(out, summaries, asdict(args), failures)
    print(label)
    print(format_compact_table(summaries, failures))
    print()
    for line in challenge_lines(summaries, failures):
        print(line)
    figures = " and figures" if summaries else ""
    print(
        f"\nwrote {out / 'table.txt'}, {out / 'results.json'}, {out / 'results.csv'}, "
        f"{out / 'episodes.csv'}{figures} to {out}/"
    )
    if failures:
        names = ", ".join(f"{f.agent} on {f.data}" for f in failures)
        what = "every agent failed" if not summaries else "failed"
        print(f"error: {what}: {names} (tracebacks in {out / 'errors.log'})", file=sys.stderr)
        return 1
    return 0


def _remove_run(out: Path) -> None:
    """Remove the run in ``out`` (its files, traces and figures; nothing else there)."""
    import shutil

    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for pattern in ("curves_*.png", "reconstructions_*.png"):
        for path in out.glob(pattern):
            path.unlink()


def _terminate(pool) -> None:
    """End a local worker pool's processes now (a running episode would otherwise finish)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


def evaluate_data(
    args: EvaluateArgs,
    data: str,
    policies: list,
    targets: list[float],
    out: Path,
    episodes,
    progress,
    pool=None,
    done: dict | None = None,
):
    """Run every policy (with its spec: ``(policy, spec)`` pairs) over the seeds on one data
    source, writing each episode to ``episodes`` (an :class:`agents.report.EpisodeWriter`) in
    the order a serial run ends them; plot; return the summaries and the failures (an agent that
    raises is one failure, the others go on). With a ``pool`` every episode is submitted at
    once and runs in a worker process, which builds its policy afresh from the spec. Episodes
    in ``done`` (traces by ``(data name, agent, seed)``, from a resumed run) are not run
    again."""
    from agents.evaluation import Failure, map_slice, summarise
    from agents.report import plot_curves, plot_reconstructions, sample_label

    done = done or {}
    data_name = _data_name(data, args.seed_start)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    submitted = None
    if pool is not None:
        submitted = [
            [
                None
                if (data_name, policy.label, seed) in done
                else pool.submit(_attempt_spec, args, data, spec, seed)
                for seed in seeds
            ]
            for policy, spec in policies
        ]
    traces_by_agent, summaries, failures = {}, [], []
    view = None  # the slice the reconstruction figure shows, from the first finished episode
    for k, (policy, _) in enumerate(policies, start=1):
        progress.set_description(f"{data_name}: agent {k}/{len(policies)} {policy.label}")
        traces, failure = [], None
        for i, seed in enumerate(seeds):
            if (data_name, policy.label, seed) in done:
                traces.append(done[data_name, policy.label, seed])
                continue
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
            progress.total -= sum(  # its remaining episodes will not run
                1 for s in seeds[seeds.index(seed) :] if (data_name, policy.label, s) not in done
            )
            progress.refresh()
            if submitted is not None:
                for future in submitted[k - 1]:
                    if future is not None:
                        future.cancel()
            continue
        traces_by_agent[policy.label] = traces
        summaries.append(summarise(traces, data_name, tuple(targets)))
    if traces_by_agent:
        if view is None:  # every episode came from the resumed run: the first seed's slice
            env = _make_env(args, data, args.seed_start)
            try:
                env.reset(seed=args.seed_start)
                view = map_slice(env.unwrapped)
            finally:
                env.close()
        stem = "twin" if data == "twin" else Path(data).stem
        title = (
            f"{data_name}, {args.seeds} seed{'s' if args.seeds > 1 else ''}\n"
            f"{sample_label(args.memory, args.programs)}"
        )
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
        return _EpisodeError(f"{type(err).__name__}: {_one_line(err)}", traceback.format_exc())


def _attempt_spec(args: EvaluateArgs, data: str, spec: str, seed: int):
    """:func:`_attempt` in a worker process, with the policy built there from its spec."""
    from agents.catalog import make_policy

    try:
        policy = make_policy(spec)
    except Exception as err:  # noqa: BLE001
        return _EpisodeError(f"{type(err).__name__}: {_one_line(err)}", traceback.format_exc())
    return _attempt(args, data, policy, seed)


def _worker_pool(workers: int, threads: int):
    """Worker processes (started afresh, not forked from a process that holds torch threads),
    each limited to ``threads`` torch threads (1 when 0), and each ending when this process
    ends, however it ends (:func:`_start_worker`)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(threads or 1, os.getpid()),
    )


def _start_worker(threads: int, parent: int) -> None:
    """A worker's start: die with the parent process ``parent`` (killed, even by SIGKILL,
    it can no longer send work, and a worker left behind would wait on its pipe forever),
    and limit the torch threads.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); everywhere a
    daemon thread also checks once a second that the parent is still the worker's parent."""
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl: the watch below still ends the worker
            pass
    if os.getppid() != parent:  # the parent died before the worker could ask to follow it
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    _limit_threads(threads)


def _limit_threads(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _data_name(data: str, seed_start: int) -> str:
    """The data's name in tables and results files: the twin says whether its seeds are held
    out (never drawn in training) or training seeds."""
    if data != "twin":
        return Path(data).name
    return "twin (held-out)" if seed_start >= HELD_OUT_SEED_START else "twin (training seeds)"


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
        memory=args.memory,
        programs=args.programs,
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
