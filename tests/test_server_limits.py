"""The instrument server's limits in time and threads, over loopback only: 20 concurrent clients
without a reset, an overall deadline for a request that trickles in, and the cap on handler
threads (503 beyond it). Every run is bounded in count and time."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import pytest

from benchmarks.server_load import run_load
from envs.data.twin import twin_dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.server import InstrumentServer


@pytest.fixture(scope="module")
def dataset():
    return twin_dataset(3, grid=(10, 10), n_times=8)


def _replay(dataset) -> ReplayInstrument:
    return ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))


def _port(url: str) -> int:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"  # these tests only ever talk to loopback
    return int(parts.port)


def _receive_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _json_answer(received: bytes) -> tuple[bytes, dict]:
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"application/json" in head
    return head, json.loads(body)


def test_twenty_concurrent_clients_get_no_reset(dataset):
    server = InstrumentServer(_replay(dataset)).start()
    try:
        result = run_load(_port(server.url), clients=20, requests=2000, timeout=10, limit=60)
    finally:
        server.stop()
    assert result["failures"] == {}, result
    assert result["statuses"] == {"200": 2000}, result


def test_request_that_trickles_in_is_cut_off_at_the_deadline(dataset):
    """One byte every 0.3 s never trips the 1 s read timeout; the 1.5 s deadline stops it."""
    server = InstrumentServer(_replay(dataset), read_timeout=1.0, request_deadline=1.5).start()
    body = json.dumps({"pixel": 0, "voltages": [0, 1, 2, 3]}).encode()  # 40 bytes: 12 s
    try:
        with socket.create_connection(("127.0.0.1", _port(server.url)), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /get_spectrum HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            answered = False
            for byte in body:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                if _readable(sock):  # answered before the body was complete
                    answered = True
                    break
                time.sleep(0.3)
            assert answered
            head, answer = _json_answer(_receive_all(sock))
            elapsed = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 408")
        assert "within the deadline of 1.5 s" in answer["error"]
        assert 1.4 < elapsed < 3.0
        # the server goes on answering
        assert run_load(_port(server.url), clients=1, requests=1)["statuses"] == {"200": 1}
    finally:
        server.stop()


def test_headers_that_trickle_in_are_cut_off_at_the_deadline(dataset):
    server = InstrumentServer(_replay(dataset), read_timeout=1.0, request_deadline=1.5).start()
    try:
        with socket.create_connection(("127.0.0.1", _port(server.url)), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /describe HTTP/1.1\r\n")
            closed = False
            for _ in range(40):  # 12 s of headers if nothing stopped them
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = True
                    break
                if _readable(sock):
                    closed = sock.recv(4096) == b""
                    break
                time.sleep(0.3)
            elapsed = time.monotonic() - started
        assert closed and elapsed < 3.0
    finally:
        server.stop()


def test_connections_over_the_cap_are_a_json_503(dataset):
    server = InstrumentServer(_replay(dataset), max_handlers=1, read_timeout=5).start()
    port = _port(server.url)
    try:
        holder = socket.create_connection(("127.0.0.1", port), timeout=5)
        holder.sendall(b"POST /go_to HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)  # the one handler thread now waits for the rest of the body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /describe HTTP/1.1\r\nHost: x\r\n\r\n")
            head, answer = _json_answer(_receive_all(sock))
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        assert "as many connections as it allows" in answer["error"]
        holder.close()
        for _ in range(3):
            time.sleep(0.2)  # the handler sees the close and frees its thread
            assert run_load(port, clients=1, requests=1)["statuses"] == {"200": 1}
    finally:
        server.stop()
