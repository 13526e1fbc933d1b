"""Each measurement executed at most once, over loopback: a connection dropped after the server
received ``get_spectrum`` makes the client send it again with the same request id, and the
server answers from what it stored instead of pulsing the sample a second time."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from urllib.parse import urlsplit

import numpy as np
import pytest

from envs.data.twin import twin_dataset
from envs.instruments import remote as remote_module
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.remote import (
    REQUEST_ID_HEADER,
    InstrumentError,
    RemoteInstrument,
    RequestIds,
)
from envs.instruments.server import InstrumentServer, RequestHandler


@pytest.fixture(scope="module")
def dataset():
    return twin_dataset(3, grid=(10, 10), n_times=8)


class CountingInstrument:
    """A replay that counts its executions (a sample with memory would change on each)."""

    def __init__(self, dataset) -> None:
        self.inner = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
        self.grid_shape, self.spectral_shape = self.inner.grid_shape, self.inner.spectral_shape
        self.axes, self.dataset = self.inner.axes, dataset
        self.measurements = 0
        self.moves = 0

    @property
    def tip_pixel(self) -> int:
        return self.inner.tip_pixel

    def go_to(self, pixel):
        self.moves += 1
        return self.inner.go_to(pixel)

    def measure(self, pixel, voltages, reads=None):
        self.measurements += 1
        return self.inner.measure(pixel, voltages, reads)


class DroppingServer(InstrumentServer):
    """Executes each call, then drops the connection instead of answering the first ``drops``
    answers to ``path``, as a network that fails after the request arrived."""

    def __init__(self, instrument, drops: int, path: str = "/get_spectrum", **options) -> None:
        self.drops, self.dropped_path = drops, path
        self.request_ids: list[str | None] = []
        super().__init__(instrument, **options)
        server = self

        class Dropping(RequestHandler):
            def _send_json(self, status, payload, headers):
                if self.command == "POST":
                    server.request_ids.append(self.headers.get(REQUEST_ID_HEADER))
                if self.path == server.dropped_path and server.drops > 0 and status == 200:
                    server.drops -= 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # no answer at all
                    return
                super()._send_json(status, payload, headers)

        self._httpd.RequestHandlerClass = Dropping


def test_dropped_answer_is_fetched_again_and_executed_once(dataset):
    counting = CountingInstrument(dataset)
    server = DroppingServer(counting, drops=1).start()
    try:
        remote = RemoteInstrument(server.url, timeout=5, retry_pause=0.01,
                                  request_ids=RequestIds("test"))
        assert remote.server_remembers_ids
        values, seconds = remote.measure(7, np.array([0, 3]))
        assert counting.measurements == 1  # the retry got the stored answer
        assert server.request_ids == ["test-1", "test-1"]  # sent twice, one id
        expected, expected_s = ReplayInstrument(
            dataset, CostModel().for_axes(dataset.axes)
        ).measure(7, np.array([0, 3]))
        np.testing.assert_array_equal(values, expected)
        assert seconds == expected_s and remote.tip_pixel == 7
        remote.measure(8, np.array([1]))  # the next call is a new id, executed
        assert counting.measurements == 2 and server.request_ids[-1] == "test-2"
    finally:
        server.stop()


def test_dropped_go_to_is_executed_once(dataset):
    counting = CountingInstrument(dataset)
    server = DroppingServer(counting, drops=2, path="/go_to").start()
    try:
        remote = RemoteInstrument(server.url, timeout=5, retries=2, retry_pause=0.01)
        seconds = remote.go_to(55)
        assert counting.moves == 1 and seconds > 0  # the travel of the one move, not 0
        assert len(set(server.request_ids)) == 1 and len(server.request_ids) == 3
    finally:
        server.stop()


def test_server_without_request_ids_is_not_sent_a_measurement_twice(dataset, monkeypatch):
    original = remote_module.describe
    monkeypatch.setattr(remote_module, "describe",
                        lambda i: {k: v for k, v in original(i).items() if k != "request_ids"})
    counting = CountingInstrument(dataset)
    server = DroppingServer(counting, drops=1).start()
    try:
        remote = RemoteInstrument(server.url, timeout=5, retries=3, retry_pause=0.01)
        assert not remote.server_remembers_ids
        with pytest.raises(InstrumentError, match="not sent again: it may have been executed"):
            remote.measure(7, np.array([0, 3]))
        assert counting.measurements == 1
    finally:
        server.stop()


def _post(url: str, path: str, body: dict, request_id: str | None) -> tuple[int, dict]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    try:
        connection.request("POST", path, json.dumps(body), headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_repeated_id_is_answered_from_memory_and_reuse_is_refused(dataset):
    counting = CountingInstrument(dataset)
    server = InstrumentServer(counting, remembered_answers=2).start()
    try:
        body = {"pixel": 4, "voltages": [1, 2]}
        first = _post(server.url, "/get_spectrum", body, "a")
        assert _post(server.url, "/get_spectrum", body, "a") == first
        assert first[0] == 200 and counting.measurements == 1
        status, answer = _post(server.url, "/get_spectrum", {"pixel": 5, "voltages": [1]}, "a")
        assert status == 422 and "already used for another request" in answer["error"]
        assert _post(server.url, "/go_to", {"pixel": 4}, "a")[0] == 422  # another call too
        _post(server.url, "/get_spectrum", body, None)  # no id: executed every time
        _post(server.url, "/get_spectrum", body, None)
        assert counting.measurements == 3
        # an instrument's refusal is remembered too: the retry does not reach it again
        bad = {"pixel": 4, "voltages": [1]}
        counting.inner.measure = None  # would fail (TypeError, 400) if called once more
        status, answer = _post(server.url, "/get_spectrum", bad, "b")
        assert status == 400 and _post(server.url, "/get_spectrum", bad, "b") == (status, answer)
        assert counting.measurements == 4
        # only the last 2 ids are kept: "a" was forgotten, so it is executed as new
        _post(server.url, "/get_spectrum", body, "c")
        assert _post(server.url, "/get_spectrum", body, "a")[0] == 400
        assert counting.measurements == 6
        for bad_id in ("", "two words", "x" * 201):
            status, answer = _post(server.url, "/go_to", {"pixel": 1}, bad_id)
            assert status == 400 and REQUEST_ID_HEADER in answer["error"]
    finally:
        server.stop()


def test_retry_that_arrives_while_the_first_runs_waits_for_its_answer(dataset):
    counting = CountingInstrument(dataset)
    started, release = threading.Event(), threading.Event()
    measure = counting.inner.measure

    def slow_measure(pixel, voltages, reads=None):
        started.set()
        release.wait(5)
        return measure(pixel, voltages, reads)

    counting.inner.measure = slow_measure
    server = InstrumentServer(counting).start()
    try:
        body = {"pixel": 2, "voltages": [0]}
        answers = []
        first = threading.Thread(
            target=lambda: answers.append(_post(server.url, "/get_spectrum", body, "same"))
        )
        first.start()
        assert started.wait(5)
        second = threading.Thread(
            target=lambda: answers.append(_post(server.url, "/get_spectrum", body, "same"))
        )
        second.start()
        release.set()
        first.join(5)
        second.join(5)
        assert len(answers) == 2 and answers[0] == answers[1] and answers[0][0] == 200
        assert counting.measurements == 1
    finally:
        release.set()
        server.stop()


def test_request_ids_are_unique_and_a_bad_prefix_is_refused():
    ids = RequestIds()
    assert len({next(ids) for _ in range(1000)}) == 1000
    assert next(RequestIds()).rsplit("-", 1)[0] != next(RequestIds()).rsplit("-", 1)[0]
    assert [next(RequestIds("run")) for _ in range(1)] == ["run-1"]
    with pytest.raises(ValueError, match="printable ASCII"):
        RequestIds("has space")
