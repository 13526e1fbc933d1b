"""Does the live loop stop where it says it does? Estimated against true R^2 at the stop.

The live loop (:mod:`envs.live.loop`) stops when its accuracy estimate, which never reads the
ground truth, reaches the target. This study runs that loop itself (``run_experiment``, over a
local instrument, the truth given as ``reference`` so that the true R^2 is recorded beside each
estimate; a twin remembers its pulses unless ``--memory off``) on held-out twins or on data
files, once per accuracy estimate asked for, and reports at the stop: the estimate, the true
R^2, the instrument hours and how many blocks the audit rounds measured.

Goal (the defaults): at the stop the estimate lies within ``--tolerance`` (0.03) of the true
R^2 in at least ``--min-within`` (90 %) of the runs, and the true R^2 is at least
``target - tolerance`` in every run.

Runs. ``--data twin`` (the default) takes ``--seeds`` held-out twins per grid side in
``--grids``, consecutive from ``--start`` (one grid after the other, so each twin is used once);
every run uses its twin's seed as the session seed. A data file is replayed ``--seeds`` times
with session seeds ``--start``, ``--start + 1``, ... (the check blocks and the audit draws
change; the data do not). The algorithm clock is the cost model's, so every run is
reproducible to the bit.

Outputs (in ``--out``): ``live_stop.json`` (settings, one row per run with its trace),
``live_stop.csv`` (the rows without traces), ``live_stop.png`` (estimate against true R^2 at the
stop, and the traces of both against instrument hours), and the session files under
``sessions/``.

Examples
--------
    python -m studies.live_stop --grids 24,30 --seeds 10 --start 100800 --out runs/live_stop
    python -m studies.live_stop --estimates sampled,calibrated --grids 24 --seeds 3
    python -m studies.live_stop --data ../shared/data/bepfm_32x32x102.npy --seeds 5 --start 0
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.acquisition.programs import RULES
from envs.command_line import OneLineParser, json_object, positive_int
from envs.instruments.memory import MEMORY_SETTINGS
from envs.live.accuracy_estimate import ESTIMATES
from envs.live.loop import ExperimentConfig, run_experiment
from envs.live.session import KIND_AUDIT, Session

#: Columns of ``live_stop.csv`` (the JSON rows also hold the traces).
COLUMNS = (
    "data", "grid", "seed", "estimate", "reason", "measurements", "audit_measurements",
    "instrument_hours", "hours_true_reached", "r2_estimate", "r2_lower_bound", "r2_true",
    "error", "within",
)


@dataclass(frozen=True)
class Run:
    """One session to run: the data spec, its twin grid side (None for a file), the seed."""

    data: str
    grid: int | None
    seed: int


def plan_runs(data: str, grids: Sequence[int], n_seeds: int, start: int) -> list[Run]:
    """The runs of the study (see the module docstring)."""
    if data != "twin":
        return [Run(data, None, start + i) for i in range(n_seeds)]
    from envs.data.sources import held_out_seeds

    seeds = iter(held_out_seeds(n_seeds * len(grids), start))
    return [Run(f"twin:{seed}", grid, seed) for grid in grids for seed in _take(seeds, n_seeds)]


def _take(iterator, n: int) -> list[int]:
    return [next(iterator) for _ in range(n)]


def run_one(
    run: Run,
    estimate: str,
    settings: dict[str, Any],
    sessions: Path,
    tolerance: float,
) -> dict[str, Any]:
    """Run one live session to its stop; its row (with its trace of estimate and truth)."""
    name = run.data.replace(":", "_").replace("/", "_")
    session = sessions / f"{name}_g{run.grid or 0}_s{run.seed}_{estimate}.h5"
    for stale in sessions.glob(f"{session.stem}*"):  # a rerun starts a new session
        stale.unlink()
    config = ExperimentConfig(
        instrument=f"replay:{run.data}",
        session=str(session),
        reference=run.data,
        twin_grid=run.grid,
        seed=run.seed,
        estimate=estimate,
        algorithm_clock="model",
        progress=False,
        **settings,
    )
    from agents.catalog import make_policy

    result = run_experiment(config, make_policy=make_policy)
    summary = json.loads(result.summary.read_text())
    with Session.open(session) as opened:
        records = opened.records()
    known = np.isfinite(records.r2_estimate)
    hours = np.cumsum(records.instrument_seconds) / 3600.0
    target = settings["stop_r2"]
    # When the truth first reached the target (at the estimates' cadence): what an oracle stop
    # would have spent, to set the hours of the stop against.
    reached = known & (records.r2_true >= target) if target is not None else known & False
    error = result.r2_estimate - result.r2_true
    return {
        "data": run.data,
        "grid": run.grid,
        "seed": run.seed,
        "estimate": estimate,
        "reason": result.reason,
        "measurements": result.n_records,
        "audit_measurements": int((records.kind == KIND_AUDIT).sum()),
        "instrument_hours": summary["instrument_hours"],
        "hours_true_reached": float(hours[reached][0]) if reached.any() else None,
        "r2_estimate": result.r2_estimate,
        "r2_lower_bound": summary.get("r2_lower_bound"),
        "r2_true": result.r2_true,
        "error": error,
        "within": bool(abs(error) <= tolerance),
        "stopped_on_target": bool(target is not None and "reached the target" in result.reason),
        "trace": {
            "hours": hours[known].tolist(),
            "estimate": records.r2_estimate[known].tolist(),
            "true": records.r2_true[known].tolist(),
        },
    }


def goal(rows: Sequence[dict[str, Any]], target: float, tolerance: float, min_within: float
         ) -> dict[str, Any]:
    """Whether the runs of one estimate meet the goal of the module docstring."""
    n = len(rows)
    within = sum(bool(r["within"]) for r in rows)
    floor = target - tolerance
    above = sum(bool(r["r2_true"] >= floor) for r in rows)
    return {
        "runs": n,
        "within": within,
        "true_above_floor": above,
        "met": bool(n and within >= min_within * n and above == n),
    }


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: Sequence[dict[str, Any]], target: float, tolerance: float, path: Path) -> Path:
    """Estimate against true R^2 at the stop (one marker per run and estimate), and the traces
    of every run's estimate (solid) and true R^2 (dotted) against instrument hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimates = list(dict.fromkeys(r["estimate"] for r in rows))
    fig, axes = plt.subplots(1, 1 + len(estimates), figsize=(5.2 * (1 + len(estimates)), 4.6))
    ax = axes[0]
    low = min([target - 0.15] + [r["r2_true"] for r in rows] + [r["r2_estimate"] for r in rows])
    line = np.array([max(low, -0.5), 1.0])
    ax.fill_between(line, line - tolerance, line + tolerance, color="0.9", label=f"±{tolerance}")
    ax.plot(line, line, color="0.5", lw=0.8)
    ax.axvline(target - tolerance, color="tab:red", ls=":", lw=0.8, label="target - tolerance")
    for kind, colour in zip(estimates, plt.rcParams["axes.prop_cycle"].by_key()["color"],
                            strict=False):
        picked = [r for r in rows if r["estimate"] == kind]
        for grid, marker in zip(sorted({r["grid"] or 0 for r in picked}), "o^sD", strict=False):
            chosen = [r for r in picked if (r["grid"] or 0) == grid]
            ax.scatter(
                [r["r2_true"] for r in chosen], [r["r2_estimate"] for r in chosen],
                color=colour, marker=marker, s=28,
                label=f"{kind}" + (f", {grid} x {grid}" if grid else ""),
            )
    ax.set_xlim(line)
    ax.set_ylim(line)
    ax.set_xlabel("true R^2 at the stop")
    ax.set_ylabel("estimated R^2 at the stop")
    ax.set_title(f"at the stop (target {target})")
    ax.legend(fontsize=7, loc="lower right")
    for ax, kind in zip(axes[1:], estimates, strict=True):
        for i, r in enumerate(r for r in rows if r["estimate"] == kind):
            colour = f"C{i % 10}"
            trace = r["trace"]
            ax.plot(trace["hours"], trace["estimate"], color=colour, lw=0.9)
            ax.plot(trace["hours"], trace["true"], color=colour, lw=0.9, ls=":")
        ax.axhline(target, color="0.4", ls="--", lw=0.8)
        ax.set_ylim(max(low, 0.0), 1.0)
        ax.set_xlabel("instrument hours")
        ax.set_title(f"{kind}: estimate (solid), true (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ints(text: str) -> list[int]:
    values = [positive_int(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("needs at least one value")
    return values


def _estimates(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ESTIMATES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ESTIMATES)}; got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the report it wrote (settings, rows, goals)."""
    parser = OneLineParser(
        prog="python -m studies.live_stop", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default="twin", help="'twin' (held-out twins) or a data file")
    parser.add_argument("--grids", type=_ints, default=[24, 30], help="twin grid sides, e.g. 24,30")
    parser.add_argument("--seeds", type=positive_int, default=10,
                        help="twins per grid side (a data file: sessions)")
    parser.add_argument("--start", type=int, default=100_800, help="first twin or session seed")
    parser.add_argument("--estimates", type=_estimates, default=["sampled"],
                        help=f"comma-separated, from {', '.join(ESTIMATES)}")
    parser.add_argument("--target", type=float, default=0.9, help="the stop's R^2 target")
    parser.add_argument("--agent", default="gp-uncertainty-per-second", help="policy name")
    parser.add_argument("--budget-hours", type=float, default=2.0)
    parser.add_argument("--n-blocks", type=positive_int, default=4)
    parser.add_argument("--check-blocks", type=int, default=48)
    parser.add_argument("--audit-draws", type=positive_int, default=96)
    parser.add_argument("--initial-stride", type=positive_int, default=6)
    parser.add_argument("--twin-times", type=positive_int, default=None, help="twin read-outs")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--min-within", type=float, default=0.9,
                        help="share of runs whose estimate must lie within the tolerance")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", default="auto", choices=MEMORY_SETTINGS,
                        help="the sample's memory (auto: a twin remembers its pulses)")
    parser.add_argument("--programs", default="sequence", choices=RULES,
                        help="the program rule ('free': a sample without memory)")
    parser.add_argument("--reconstructor-options", type=json_object, default={}, metavar="JSON",
                        help='options of the "gp" reconstructor, e.g. \'{"error_calibration": '
                        '"online"}\'')
    parser.add_argument("--out", default="runs/live_stop", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.target <= 1:
        parser.error(f"--target must be an R^2 <= 1, got {args.target}")
    if args.data != "twin" and not Path(args.data).exists():
        parser.error(f"--data {args.data}: no such file")
    if args.data == "twin" and args.start < 100_000:
        parser.error(f"--start {args.start} is a training seed; held-out twins start at 100000")

    out = Path(args.out)
    sessions = out / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    settings = {
        "agent": args.agent, "stop_r2": args.target, "budget_hours": args.budget_hours,
        "n_blocks": args.n_blocks, "check_blocks": args.check_blocks,
        "audit_draws": args.audit_draws, "initial_stride": args.initial_stride,
        "twin_times": args.twin_times, "device": args.device,
        "reconstructor_options": args.reconstructor_options,
        "memory": args.memory, "programs": args.programs,
    }
    runs = plan_runs(args.data, args.grids, args.seeds, args.start)
    jobs = [(run, kind) for kind in args.estimates for run in runs]
    rows = []
    for run, kind in tqdm(jobs, unit="run", disable=args.quiet):
        row = run_one(run, kind, settings, sessions, args.tolerance)
        rows.append(row)
        if not args.quiet:
            tqdm.write(
                f"{row['data']:>16} {row['grid'] or '-':>3} {kind:>10}: estimate "
                f"{row['r2_estimate']:.3f} true {row['r2_true']:.3f} at "
                f"{row['instrument_hours']:.3f} h ({row['audit_measurements']} audit blocks)"
            )
    goals = {
        kind: goal([r for r in rows if r["estimate"] == kind], args.target, args.tolerance,
                   args.min_within)
        for kind in args.estimates
    }
    report = {"settings": {**vars(args), **settings}, "goals": goals, "rows": rows}
    (out / "live_stop.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    _write_csv(rows, out / "live_stop.csv")
    plot(rows, args.target, args.tolerance, out / "live_stop.png")
    print(f"{'estimate':>10} {'runs':>4} {'within':>6} {'true>=floor':>11} {'mean |err|':>10}"
          f" {'mean h':>7}  goal")
    for kind, g in goals.items():
        picked = [r for r in rows if r["estimate"] == kind]
        print(
            f"{kind:>10} {g['runs']:>4} {g['within']:>6} {g['true_above_floor']:>11} "
            f"{np.mean([abs(r['error']) for r in picked]):>10.3f} "
            f"{np.mean([r['instrument_hours'] for r in picked]):>7.3f}  "
            f"{'met' if g['met'] else 'NOT met'} (within {args.tolerance} in >= "
            f"{args.min_within:.0%}, true >= {args.target - args.tolerance:.2f} in all)"
        )
    print(f"results in {out}/live_stop.json, .csv and .png")
    return report


if __name__ == "__main__":
    main()
