"""The instrument server under concurrent clients, over loopback: resets, errors and latency.

Run ``python -m benchmarks.server_load`` (``--help`` for options). It serves a small twin replay
on 127.0.0.1 and lets ``--clients`` threads (default 20) send ``--requests`` requests in all
(default 2,000; ``GET /describe``, one new connection each, as the client instrument opens
them), once with the listen backlog of Python's socketserver (5) and once with the server's
(:data:`envs.instruments.server.BACKLOG`), and prints, for each, the connection resets, other
failures, wall seconds and latency percentiles as JSON. Each run is bounded: every request
waits at most ``--timeout`` seconds and a run stops sending after ``--limit`` seconds.

Numbers are for the machine it runs on; compare the two runs of one invocation.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any

import numpy as np

from envs.data.twin import twin_dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.server import BACKLOG, InstrumentServer

SOCKETSERVER_BACKLOG = 5  # socketserver.TCPServer.request_queue_size


def run_load(
    port: int,
    clients: int = 20,
    requests: int = 2000,
    timeout: float = 10.0,
    limit: float = 60.0,
    path: str = "/describe",
) -> dict[str, Any]:
    """``requests`` GETs of ``path`` on ``127.0.0.1:port`` from ``clients`` threads, each on a
    new connection: counts of answers by status, resets, other failures, and latencies."""
    statuses: dict[int, int] = {}
    failures: dict[str, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [requests]
    started = time.monotonic()

    def take() -> bool:
        with lock:
            if remaining[0] <= 0 or time.monotonic() - started > limit:
                return False
            remaining[0] -= 1
            return True

    def client() -> None:
        while take():
            begin = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
                outcome: int | str = answer.status
            except OSError as err:  # ConnectionResetError, timeouts, refusals, ...
                outcome = type(err).__name__
            except http.client.HTTPException as err:
                outcome = type(err).__name__
            finally:
                connection.close()
            with lock:
                latencies.append(time.monotonic() - begin)
                if isinstance(outcome, int):
                    statuses[outcome] = statuses.get(outcome, 0) + 1
                else:
                    failures[outcome] = failures.get(outcome, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(limit + timeout + 5)
    wall = time.monotonic() - started
    seconds = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": requests,
        "sent": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "resets": failures.get("ConnectionResetError", 0),
        "failures": failures,
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 1),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(seconds, q)) * 1000, 2) for q in (50, 90, 99, 100)
        },
    }


def serve_and_load(backlog: int, **load: Any) -> dict[str, Any]:
    """:func:`run_load` against a fresh loopback server with the listen backlog ``backlog``."""
    dataset = twin_dataset(0, grid=(10, 10), n_times=8)
    instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    server = InstrumentServer(instrument, backlog=backlog).start()
    try:
        port = int(server.url.rsplit(":", 1)[1])
        return {"backlog": backlog, **run_load(port, **load)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_load",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    load = {"clients": args.clients, "requests": args.requests, "timeout": args.timeout,
            "limit": args.limit}
    results = [serve_and_load(backlog, **load) for backlog in (SOCKETSERVER_BACKLOG, BACKLOG)]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
