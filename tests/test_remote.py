"""The network instrument over loopback: exact replay, and clear errors when the server fails."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from fake_instruments import HangingInstrument

from envs.data.twin import twin_dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import ReplayInstrument
from envs.instruments.remote import InstrumentError, RemoteInstrument
from envs.instruments.server import InstrumentServer, serving


@pytest.fixture(scope="module")
def dataset():
    return twin_dataset(3, grid=(10, 10), n_times=8)


def _replay(dataset) -> ReplayInstrument:
    return ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))


def test_network_instrument_reproduces_replay_exactly(dataset):
    local = _replay(dataset)
    with serving(_replay(dataset)) as url:
        remote = RemoteInstrument(url, timeout=10)
        assert remote.grid_shape == local.grid_shape
        assert remote.spectral_shape == local.spectral_shape
        assert remote.axes == local.axes
        rng = np.random.default_rng(0)
        nan_pixels = np.flatnonzero(np.isnan(dataset.data).reshape(100, -1).any(1))
        pixels = list(rng.integers(0, 100, size=40)) + list(nan_pixels[:1])
        for pixel in pixels:
            voltages = np.sort(rng.choice(dataset.shape[2], size=4, replace=False))
            expected, expected_s = local.measure(int(pixel), voltages)
            got, got_s = remote.measure(int(pixel), voltages)
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)  # NaN positions included
            assert got_s == expected_s
            assert remote.tip_pixel == local.tip_pixel
        assert remote.go_to(55) == local.go_to(55)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(InstrumentError, match="cannot reach instrument server"):
        RemoteInstrument(url, timeout=2, retries=1, retry_pause=0.01)


def test_server_that_stops_answering_times_out_clearly(dataset):
    hanging = HangingInstrument(_replay(dataset), answers=2)
    server = InstrumentServer(hanging).start()
    try:
        remote = RemoteInstrument(server.url, timeout=0.5)
        remote.measure(0, np.arange(4))
        remote.measure(1, np.arange(4))
        with pytest.raises(InstrumentError, match="did not answer get_spectrum within 0.5 s"):
            remote.measure(2, np.arange(4))
    finally:
        hanging.release.set()
        server.stop()


class _WrongShapeInstrument(HangingInstrument):
    def measure(self, pixel, voltages, reads=None):
        values, seconds = self.inner.measure(pixel, voltages, reads)
        return values[:, :-1], seconds


def test_wrong_shape_and_bad_requests_are_clear_errors(dataset):
    with serving(_WrongShapeInstrument(_replay(dataset), answers=99)) as url:
        remote = RemoteInstrument(url, timeout=5)
        with pytest.raises(InstrumentError, match=r"shape \(4, 7\), expected \(4, 8\)"):
            remote.measure(3, np.arange(4))
    with serving(_replay(dataset)) as url:
        remote = RemoteInstrument(url, timeout=5)
        with pytest.raises(IndexError, match="out of range"):
            remote.measure(100, np.arange(4))  # checked by the client before any request
        with pytest.raises(InstrumentError, match="HTTP 400.*out of range"):
            remote.measure(0, np.array([0, 99]))
        with pytest.raises(InstrumentError, match="HTTP 404"):
            remote._call("GET", "no_such_call")
