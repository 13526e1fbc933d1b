"""Serve a dataset as a network instrument (protocol pfm-instrument/2), until Ctrl-C.

A twin is measured with its sample's memory (each pixel's pulses simulated from the state its
earlier pulses left, envs/instruments/memory.py); a recorded file is replayed. ``--memory off``
replays a twin too, as a sample without memory would answer.

The live loop (experiment.py) drives it as it would drive a microscope's own server:

    python serve.py --data twin:0 --twin-grid 24 --port 8765
    python serve.py --data scan.h5 --pace 10                    # 10x faster than real time
    python serve.py --data twin:0 --host 0.0.0.0 --token-file token   # beyond this machine

The protocol is documented in envs/instruments/remote.py; the server in
envs/instruments/server.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.command_line import add_options, option, program_parser, settings_from
from envs.data.sources import open_data
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, PacedInstrument
from envs.instruments.memory import instrument_for, memory_option, memory_setting
from envs.instruments.remote import TOKEN_ENV, read_token, require_token_beyond_loopback
from envs.instruments.server import (
    MAX_BODY_BYTES,
    MAX_HANDLERS,
    READ_TIMEOUT_SECONDS,
    REQUEST_DEADLINE_SECONDS,
    InstrumentServer,
)

PROG = "python serve.py"
MIN_TWIN_GRID = 4  # the twin's smallest grid side


@dataclass
class ServeSettings:
    """What to serve and how; checked in ``__post_init__`` (ValueError naming the option)."""

    data: str = option("", "'twin', 'twin:SEED' or an h5/npy path", metavar="SPEC")
    host: str = option("127.0.0.1", "address to listen on; beyond loopback a token is required")
    port: int = option(8765, "port to listen on, 0 to 65535; 0 picks a free one")
    token_file: str | None = option(
        None, f"file holding the shared token clients must send (default: ${TOKEN_ENV}; "
        "optional on loopback)", metavar="FILE"
    )
    pace: float = option(0.0, "sleep instrument seconds / PACE per call (0: no pacing)")
    twin_grid: int | None = option(None, "twin grid side (twin only)", metavar="N")
    twin_times: int | None = option(None, "twin read-outs per curve (twin only)", metavar="T")
    memory: str = memory_option()
    max_body_bytes: int = option(MAX_BODY_BYTES, "longest request body accepted")
    read_timeout: float = option(READ_TIMEOUT_SECONDS,
                                 "seconds to wait for the next bytes of a request")
    request_deadline: float = option(REQUEST_DEADLINE_SECONDS,
                                     "seconds one request may take to arrive in all")
    max_handlers: int = option(MAX_HANDLERS,
                               "connections handled at once; more are answered 503")

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required: 'twin', 'twin:SEED' or an h5/npy path")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0 to 65535, got {self.port}")
        if self.pace < 0:
            raise ValueError(f"--pace must be >= 0, got {self.pace:g}")
        if self.twin_grid is not None and self.twin_grid < MIN_TWIN_GRID:
            raise ValueError(f"--twin-grid must be >= {MIN_TWIN_GRID}, got {self.twin_grid}")
        if self.twin_times is not None and self.twin_times < 1:
            raise ValueError(f"--twin-times must be >= 1, got {self.twin_times}")
        for name in ("max_body_bytes", "max_handlers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, "
                                 f"got {getattr(self, name)}")
        for name in ("read_timeout", "request_deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0 seconds, "
                                 f"got {getattr(self, name):g}")


def parse_args(argv: Sequence[str] | None = None) -> ServeSettings:
    """The settings from the command line; bad input exits 2 with one line."""
    parser = program_parser(PROG, __doc__)
    add_options(parser, ServeSettings, required=("data",))
    args = parser.parse_args(argv)
    try:
        return settings_from(ServeSettings, args)
    except ValueError as err:
        parser.error(str(err))


def make_instrument(settings: ServeSettings) -> tuple[Instrument, str]:
    """The instrument of ``settings.data`` (a twin with its memory, or a replay), paced when
    asked, and what it measures."""
    twin_options: dict[str, Any] = {}
    if settings.twin_grid is not None:
        twin_options["grid"] = (settings.twin_grid, settings.twin_grid)
    if settings.twin_times is not None:
        twin_options["n_times"] = settings.twin_times
    dataset = open_data(settings.data, **twin_options)
    cost_model = CostModel().for_axes(dataset.axes)
    instrument: Instrument = instrument_for(dataset, cost_model, memory_setting(settings.memory))
    if settings.pace > 0:
        instrument = PacedInstrument(instrument, settings.pace)
    return instrument, dataset.summary()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C; returns the exit status (0 stopped, 2 bad settings or cannot serve).
    Every failure to start is one line ``python serve.py: error: ...``."""
    settings = parse_args(argv)
    try:  # before the data is loaded and anything is bound
        token = read_token(token_file=settings.token_file)
        require_token_beyond_loopback(settings.host, token)
        instrument, summary = make_instrument(settings)
    except ValueError as err:  # DataError is one
        return _error(str(err))
    try:
        server = InstrumentServer(
            instrument, settings.host, settings.port, token=token,
            max_body_bytes=settings.max_body_bytes, read_timeout=settings.read_timeout,
            request_deadline=settings.request_deadline, max_handlers=settings.max_handlers,
        )
    except OSError as err:
        reason = err.strerror or str(err)
        return _error(f"cannot listen on {settings.host}:{settings.port}: {reason}")
    access = "token required" if token else "no token"
    print(f"serving {summary} at {server.url} ({access}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.close()
    return 0


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
