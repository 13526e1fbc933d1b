"""A network instrument: the protocol ``pfm-instrument/2`` and a client that is an
:class:`~envs.instruments.instrument.Instrument`. The server side is
:mod:`envs.instruments.server`; its command line is the program ``serve.py``.

A microscope's control program joins the project by implementing only the server side of this
protocol; the experiment loop then drives it through :class:`RemoteInstrument` exactly as it
drives a local replay. The call names follow the digital-twin microscope servers of the field
(``go_to``, ``get_spectrum``), plus ``describe``.

Protocol ``pfm-instrument/2``
-----------------------------
HTTP/1.1 with JSON bodies (UTF-8). Pixels are flat indices ``p = row * Y + col`` on the
``(X, Y)`` grid; voltages are indices into the voltage axis (the first spectral axis).

``GET /describe``
    ``{"protocol": "pfm-instrument/2", "grid_shape": [X, Y], "spectral_shape": [V, ...],
    "axes": [{"name": str, "unit": str, "values": [float, ...]}, ...],   # one per axis of
    (X, Y, V, ...), "tip_pixel": int, "quantity": str, "unit": str}``, and ``"request_ids":
    true`` from a server that remembers request ids (below).
``POST /go_to`` with ``{"pixel": int}``
    Move the tip. Answer ``{"seconds": float, "tip_pixel": int}`` (travel seconds).
``POST /get_spectrum`` with ``{"pixel": int, "voltages": [int, ...]}`` and optionally
``"reads": int``
    Move to ``pixel`` if needed, apply the listed pulses in the order given and read the response.
    ``voltages`` lists 1 to ``V`` distinct voltages (each at most once). ``reads`` (new in
    version 2; instruments whose data has a time axis) reads each curve for its first ``reads``
    time points only, 1 to ``T``: a read window (:mod:`envs.acquisition.windows`). Answer
    ``{"values":
    nested list of shape [len(voltages), ...rest], "seconds": float, "tip_pixel": int}``, the
    time axis of ``rest`` cut to ``reads`` when given;
    ``null`` marks a reading that is not usable (NaN). ``seconds`` is the instrument time the
    measurement took (travel, settling, pulses, reads).
Request ids (at most once)
    A POST changes the instrument: the tip moves, and the sample keeps the polarisation each
    pulse leaves, so a measurement executed twice is not the same as once. A client names each
    POST with the header ``Idempotency-Key: ID`` (:data:`REQUEST_ID_HEADER`; 1 to 200 printable
    ASCII characters, unique per call: this client sends ``PREFIX-N``, a random UUID prefix and
    a counter). A server that advertises ``"request_ids": true`` remembers the answers to its
    most recent ids (1024 by default) and answers a repeated id with the stored answer,
    without executing the call again; the same id with a different call or body is refused
    (422). The memory lives in the server's process: a server restarted between two attempts
    executes the call again. The header is an optional addition, so the protocol version is
    unchanged: a server that does not remember ids ignores it, and the client then never
    repeats a POST that may have reached it.
Requests
    A POST carries ``Content-Length`` (no chunked bodies) of at most the server's body limit
    (256 KiB unless set otherwise); a longer body is refused unread. A request that stalls for
    ``read_timeout`` seconds (default 30), or whose line, headers and body take longer than the
    ``request_deadline`` in all (default 60 s, counted from its first byte), is given up. The
    server handles at most ``max_handlers`` connections at once (default 32); beyond that it
    answers 503 (with ``Retry-After``) until one closes.
Errors
    Any status other than 200 with ``{"error": "message"}`` (the same for http.server's own
    refusals, e.g. a malformed request line): 400 for a bad request (unknown pixel or voltage,
    repeated or too many voltages, malformed body, ``Content-Length`` or request id), 404 for an
    unknown call, 405 (with ``Allow: GET, POST``) for any other method, 408 for a stalled or too
    slow request, 411 for a POST without ``Content-Length``, 413 for a body over the limit, 422
    for a request id reused for another request, 500 when the instrument failed, 503 when the
    server is at its connection limit. After refusing a body it did not read, the server closes
    the connection.
Access
    A server may require a shared token: every request then carries the header
    ``Authorization: Bearer TOKEN`` (printable ASCII, no spaces), and one with a missing or wrong
    token is answered 401 (with ``WWW-Authenticate: Bearer``) before its body is read. The token
    is compared in constant time. Serving on any address other than loopback requires a token
    (the server refuses to start without one); on loopback it is optional, and used when given.
    The header is an optional addition, so the protocol version is unchanged: a client that
    sends it works with a server that needs no token, which ignores it. Over plain ``http://``
    the token and the data travel unencrypted: beyond a trusted network, reach the server through
    an SSH tunnel or a TLS proxy.

    The token comes from a file (``serve.py --token-file FILE``; ``RemoteInstrument(url,
    token_file=FILE)``), an argument (``token=``), or the environment variable
    ``PFM_INSTRUMENT_TOKEN``, which ``serve.py`` and :class:`RemoteInstrument` read
    when given neither (so the experiment's ``http://`` instruments pick it up). To make one:
    ``python -c "import secrets; print(secrets.token_urlsafe(32))" > token``.

Numbers are JSON floats; float32 readings survive the trip exactly (a float32 widened to float64
prints and parses back to the same value).

Failure handling in the client: a server that cannot be reached, drops the connection, does not
answer within ``timeout`` seconds, answers an error, or answers values of the wrong shape raises
:class:`InstrumentError` with a message naming the server, the call and what was expected.
A refused connection is retried ``retries`` times with a short pause first (a restarting
server), as is a dropped one for ``describe`` and, with the same request id, for a POST to a
server that remembers ids; a POST to one that does not is not sent again once it may have
arrived. Timeouts are not retried, since the instrument may still be busy with the request.

Command line: ``python serve.py --data twin:0 --port 8765 [--pace 10]`` serves a replay of any
data source :func:`envs.data.sources.open_data` reads (``serve.py --help``).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.dataset import Axis
from envs.instruments.instrument import Instrument, check_pixel, check_reads

PROTOCOL = "pfm-instrument/2"
#: Versions a client can drive: version 1 lacks ``reads`` (whole curves only).
CLIENT_PROTOCOLS = (PROTOCOL, "pfm-instrument/1")
#: The header naming a POST, so that a server that remembers ids executes it at most once.
REQUEST_ID_HEADER = "Idempotency-Key"
MAX_REQUEST_ID_CHARS = 200


class InstrumentError(RuntimeError):
    """An instrument (local or remote) failed or answered something unusable."""


# ============================================================================ encoding helpers
def encode_values(values: np.ndarray) -> list[Any]:
    """Readings as nested lists, NaN/inf as ``None`` (JSON has no NaN)."""
    array = np.asarray(values, dtype=np.float64)
    as_object = array.astype(object)
    as_object[~np.isfinite(array)] = None
    return as_object.tolist()


def decode_values(values: Any) -> np.ndarray:
    """Nested lists (``None`` for NaN) back to a float32 array."""
    try:
        # numpy reads None as NaN for a float dtype; ragged or non-numeric lists raise.
        return np.array(values, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError) as err:
        raise InstrumentError(f"readings are not a regular nested list of numbers: {err}") from None


def describe(instrument: Instrument) -> dict[str, Any]:
    """The ``describe`` answer for ``instrument``."""
    return {
        "protocol": PROTOCOL,
        "grid_shape": [int(s) for s in instrument.grid_shape],
        "spectral_shape": [int(s) for s in instrument.spectral_shape],
        "axes": [
            {"name": a.name, "unit": a.unit, "values": np.asarray(a.values, float).tolist()}
            for a in instrument.axes
        ],
        "tip_pixel": int(instrument.tip_pixel),
        "quantity": str(getattr(getattr(instrument, "dataset", None), "quantity", "response")),
        "unit": str(getattr(getattr(instrument, "dataset", None), "unit", "a.u.")),
        "request_ids": True,
    }


# ============================================================================ access
TOKEN_ENV = "PFM_INSTRUMENT_TOKEN"
"""Environment variable holding the shared token, read by the client and the ``serve`` command."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server on this machine. Only ``localhost`` and
    loopback addresses count: any other name, and ``""`` (every interface), are taken as reaching
    beyond it (a name is not resolved to find out)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_token(text: str, source: str) -> str:
    """``text`` without surrounding whitespace, when a header can carry it (else ValueError
    naming ``source``)."""
    token = text.strip()
    if not token:
        raise ValueError(f"the token from {source} is empty")
    if not all(33 <= ord(c) <= 126 for c in token):  # what a header value carries unchanged
        raise ValueError(f"the token from {source} must be printable ASCII without spaces")
    return token


def read_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None
               ) -> str | None:
    """The shared token: ``token`` if given, else the contents of ``token_file``, else the
    environment variable :data:`TOKEN_ENV`, else ``None`` (surrounding whitespace dropped).

    Raises
    ------
    ValueError
        When the file cannot be read, or the token is empty or not printable ASCII.
    """
    if token is not None:
        return checked_token(token, "the token argument")
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read the token file {token_file}: {err}") from None
        return checked_token(text, f"the token file {token_file}")
    if os.environ.get(TOKEN_ENV, "").strip():
        return checked_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


def require_token_beyond_loopback(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (checked before anything is bound)."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"serving on {host!r} reaches beyond this machine and needs a shared token: give a "
            f"file holding one with --token-file FILE (token= in Python) or set ${TOKEN_ENV}"
        )


# ============================================================================ request ids
def is_valid_request_id(request_id: str) -> bool:
    """Whether ``request_id`` is 1 to :data:`MAX_REQUEST_ID_CHARS` printable ASCII characters
    without spaces (what a header carries unchanged)."""
    return 0 < len(request_id) <= MAX_REQUEST_ID_CHARS and all(
        33 <= ord(c) <= 126 for c in request_id
    )


class RequestIds:
    """Request ids unique per call: ``PREFIX-1``, ``PREFIX-2``, ...

    ``prefix`` defaults to a random UUID, so that two clients, or one client started again
    after a crash, never share an id with answers a server still remembers. A fixed prefix
    makes the ids deterministic (tests); it must then never be used twice against one server.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = uuid.uuid4().hex if prefix is None else prefix
        if not is_valid_request_id(f"{self.prefix}-0000000000"):
            raise ValueError(
                f"request id prefix must be printable ASCII without spaces, at most "
                f"{MAX_REQUEST_ID_CHARS - 11} characters, got {self.prefix!r}"
            )
        self._count = 0

    def __next__(self) -> str:
        self._count += 1
        return f"{self.prefix}-{self._count}"

    def __iter__(self) -> RequestIds:
        return self


# ============================================================================ client
class RemoteInstrument:
    """An :class:`~envs.instruments.instrument.Instrument` on the other side of the
    ``pfm-instrument/2`` protocol (or version 1; module docstring).

    Parameters
    ----------
    url
        ``http://HOST:PORT`` of the server.
    timeout
        Seconds to wait for any one answer (a measurement included) before giving up.
    retries
        Extra attempts after a refused connection, ``retry_pause`` seconds apart, and after a
        dropped one when that cannot execute a call twice (``describe``, or a POST with its
        request id to a server that remembers ids).
    token, token_file
        The server's shared token, or a file holding it; by default the environment variable
        :data:`TOKEN_ENV`, else none (see :func:`read_token`).
    request_ids
        Where each POST's request id comes from; by default :class:`RequestIds` with a random
        prefix. A server that remembers ids (``"request_ids": true`` in ``describe``) executes
        a POST at most once, even when a dropped connection makes the client send it again.

    Raises
    ------
    InstrumentError
        At construction when the server cannot be reached, refuses the token or does not speak
        the protocol; on any call that fails (see the module docstring).
    ValueError
        When the token file cannot be read or the token is not printable ASCII.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 2,
        retry_pause: float = 0.5,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        request_ids: RequestIds | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"instrument URL must start with http:// or https://, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.retry_pause = float(retry_pause)
        self._token = read_token(token, token_file)
        self._request_ids = RequestIds() if request_ids is None else request_ids
        self.server_remembers_ids = False  # until describe says otherwise
        info = self._call("GET", "describe")
        self.server_remembers_ids = info.get("request_ids") is True
        self.protocol = info.get("protocol")
        if self.protocol not in CLIENT_PROTOCOLS:
            raise InstrumentError(
                f"{self.url} speaks protocol {self.protocol!r}, expected one of "
                f"{list(CLIENT_PROTOCOLS)}"
            )
        try:
            self.grid_shape: tuple[int, int] = tuple(int(s) for s in info["grid_shape"])  # type: ignore[assignment]
            self.spectral_shape: tuple[int, ...] = tuple(int(s) for s in info["spectral_shape"])
            self.axes: list[Axis] = [
                Axis(a["name"], np.asarray(a["values"], dtype=np.float64), a.get("unit", ""))
                for a in info["axes"]
            ]
            self.tip_pixel = int(info["tip_pixel"])
        except (KeyError, TypeError, ValueError) as err:
            raise InstrumentError(
                f"{self.url}/describe answered an incomplete description: {err}"
            ) from None
        if len(self.grid_shape) != 2 or len(self.axes) != 2 + len(self.spectral_shape):
            raise InstrumentError(
                f"{self.url}/describe: grid {self.grid_shape}, spectral shape "
                f"{self.spectral_shape} and {len(self.axes)} axes do not fit together"
            )
        self.quantity = str(info.get("quantity", "response"))
        self.unit = str(info.get("unit", "a.u."))
        self.n_pixels = self.grid_shape[0] * self.grid_shape[1]

    def _call(self, method: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call, its request sent again after a refused connection, and after a dropped one
        when repeating it cannot execute it twice (a GET, or a POST with its request id to a
        server that remembers ids); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        if method != "GET":  # one id per call, the same in every attempt
            headers[REQUEST_ID_HEADER] = next(self._request_ids)
        repeatable = method == "GET" or self.server_remembers_ids
        request = urllib.request.Request(
            f"{self.url}/{name}", data=data, method=method, headers=headers
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return self._decode(name, answer.read())
            except urllib.error.HTTPError as err:
                message = self._decode_error(err)
                if err.code == 401:
                    message += (f" (give the server's token with token= or token_file=, or set "
                                f"${TOKEN_ENV})")
                raise InstrumentError(
                    f"instrument server {self.url} refused {name}: HTTP {err.code}: {message}"
                ) from None
            except TimeoutError:
                raise InstrumentError(
                    f"instrument server {self.url} did not answer {name} within {self.timeout:g} s "
                    f"(it may be hung or busy); the measurement in flight is lost"
                ) from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError):
                    raise InstrumentError(
                        f"instrument server {self.url} did not answer {name} within "
                        f"{self.timeout:g} s (it may be hung or busy)"
                    ) from None
                never_sent = isinstance(reason, ConnectionRefusedError)
                if not (never_sent or repeatable):
                    raise InstrumentError(
                        f"instrument server {self.url} dropped the connection during {name} "
                        f"({reason}); it does not remember request ids, so {name} is not sent "
                        f"again: it may have been executed"
                    ) from None
                if attempt == self.retries:
                    raise InstrumentError(
                        f"cannot reach instrument server {self.url} for {name} after "
                        f"{self.retries + 1} attempts: {reason}"
                    ) from None
                time.sleep(self.retry_pause)
        raise AssertionError("unreachable")

    def _decode(self, name: str, raw: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InstrumentError(
                f"{self.url}/{name} answered something that is not JSON: {err}"
            ) from None
        if not isinstance(answer, dict):
            raise InstrumentError(
                f"{self.url}/{name} answered {type(answer).__name__}, expected an object"
            )
        return answer

    @staticmethod
    def _decode_error(err: urllib.error.HTTPError) -> str:
        try:
            return str(json.loads(err.read()).get("error", err.reason))
        except (json.JSONDecodeError, AttributeError, OSError):
            return str(err.reason)

    def _check_pixel(self, pixel: int) -> int:
        return check_pixel(pixel, self.n_pixels)

    def _seconds(self, answer: dict[str, Any], name: str) -> float:
        seconds = answer.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            np.isfinite(seconds) and seconds >= 0
        ):
            raise InstrumentError(
                f"{self.url}/{name} answered seconds={seconds!r}, expected a number >= 0"
            )
        if "tip_pixel" in answer:
            self.tip_pixel = int(answer["tip_pixel"])
        return float(seconds)

    def go_to(self, pixel: int) -> float:
        """Move the tip to ``pixel``; return the travel seconds the server reports."""
        pixel = self._check_pixel(pixel)
        return self._seconds(self._call("POST", "go_to", {"pixel": pixel}), "go_to")

    def measure(
        self, pixel: int, voltages: np.ndarray, reads: int | None = None
    ) -> tuple[np.ndarray, float]:
        """``get_spectrum`` at ``pixel`` for ``voltages`` (each curve's first ``reads`` time
        points, or all): values ``(len(voltages), *rest)`` (NaN where the server sent ``null``)
        and the instrument seconds.

        Raises
        ------
        InstrumentError
            When the values do not have that shape, or on any failure of the call.
        """
        pixel = self._check_pixel(pixel)
        voltages = np.asarray(voltages)
        is_index = np.issubdtype(voltages.dtype, np.integer)
        if voltages.ndim != 1 or voltages.size == 0 or not is_index:
            raise ValueError(f"voltages must be a non-empty 1-D integer array, got {voltages!r}")
        reads = check_reads(reads, self.spectral_shape)
        request: dict[str, Any] = {"pixel": pixel, "voltages": [int(v) for v in voltages]}
        if reads is not None:
            if self.protocol != PROTOCOL:
                raise InstrumentError(
                    f"{self.url} speaks {self.protocol!r}, which reads whole curves only: a "
                    f"read window needs {PROTOCOL!r}"
                )
            request["reads"] = reads
        answer = self._call("POST", "get_spectrum", request)
        if "values" not in answer:
            raise InstrumentError(f"{self.url}/get_spectrum answered without 'values'")
        values = decode_values(answer["values"])
        rest = list(self.spectral_shape[1:])
        if reads is not None:
            rest[0] = reads
        expected = (int(voltages.size), *rest)
        if values.shape != expected:
            raise InstrumentError(
                f"{self.url}/get_spectrum at pixel {pixel} returned values of shape "
                f"{values.shape}, expected {expected} (voltages x remaining spectral axes)"
            )
        return values, self._seconds(answer, "get_spectrum")




if __name__ == "__main__":  # the command line that lived here
    raise SystemExit("the instrument server's command line is now: python serve.py --data SPEC "
                     "[--port 8765] (python serve.py --help)")
