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
import dataclasses
import json
import sys
from collections.abc import Sequence

import numpy as np

from agents.catalog import make_policy
from envs.command_line import add_options, program_parser
from envs.instruments.remote import InstrumentError
from envs.live.loop import ExperimentConfig, ExperimentStopped, run_experiment
from envs.live.session import SessionError

PROG = "python experiment.py"


def _parser(defaults: dict | None = None) -> argparse.ArgumentParser:
    """The command line: ``run`` with one option per :class:`ExperimentConfig` field.
    ``defaults`` replaces the fields' defaults (to tell the options given from the others)."""
    parser = program_parser(PROG, __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run or resume a session", description=__doc__,
        formatter_class=parser.formatter_class,
    )
    run.error = parser.error  # type: ignore[method-assign]  (one line, as the program's own)
    run.add_argument("--resume", action="store_true", help="continue the session in --session")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_options(run, ExperimentConfig, defaults=defaults, required=("instrument", "session"))
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[ExperimentConfig, bool, set[str]]:
    """The session's settings, whether to resume, and the names of the settings given on the
    command line (a resume checks them against the stored ones). Bad input: one line, exit 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    fields = [f.name for f in dataclasses.fields(ExperimentConfig)]
    unset = _parser(defaults=dict.fromkeys(fields, argparse.SUPPRESS)).parse_args(argv)
    given = set(vars(unset)) & set(fields)
    values = {k: v for k, v in vars(args).items() if k in fields}
    try:
        config = ExperimentConfig(**values, progress=not args.quiet)
    except ValueError as err:
        parser.error(str(err))
    return config, args.resume, given


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 stopped/failed, 2 bad
    settings, 130 Ctrl-C)."""
    config, resume, given = parse_args(argv)
    try:
        result = run_experiment(config, resume=resume, make_policy=make_policy, given=given)
    except ExperimentStopped as err:
        print(str(err), file=sys.stderr)
        return 130 if isinstance(err.__cause__, KeyboardInterrupt) else 1
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (SessionError, InstrumentError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
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
