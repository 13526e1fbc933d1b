"""Run a live acquisition session: the policy picks, the instrument measures, nothing is lost.

    python experiment.py run --instrument http://127.0.0.1:8765 --agent gp-uncertainty \\
        --budget-hours 2 --stop-r2 0.9 --session runs/s1.h5
    python experiment.py run --instrument http://127.0.0.1:8765 --session runs/s1.h5 --resume

The loop, the session file and the accuracy estimate live in :mod:`envs.live.loop`; this
program only reads the command line and chooses the policy by name (:mod:`agents.catalog`).
Instruments: ``http://HOST:PORT`` (a server speaking the protocol of
:mod:`envs.instruments.remote`), or
``replay:SPEC`` / ``SPEC`` for a local replay of a data spec (``twin:SEED``, an h5/npy path).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from agents.catalog import make_policy
from agents.command_line import json_object
from envs.instruments.remote import InstrumentError
from envs.live.accuracy_estimate import ESTIMATES
from envs.live.loop import ExperimentConfig, ExperimentStopped, run_experiment
from envs.live.session import SessionError


def _parser() -> argparse.ArgumentParser:
    defaults = ExperimentConfig(instrument="", session="")
    parser = argparse.ArgumentParser(
        prog="python experiment.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run or resume a session")
    run.add_argument("--instrument", required=True,
                     help="http://HOST:PORT, or replay:SPEC / SPEC with SPEC twin:SEED or a file")
    run.add_argument("--session", required=True, help="session h5 file (outputs go beside it)")
    run.add_argument("--resume", action="store_true", help="continue the session in --session")
    run.add_argument("--agent", default=defaults.agent, help="policy (a name from agents.catalog)")
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--budget-hours", type=float, default=defaults.budget_hours)
    run.add_argument("--stop-r2", type=float, default=defaults.stop_r2,
                     help="stop when the estimated R^2 reaches this (negative: no target)")
    run.add_argument("--reconstructor", default=defaults.reconstructor)
    run.add_argument("--reconstructor-options", type=json_object, default={}, metavar="JSON",
                     help='reconstructor options, e.g. \'{"error_calibration": "online"}\'')
    run.add_argument("--n-blocks", type=int, default=defaults.n_blocks)
    run.add_argument("--initial-stride", type=int, default=defaults.initial_stride)
    run.add_argument("--check-blocks", type=int, default=defaults.check_blocks,
                     help="held-back blocks that calibrate the accuracy estimate")
    run.add_argument("--estimate", choices=ESTIMATES, default=defaults.estimate,
                     help="accuracy estimate; 'sampled' verifies a stop with an audit round")
    run.add_argument("--audit-draws", type=int, default=defaults.audit_draws,
                     help="blocks drawn per audit round (estimate 'sampled')")
    run.add_argument("--estimate-every", type=int, default=defaults.estimate_every)
    run.add_argument("--max-measurements", type=int, default=None)
    run.add_argument(
        "--algorithm-clock", choices=("wall", "model"), default=defaults.algorithm_clock
    )
    run.add_argument("--on-nan", choices=("skip", "stop"), default=defaults.on_nan)
    run.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds per call")
    run.add_argument("--pace", type=float, default=0.0, help="real-time factor for a replay")
    run.add_argument("--reference", default=None,
                     help="data spec of the truth, to report the true R^2 beside the estimate")
    run.add_argument("--twin-grid", type=int, default=None)
    run.add_argument("--twin-times", type=int, default=None)
    run.add_argument("--device", default="auto")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 stopped/failed, 130 Ctrl-C)."""
    args = _parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("command", "resume", "quiet")}
    options["stop_r2"] = None if args.stop_r2 is not None and args.stop_r2 < 0 else args.stop_r2
    options["progress"] = not args.quiet
    try:
        result = run_experiment(
            ExperimentConfig(**options), resume=args.resume, make_policy=make_policy
        )
    except ExperimentStopped as err:
        print(str(err), file=sys.stderr)
        return 130 if isinstance(err.__cause__, KeyboardInterrupt) else 1
    except (SessionError, ValueError, InstrumentError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    true = f", true R^2 {result.r2_true:.4f}" if np.isfinite(result.r2_true) else ""
    print(f"finished: {result.reason}")
    print(
        f"{result.n_records} measurements, {result.seconds / 3600:.3f} h, estimated R^2 "
        f"{result.r2_estimate:.4f}{true}"
    )
    dynamics = json.loads(result.summary.read_text()).get("r2_dynamics_true")
    if dynamics is not None:
        print(f"dynamics R^2 (relaxation part alone) against the reference {dynamics:.4f}")
    print(f"session {result.session}\nreconstruction {result.reconstruction}\n"
          f"summary {result.summary}\nfigure {result.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
