"""The instrument server under hostile or broken requests, over loopback only: size and list
limits, bad headers, other methods, and access tokens. Every refusal is the protocol's JSON error.
The rule that a server beyond loopback needs a token is tested without binding anything."""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

import serve
from envs.data.twin import twin_dataset
from envs.instruments import server as server_module
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.remote import (
    TOKEN_ENV,
    InstrumentError,
    RemoteInstrument,
    is_loopback,
    read_token,
)
from envs.instruments.server import MAX_BODY_BYTES, InstrumentServer, serving

READ_TIMEOUT = 1.0  # the server's wait for a stalled body, short to keep the tests fast


@pytest.fixture(scope="module")
def dataset():
    return twin_dataset(3, grid=(10, 10), n_times=8)


@pytest.fixture(scope="module")
def server(dataset):
    instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    server = InstrumentServer(instrument, read_timeout=READ_TIMEOUT).start()
    yield server
    server.stop()


def _connect(url: str, timeout: float = 5.0) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"  # these tests only ever talk to loopback
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def _exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with exactly the headers given (no Content-Length added): status, headers and
    body of the answer."""
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.endheaders(body or None)
    answer = connection.getresponse()
    return answer.status, answer.headers, answer.read()


def _request(url: str, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"", timeout: float = 5.0) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = _connect(url, timeout)
    try:
        return _exchange(connection, method, path, headers, body)
    finally:
        connection.close()


def _post(url: str, path: str, payload: object) -> tuple[int, dict]:
    data = json.dumps(payload).encode()
    status, headers, body = _request(url, "POST", path, {"Content-Length": str(len(data))}, data)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def _error(status_headers_body: tuple[int, http.client.HTTPMessage, bytes]) -> tuple[int, str]:
    """Status and message of a JSON error answer."""
    status, headers, body = status_headers_body
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)["error"]


def _describe_answers(url: str, within: float = 2.0) -> bool:
    status, _, body = _request(url, "GET", "/describe", timeout=within)
    return status == 200 and json.loads(body)["protocol"] == "pfm-instrument/2"


# ============================================================================ sizes and lists
def test_oversize_body_is_refused_unread_while_describe_answers(server):
    repeats = json.dumps({"pixel": 0, "voltages": [0] * 2_500_000}).encode()  # 7.5 MB
    assert len(repeats) > MAX_BODY_BYTES
    connection = _connect(server.url, timeout=10)
    try:
        connection.putrequest("POST", "/get_spectrum")
        connection.putheader("Content-Length", str(len(repeats)))
        connection.endheaders(repeats[: 1024 * 1024])  # the first megabyte, then a pause
        started = time.monotonic()
        assert _describe_answers(server.url)
        assert time.monotonic() - started < 2.0
        connection.send(repeats[1024 * 1024:])
        answer = connection.getresponse()
        assert answer.status == 413
        assert answer.headers["Connection"] == "close"
        message = json.loads(answer.read())["error"]
    finally:
        connection.close()
    assert f"({MAX_BODY_BYTES} bytes)" in message and str(len(repeats)) in message
    assert _describe_answers(server.url)


def test_stalled_body_holds_no_lock_and_times_out(server):
    connection = _connect(server.url, timeout=10)
    try:
        connection.putrequest("POST", "/get_spectrum")
        connection.putheader("Content-Length", "1000")
        connection.endheaders(b'{"pixel": 0, "voltages": [')  # and nothing more
        started = time.monotonic()
        assert _describe_answers(server.url)
        assert _post(server.url, "/go_to", {"pixel": 5})[0] == 200
        assert time.monotonic() - started < READ_TIMEOUT
        answer = connection.getresponse()
        assert answer.status == 408
        assert "not received within 1 s" in json.loads(answer.read())["error"]
    finally:
        connection.close()


def test_repeated_and_too_many_voltages_are_refused(server, dataset):
    n_voltages = dataset.shape[2]
    status, answer = _post(server.url, "/get_spectrum", {"pixel": 0, "voltages": [3, 1, 3]})
    assert status == 400 and "voltage 3 is listed more than once" in answer["error"]

    every_voltage_and_one = list(range(n_voltages)) + [0]
    status, answer = _post(server.url, "/get_spectrum", {"pixel": 0,
                                                         "voltages": every_voltage_and_one})
    assert status == 400
    assert f"lists {n_voltages + 1} voltages; this instrument has {n_voltages}" in answer["error"]

    # 50,000 repeats fit in the body limit; the answer is a short error, not 50,000 spectra
    data = json.dumps({"pixel": 0, "voltages": [0] * 50_000}).encode()
    status, _, body = _request(server.url, "POST", "/get_spectrum",
                               {"Content-Length": str(len(data))}, data)
    assert status == 400 and len(body) < 500

    status, answer = _post(server.url, "/get_spectrum", {"pixel": 0, "voltages": []})
    assert status == 400 and "list 1 to" in answer["error"]

    status, answer = _post(server.url, "/get_spectrum",
                           {"pixel": 0, "voltages": list(range(n_voltages))})  # all, once each
    assert status == 200 and np.asarray(answer["values"]).shape == dataset.shape[2:]

    remote = RemoteInstrument(server.url, timeout=5)
    with pytest.raises(InstrumentError, match="HTTP 400.*listed more than once"):
        remote.measure(0, np.array([2, 2]))


def test_malformed_bodies_are_json_errors_and_keep_the_connection(server):
    connection = _connect(server.url)
    try:
        for body, message in [
            (b"{not json", "body is not JSON"),
            (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),  # nested past the parser
            (b"\xff\xfe\x00", "body is not JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"pixel": "0"}', "'pixel' must be an integer"),
            (b'{"pixel": 0, "voltages": [0.5]}', "'voltages' must be a list of integers"),
        ]:
            status, message_got = _error(_exchange(
                connection, "POST", "/get_spectrum", {"Content-Length": str(len(body))}, body
            ))
            assert status == 400 and message in message_got
        # the body was read, so the same connection serves the next request
        assert _exchange(connection, "GET", "/describe")[0] == 200
    finally:
        connection.close()


# ============================================================================ headers and methods
@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Content-Length": "-5"}, 400, "Content-Length must be one whole number"),
        ({"Content-Length": "twelve"}, 400, "Content-Length must be one whole number"),
        ({"Content-Length": "1e3"}, 400, "Content-Length must be one whole number"),
        ({}, 411, "Content-Length is required"),
        ({"Transfer-Encoding": "chunked"}, 411, "chunked bodies are not accepted"),
    ],
)
def test_bad_content_length_is_a_json_error(server, headers, status, message):
    answer = _request(server.url, "POST", "/go_to", headers)
    status_got, message_got = _error(answer)
    assert status_got == status and message in message_got


def test_two_content_lengths_are_refused(server):
    connection = _connect(server.url)
    try:
        connection.putrequest("POST", "/go_to")
        connection.putheader("Content-Length", "2")
        connection.putheader("Content-Length", "12")
        connection.endheaders(b"{}")
        answer = connection.getresponse()
        assert answer.status == 400 and answer.headers["Connection"] == "close"
        assert "one whole number" in json.loads(answer.read())["error"]
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_are_json_405_with_allow(server, method):
    status, headers, body = _request(server.url, method, "/describe", {"Content-Length": "2"},
                                     b"{}")
    assert status == 405 and headers["Allow"] == "GET, POST"
    assert headers["Content-Type"] == "application/json"
    assert f"method {method} is not part of the protocol" in json.loads(body)["error"]


def test_head_is_405_with_headers_only(server):
    status, headers, body = _request(server.url, "HEAD", "/describe")
    assert status == 405 and headers["Allow"] == "GET, POST" and body == b""
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) > 0


def test_malformed_request_line_is_a_json_error(server):
    port = urlsplit(server.url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert "error" in json.loads(body)


def test_server_options_are_checked(dataset):
    instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    with pytest.raises(ValueError, match="max_body_bytes must be > 0"):
        InstrumentServer(instrument, max_body_bytes=0)
    small = InstrumentServer(instrument, max_body_bytes=100).start()
    try:
        status, message = _error(_request(small.url, "POST", "/get_spectrum",
                                          {"Content-Length": "101"}, b" " * 101))
        assert status == 413 and "(100 bytes)" in message
    finally:
        small.stop()


# ============================================================================ access tokens
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def no_token_in_environment(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def guarded(dataset, no_token_in_environment):
    """A loopback server that requires :data:`TOKEN`."""
    instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    with serving(instrument, token=TOKEN) as url:
        yield url


def test_missing_or_wrong_token_is_a_json_401(guarded):
    for headers, message in [
        ({}, "needs its token: send the header 'Authorization: Bearer TOKEN'"),
        ({"Authorization": "Bearer not-the-token"}, "wrong token"),
        ({"Authorization": f"Basic {TOKEN}"}, "wrong token"),
    ]:
        status, answer_headers, body = _request(guarded, "GET", "/describe", headers)
        assert status == 401 and answer_headers["WWW-Authenticate"].startswith("Bearer")
        assert message in json.loads(body)["error"]
    # refused before the body is read: the connection closes after the answer
    data = json.dumps({"pixel": 0, "voltages": [0]}).encode()
    status, answer_headers, _ = _request(
        guarded, "POST", "/get_spectrum",
        {"Content-Length": str(len(data)), "Authorization": "Bearer wrong"}, data,
    )
    assert status == 401 and answer_headers["Connection"] == "close"
    status, _, _ = _request(guarded, "PUT", "/describe")  # no method is let past without it
    assert status == 401


def test_client_without_or_with_wrong_token_is_told_how_to_give_one(guarded):
    for token in (None, "not-the-token"):
        with pytest.raises(InstrumentError, match=rf"HTTP 401.*token=.*\${TOKEN_ENV}"):
            RemoteInstrument(guarded, timeout=5, token=token)


def test_right_token_from_argument_file_or_environment(guarded, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `print(...) > token` writes it
    by_argument = RemoteInstrument(guarded, timeout=5, token=TOKEN)
    by_file = RemoteInstrument(guarded, timeout=5, token_file=token_file)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    by_environment = RemoteInstrument(guarded, timeout=5)
    for remote in (by_argument, by_file, by_environment):
        values, _ = remote.measure(7, np.array([0, 3]))
        assert values.shape == (2, 8)


def test_loopback_server_without_token_ignores_a_token(server, no_token_in_environment):
    remote = RemoteInstrument(server.url, timeout=5, token=TOKEN)
    assert remote.go_to(3) >= 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("::1", True),
     ("0.0.0.0", False), ("", False), ("::", False), ("192.168.1.20", False),
     ("lab-pc.example", False)],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


class _WouldBind(Exception):
    pass


@pytest.fixture
def bind_attempts(monkeypatch):
    """The addresses the server tries to bind, none of them bound: the access check must
    refuse before any attempt."""
    attempts: list[tuple[str, int]] = []

    def record(address, handler, **options):
        attempts.append(address)
        raise _WouldBind

    monkeypatch.setattr(server_module, "_Listener", record)
    return attempts


def test_serving_beyond_loopback_needs_a_token_before_binding(dataset, bind_attempts):
    instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    for host in ("0.0.0.0", "192.168.1.20", ""):
        with pytest.raises(ValueError, match="needs a shared token.*--token-file FILE"):
            InstrumentServer(instrument, host)
    assert bind_attempts == []
    with pytest.raises(_WouldBind):  # with a token it goes on to bind
        InstrumentServer(instrument, "0.0.0.0", token=TOKEN)
    assert bind_attempts == [("0.0.0.0", 0)]


def test_serve_command_beyond_loopback_without_token_is_one_line(
    bind_attempts, no_token_in_environment, tmp_path, capsys
):
    assert serve.main(["--data", "twin:0", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--token-file FILE" in error and TOKEN_ENV in error
    (tmp_path / "empty").write_text("\n")
    for token_file, message in [(tmp_path / "missing", "cannot read the token file"),
                                (tmp_path / "empty", "is empty")]:
        assert serve.main(["--data", "twin:0",
                                   "--token-file", str(token_file)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error
    assert bind_attempts == []


def test_tokens_a_header_cannot_carry_are_refused(no_token_in_environment):
    for bad in ("", "  ", "two words", "caf\u00e9"):
        with pytest.raises(ValueError, match="token"):
            read_token(bad)
    assert read_token() is None
