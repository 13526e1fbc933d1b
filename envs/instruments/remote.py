"""A network instrument: the protocol, a client that is an
:class:`~envs.instruments.instrument.Instrument`,
and a small server that serves any instrument (e.g. a replay) over HTTP.

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
    (X, Y, V, ...), "tip_pixel": int, "quantity": str, "unit": str}``.
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
Requests
    A POST carries ``Content-Length`` (no chunked bodies) of at most the server's body limit,
    :data:`MAX_BODY_BYTES` (256 KiB) unless set otherwise; a longer body is refused unread.
    A request that stalls for ``read_timeout`` seconds (default 30) is given up.
Errors
    Any status other than 200 with ``{"error": "message"}`` (the same for http.server's own
    refusals, e.g. a malformed request line): 400 for a bad request (unknown pixel or voltage,
    repeated or too many voltages, malformed body or ``Content-Length``), 404 for an unknown
    call, 405 (with ``Allow: GET, POST``) for any other method, 408 for a stalled request, 411
    for a POST without ``Content-Length``, 413 for a body over the limit, 500 when the
    instrument failed. After refusing a body it did not read, the server closes the connection.
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

    The token comes from a file (``serve --token-file FILE``; ``RemoteInstrument(url,
    token_file=FILE)``), an argument (``token=``), or the environment variable
    ``PFM_INSTRUMENT_TOKEN``, which the ``serve`` command and :class:`RemoteInstrument` read
    when given neither (so the experiment's ``http://`` instruments pick it up). To make one:
    ``python -c "import secrets; print(secrets.token_urlsafe(32))" > token``.

Numbers are JSON floats; float32 readings survive the trip exactly (a float32 widened to float64
prints and parses back to the same value).

Failure handling in the client: a server that cannot be reached, drops the connection, does not
answer within ``timeout`` seconds, answers an error, or answers values of the wrong shape raises
:class:`InstrumentError` with a message naming the server, the call and what was expected.
Connection failures are retried ``retries`` times with a short pause first (a restarting server);
timeouts are not retried, since the instrument may still be busy with the request.

Command line: ``python -m envs.instruments.remote serve --data twin:0 --port 8765 [--pace 10]``
serves a replay
of any data source :func:`envs.data.loaders.open_data` reads; add ``--host ADDRESS --token-file
FILE``
to serve beyond this machine, ``--max-body-bytes N`` to change the body limit.
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import ipaddress
import json
import os
import reprlib
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.dataset import Axis
from envs.instruments.instrument import Instrument, check_pixel, check_reads

PROTOCOL = "pfm-instrument/2"
#: Versions a client can drive: version 1 lacks ``reads`` (whole curves only).
CLIENT_PROTOCOLS = (PROTOCOL, "pfm-instrument/1")


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


def _checked_token(text: str, source: str) -> str:
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
        return _checked_token(token, "the token argument")
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read the token file {token_file}: {err}") from None
        return _checked_token(text, f"the token file {token_file}")
    if os.environ.get(TOKEN_ENV, "").strip():
        return _checked_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


def require_token_beyond_loopback(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (checked before anything is bound)."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"serving on {host!r} reaches beyond this machine and needs a shared token: give a "
            f"file holding one with --token-file FILE (token= in Python) or set ${TOKEN_ENV}"
        )


# ============================================================================ server
MAX_BODY_BYTES = 256 * 1024
"""Default limit on a request body. The largest request the protocol needs, ``get_spectrum`` with
every voltage once, takes about 8 bytes per voltage: this leaves room for 30,000 voltages."""

READ_TIMEOUT_SECONDS = 30.0
"""Default wait for the next bytes of a request before the server gives up on that connection."""

ALLOWED_METHODS = "GET, POST"

# After refusing a request whose body it did not read, the server reads away (and drops) what the
# client still sends, at most this much for at most this long, before closing: closing a socket
# with unread data resets the connection, and a client still sending would lose the answer.
LINGER_BYTES = 16 * 1024 * 1024
LINGER_SECONDS = 2.0

CALLS = "GET /describe, POST /go_to, POST /get_spectrum"


class _Refusal(Exception):
    """A request the server will not act on: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class InstrumentServer:
    """Serves an :class:`~envs.instruments.instrument.Instrument` over HTTP (protocol in the module
    docstring).

    Each connection is handled in its own thread; the instrument is used under a lock (it does one
    thing at a time), held only while it works: requests are read, checked and answered outside it,
    so a slow or oversized request never stops ``describe`` or a measurement from answering.

    Parameters
    ----------
    instrument
        What to serve, e.g. a :class:`~envs.instruments.instrument.ReplayInstrument`.
    host, port
        Where to listen; port 0 asks the system for a free one (see :attr:`url`). The default host
        is loopback: serving beyond the machine is an explicit choice.
    max_body_bytes
        Longest request body accepted; longer ones are answered 413 without being read.
    read_timeout
        Seconds to wait for the next bytes of a request (a stalled client is answered 408).
    token
        Shared token every request must carry (``Authorization: Bearer TOKEN``; others are
        answered 401). Required when ``host`` is not loopback, optional on loopback.

    Raises
    ------
    ValueError
        Before binding, when ``host`` is not loopback and no ``token`` is given.
    """

    def __init__(
        self,
        instrument: Instrument,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        token: str | None = None,
    ) -> None:
        self._token = None if token is None else _checked_token(token, "the token argument")
        require_token_beyond_loopback(host, self._token)
        if not max_body_bytes > 0:
            raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes}")
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        self.instrument = instrument
        self.max_body_bytes = int(max_body_bytes)
        self.read_timeout = float(read_timeout)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the server listens on."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # what a request that is not HTTP/1.x is answered in: the protocol is HTTP/1.1, and
            # http.server's default (HTTP/0.9) answers a malformed request line with a bare body
            default_request_version = "HTTP/1.1"
            timeout = server.read_timeout  # applied to the connection's socket by socketserver
            _body_consumed = False  # the current request's body has been read, or given up on

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the experiment shows its own progress

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                self._answer(lambda: server._dispatch_get(self.path))

            def do_POST(self) -> None:  # noqa: N802
                self._answer(lambda: server._dispatch_post(self.path, self._read_body()))

            def _refuse_method(self) -> None:
                def refuse() -> tuple[int, dict[str, Any]]:
                    raise _Refusal(
                        f"method {self.command} is not part of the protocol; calls are {CALLS}",
                        405, {"Allow": ALLOWED_METHODS},
                    )

                self._answer(refuse)

            def __getattr__(self, name: str) -> Any:
                # http.server answers a method without a do_<METHOD> with an HTML 501 page; every
                # method other than GET and POST gets the protocol's JSON 405 instead.
                if name.startswith("do_"):
                    return self._refuse_method
                raise AttributeError(name)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None
                           ) -> None:
                # http.server's own refusals (a malformed request line, too many headers, ...)
                # in the protocol's JSON instead of an HTML page.
                self.close_connection = True
                reason = message or self.responses.get(code, ("refused",))[0]
                self._send_json(code, {"error": reason}, {})

            def _read_body(self) -> dict[str, Any]:
                """The request's JSON object, read only when its declared length is acceptable."""
                if self.headers.get("Transfer-Encoding"):
                    raise _Refusal("chunked bodies are not accepted: send Content-Length", 411)
                declared = self.headers.get_all("Content-Length") or []
                if not declared:
                    raise _Refusal("Content-Length is required", 411)
                text = declared[0].strip()
                if len(declared) > 1 or not (text.isascii() and text.isdigit()):
                    raise _Refusal(
                        f"Content-Length must be one whole number of bytes, got "
                        f"{reprlib.repr(', '.join(declared))}"
                    )
                length = int(text)
                if length > server.max_body_bytes:
                    raise _Refusal(
                        f"body of {length} bytes is longer than this server accepts "
                        f"({server.max_body_bytes} bytes)", 413,
                    )
                self._body_consumed = True
                try:
                    raw = self.rfile.read(length)
                except TimeoutError:
                    self.close_connection = True  # the rest of the body may still arrive
                    raise _Refusal(
                        f"body not received within {server.read_timeout:g} s", 408
                    ) from None
                if len(raw) < length:
                    self.close_connection = True  # the client closed its side
                    raise _Refusal(f"body ended after {len(raw)} of {length} bytes")
                try:
                    body = json.loads(raw or b"{}")
                except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, or nested too deep
                    raise _Refusal(f"body is not JSON: {err}") from None
                if not isinstance(body, dict):
                    raise _Refusal("body must be a JSON object")
                return body

            def _declares_body(self) -> bool:
                length = (self.headers.get("Content-Length") or "0").strip()
                return bool(self.headers.get("Transfer-Encoding")) or length != "0"

            def _answer(self, call: Any) -> None:
                self._body_consumed = False
                try:
                    server._check_authorization(self.headers.get("Authorization"))
                    status, payload = call()
                    headers: dict[str, str] = {}
                except _Refusal as err:
                    status, payload, headers = err.status, {"error": str(err)}, err.headers
                except Exception as err:  # the instrument failed: tell the client why
                    status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
                # An unread body would be taken for the next request on this connection: close it.
                body_left_unread = self._declares_body() and not self._body_consumed
                if body_left_unread:
                    self.close_connection = True
                self._send_json(status, payload, headers)
                if body_left_unread:
                    self._discard_until_closed()

            def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]
                           ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":  # an answer to HEAD is its headers only
                    self.wfile.write(data)

            def _discard_until_closed(self) -> None:
                """Read away what the client still sends (see :data:`LINGER_BYTES`)."""
                try:
                    self.connection.shutdown(socket.SHUT_WR)  # the answer is complete
                    deadline = time.monotonic() + LINGER_SECONDS
                    discarded = 0
                    while discarded < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                        self.connection.settimeout(left)
                        chunk = self.connection.recv(64 * 1024)
                        if not chunk:
                            break
                        discarded += len(chunk)
                except OSError:
                    pass  # the client went away or stalled: closing is all that is left

        return Handler

    def _check_authorization(self, authorization: str | None) -> None:
        """Refuse (401) a request without this server's token; anything goes without one."""
        if self._token is None:
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="pfm-instrument"'}
        if not authorization:
            raise _Refusal(
                "this server needs its token: send the header 'Authorization: Bearer TOKEN'",
                401, challenge,
            )
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise _Refusal("wrong token", 401, challenge)

    def _dispatch_get(self, path: str) -> tuple[int, dict[str, Any]]:
        if path.rstrip("/") == "/describe":
            with self._lock:
                return 200, describe(self.instrument)
        return 404, {"error": f"unknown call GET {path}; calls are {CALLS}"}

    def _dispatch_post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        call = path.rstrip("/")
        if call not in ("/go_to", "/get_spectrum"):
            return 404, {"error": f"unknown call POST {path}; calls are {CALLS}"}
        pixel = body.get("pixel")
        if isinstance(pixel, bool) or not isinstance(pixel, int):
            raise _Refusal(f"'pixel' must be an integer, got {reprlib.repr(pixel)}")
        if call == "/go_to":
            with self._using_instrument() as instrument:
                seconds = instrument.go_to(pixel)
                tip = int(instrument.tip_pixel)
            return 200, {"seconds": float(seconds), "tip_pixel": tip}
        voltages = self._voltages(body.get("voltages"))
        reads = body.get("reads")
        if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int)):
            raise _Refusal(f"'reads' must be an integer, got {reprlib.repr(reads)}")
        with self._using_instrument() as instrument:
            values, seconds = instrument.measure(pixel, voltages, reads)
            tip = int(instrument.tip_pixel)
        # encoded once the instrument is free for the next request
        return 200, {"values": encode_values(values), "seconds": float(seconds), "tip_pixel": tip}

    @contextmanager
    def _using_instrument(self) -> Iterator[Instrument]:
        """The instrument, held for one call; what it refuses (a pixel or voltage out of range)
        is the client's mistake, answered 400."""
        with self._lock:
            try:
                yield self.instrument
            except (IndexError, ValueError, TypeError) as err:
                raise _Refusal(str(err)) from None

    def _voltages(self, voltages: Any) -> np.ndarray:
        """``get_spectrum``'s voltages as indices, each of the instrument's voltages at most once
        (so an answer is never larger than one full spectrum)."""
        n_voltages = int(self.instrument.spectral_shape[0])
        if not isinstance(voltages, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in voltages
        ):
            raise _Refusal(f"'voltages' must be a list of integers, got {reprlib.repr(voltages)}")
        if not 1 <= len(voltages) <= n_voltages:
            raise _Refusal(
                f"'voltages' lists {len(voltages)} voltages; this instrument has {n_voltages}, "
                f"so list 1 to {n_voltages}, each once"
            )
        outside = [v for v in voltages if not 0 <= v < n_voltages]
        if outside:
            raise _Refusal(f"voltage {reprlib.repr(outside[0])} out of range [0, {n_voltages})")
        seen: set[int] = set()
        for voltage in voltages:
            if voltage in seen:
                raise _Refusal(f"voltage {voltage} is listed more than once; list each once")
            seen.add(voltage)
        return np.asarray(voltages, dtype=np.int64)

    def start(self) -> InstrumentServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextmanager
def serving(
    instrument: Instrument, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[str]:
    """Context manager: serve ``instrument`` in a background thread, yield its URL, then stop.
    ``options`` go to :class:`InstrumentServer` (``token``, ``max_body_bytes``, ...)."""
    server = InstrumentServer(instrument, host, port, **options).start()
    try:
        yield server.url
    finally:
        server.stop()


# ============================================================================ client
class RemoteInstrument:
    """An :class:`~envs.instruments.instrument.Instrument` on the other side of the
    ``pfm-instrument/1``
    protocol (module docstring).

    Parameters
    ----------
    url
        ``http://HOST:PORT`` of the server.
    timeout
        Seconds to wait for any one answer (a measurement included) before giving up.
    retries
        Extra attempts after a refused or dropped connection, ``retry_pause`` seconds apart.
    token, token_file
        The server's shared token, or a file holding it; by default the environment variable
        :data:`TOKEN_ENV`, else none (see :func:`read_token`).

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
        info = self._call("GET", "describe")
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
        """One request with retries on connection failures; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
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


# ============================================================================ command line
def main(argv: list[str] | None = None) -> int:
    """``python -m envs.instruments.remote serve --data SPEC``: serve a replay instrument until
    Ctrl-C."""
    from envs.data.sources import open_data
    from envs.instruments.cost import CostModel
    from envs.instruments.instrument import PacedInstrument, ReplayInstrument

    parser = argparse.ArgumentParser(
        prog="python -m envs.instruments.remote", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a replay of a dataset over HTTP")
    serve.add_argument("--data", required=True, help="'twin', 'twin:SEED' or an h5/npy path")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; beyond loopback a token is required")
    serve.add_argument("--token-file", default=None,
                       help=f"file holding the shared token clients must send (default: "
                            f"${TOKEN_ENV}; optional on loopback)")
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                       help="longest request body accepted (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--pace", type=float, default=0.0,
                       help="sleep instrument seconds / PACE per call (0: no pacing)")
    serve.add_argument("--twin-grid", type=int, default=None, help="twin grid side (twin only)")
    serve.add_argument("--twin-times", type=int, default=None, help="twin read-outs (twin only)")
    args = parser.parse_args(argv)
    if args.max_body_bytes <= 0:
        parser.error(f"--max-body-bytes must be > 0, got {args.max_body_bytes}")
    try:  # before the data is loaded and anything is bound
        token = read_token(token_file=args.token_file)
        require_token_beyond_loopback(args.host, token)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    twin_options: dict[str, Any] = {}
    if args.twin_grid:
        twin_options["grid"] = (args.twin_grid, args.twin_grid)
    if args.twin_times:
        twin_options["n_times"] = args.twin_times
    dataset = open_data(args.data, **twin_options)
    instrument: Instrument = ReplayInstrument(dataset, CostModel().for_axes(dataset.axes))
    if args.pace > 0:
        instrument = PacedInstrument(instrument, args.pace)
    server = InstrumentServer(
        instrument, args.host, args.port, max_body_bytes=args.max_body_bytes, token=token
    )
    access = "token required" if token else "no token"
    print(f"serving {dataset.summary()} at {server.url} ({access}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
