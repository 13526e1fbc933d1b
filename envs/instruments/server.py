"""The instrument server: serves any :class:`~envs.instruments.instrument.Instrument` (e.g. a
replay) over the ``pfm-instrument/2`` protocol of :mod:`envs.instruments.remote`.

Three parts, each small:

- :class:`InstrumentServer`: the instrument, its lock, the checks of a call's body, the answers
  remembered by request id, and the access token. It knows nothing of sockets.
- :class:`RequestHandler`: one connection: reads a request within its limits (body size, read
  timeout, overall deadline), hands it to the server and writes the JSON answer.
- :class:`_Listener`: the listening socket, its backlog and the cap on handler threads.

Its command line is the program ``serve.py``.
"""

from __future__ import annotations

import hmac
import io
import json
import reprlib
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from envs.instruments import remote as protocol
from envs.instruments.instrument import Instrument
from envs.instruments.remote import (
    REQUEST_ID_HEADER,
    checked_token,
    encode_values,
    require_token_beyond_loopback,
)

MAX_BODY_BYTES = 256 * 1024
"""Default limit on a request body. The largest request the protocol needs, ``get_spectrum`` with
every voltage once, takes about 8 bytes per voltage: this leaves room for 30,000 voltages."""

READ_TIMEOUT_SECONDS = 30.0
"""Default wait for the next bytes of a request before the server gives up on that connection."""

REQUEST_DEADLINE_SECONDS = 60.0
"""Default limit on receiving one request in all (line, headers and body), from its first byte:
a client that sends a byte just before each read timeout is cut off too."""

MAX_HANDLERS = 32
"""Default number of connections handled at once (one thread each); more are answered 503."""

BACKLOG = 128
"""Connections the system queues before the server accepts them (socketserver's default is 5,
which resets connections under 20 concurrent clients)."""

REMEMBERED_ANSWERS = 1024
"""Default number of recent request ids whose answers the server keeps."""

SPARE_THREADS = 4
"""Threads beyond the handler cap that answer 503; past those a connection is closed unanswered."""

ALLOWED_METHODS = "GET, POST"
CALLS = "GET /describe, POST /go_to, POST /get_spectrum"

# After refusing a request whose body it did not read, the server reads away (and drops) what the
# client still sends, at most this much for at most this long, before closing: closing a socket
# with unread data resets the connection, and a client still sending would lose the answer.
LINGER_BYTES = 16 * 1024 * 1024
LINGER_SECONDS = 2.0

Answer = tuple[int, dict[str, Any]]


class _Refusal(Exception):
    """A request the server will not act on: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _DeadlinePassed(TimeoutError):
    """The request took longer than the server's overall deadline to arrive."""


# ============================================================================ the instrument side
class InstrumentServer:
    """Serves an :class:`~envs.instruments.instrument.Instrument` over HTTP (protocol in
    :mod:`envs.instruments.remote`).

    Each connection is handled in its own thread, at most ``max_handlers`` at once; the
    instrument is used under a lock (it does one thing at a time), held only while it works:
    requests are read, checked and answered outside it, so a slow or oversized request never
    stops ``describe`` or a measurement from answering. A POST that names a request id is
    executed at most once: the answers to the last ``remembered_answers`` ids are kept, and a
    repeated id is answered from them.

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
    request_deadline
        Seconds one request may take to arrive in all, from its first byte (408 after that).
    max_handlers
        Connections handled at once; beyond them a connection is answered 503.
    remembered_answers
        How many recent request ids, with their answers, the server keeps.
    backlog
        Connections the system queues before the server accepts them.
    token
        Shared token every request must carry (``Authorization: Bearer TOKEN``; others are
        answered 401). Required when ``host`` is not loopback, optional on loopback.

    Raises
    ------
    ValueError
        Before binding, when ``host`` is not loopback and no ``token`` is given, or an option is
        out of range.
    OSError
        When the address cannot be bound (e.g. the port is in use).
    """

    def __init__(
        self,
        instrument: Instrument,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        request_deadline: float = REQUEST_DEADLINE_SECONDS,
        max_handlers: int = MAX_HANDLERS,
        remembered_answers: int = REMEMBERED_ANSWERS,
        backlog: int = BACKLOG,
        token: str | None = None,
    ) -> None:
        self._token = None if token is None else checked_token(token, "the token argument")
        require_token_beyond_loopback(host, self._token)
        for name, value in [("max_body_bytes", max_body_bytes), ("max_handlers", max_handlers),
                            ("remembered_answers", remembered_answers), ("backlog", backlog)]:
            if not value >= 1:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in [("read_timeout", read_timeout),
                            ("request_deadline", request_deadline)]:
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        self.instrument = instrument
        self.max_body_bytes = int(max_body_bytes)
        self.read_timeout = float(read_timeout)
        self.request_deadline = float(request_deadline)
        self.remembered_answers = int(remembered_answers)
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, tuple[str, Answer]] = OrderedDict()
        self._httpd = _Listener((host, port), RequestHandler, bind_and_activate=False)
        self._httpd.open(self, int(max_handlers), int(backlog))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the server listens on."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ access
    def check_authorization(self, authorization: str | None) -> None:
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

    # ------------------------------------------------------------------ calls
    def get(self, path: str) -> Answer:
        """The answer to ``GET path``."""
        if path.rstrip("/") == "/describe":
            with self._lock:
                return 200, protocol.describe(self.instrument)
        return 404, {"error": f"unknown call GET {path}; calls are {CALLS}"}

    def post(self, path: str, body: dict[str, Any], request_id: str | None = None) -> Answer:
        """The answer to ``POST path`` with ``body``; executed at most once per ``request_id``."""
        call = path.rstrip("/")
        if call not in ("/go_to", "/get_spectrum"):
            return 404, {"error": f"unknown call POST {path}; calls are {CALLS}"}
        pixel = body.get("pixel")
        if isinstance(pixel, bool) or not isinstance(pixel, int):
            raise _Refusal(f"'pixel' must be an integer, got {reprlib.repr(pixel)}")
        if call == "/go_to":
            execute: Callable[[], Answer] = lambda: self._go_to(pixel)  # noqa: E731
        else:
            voltages = self._voltages(body.get("voltages"))
            reads = body.get("reads")
            if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int)):
                raise _Refusal(f"'reads' must be an integer, got {reprlib.repr(reads)}")
            execute = lambda: self._measure(pixel, voltages, reads)  # noqa: E731
        status, payload = self._once(request_id, f"{call} {json.dumps(body, sort_keys=True)}",
                                     execute)
        if isinstance(payload.get("values"), np.ndarray):  # encoded with the instrument free
            payload = {**payload, "values": encode_values(payload["values"])}
        return status, payload

    def _once(self, request_id: str | None, request: str, execute: Callable[[], Answer]
              ) -> Answer:
        """``execute()`` under the instrument's lock, unless ``request_id`` was seen: then its
        stored answer. A retry that arrives while the first attempt still runs waits for the
        lock and finds the answer stored."""
        with self._lock:
            if request_id is not None and request_id in self._answers:
                seen, answer = self._answers[request_id]
                self._answers.move_to_end(request_id)
                if seen != request:
                    raise _Refusal(
                        f"request id {request_id!r} was already used for another request; "
                        f"send a new id for each call", 422,
                    )
                return answer
            answer = self._outcome(execute)
            if request_id is not None:
                self._answers[request_id] = (request, answer)
                while len(self._answers) > self.remembered_answers:
                    self._answers.popitem(last=False)
            return answer

    @staticmethod
    def _outcome(execute: Callable[[], Answer]) -> Answer:
        """What the instrument answered, or why it refused (400: a pixel or voltage out of
        range, the client's mistake) or failed (500), as an answer that can be stored."""
        try:
            return execute()
        except (IndexError, ValueError, TypeError) as err:
            return 400, {"error": str(err)}
        except Exception as err:  # the instrument failed: tell the client why
            return 500, {"error": f"{type(err).__name__}: {err}"}

    def _go_to(self, pixel: int) -> Answer:
        seconds = self.instrument.go_to(pixel)
        return 200, {"seconds": float(seconds), "tip_pixel": int(self.instrument.tip_pixel)}

    def _measure(self, pixel: int, voltages: np.ndarray, reads: int | None) -> Answer:
        values, seconds = self.instrument.measure(pixel, voltages, reads)
        return 200, {"values": np.array(values), "seconds": float(seconds),
                     "tip_pixel": int(self.instrument.tip_pixel)}

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

    # ------------------------------------------------------------------ running
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

    def close(self) -> None:
        """Close the socket of a server that never served."""
        self._httpd.server_close()


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


# ============================================================================ the socket side
class _Listener(ThreadingHTTPServer):
    """The listening socket: a backlog of :data:`BACKLOG`, and one thread per connection up to
    a cap; past it a few spare threads answer 503, and past those a connection is closed."""

    request_queue_size = BACKLOG
    daemon_threads = True

    def open(self, owner: InstrumentServer, max_handlers: int, backlog: int = BACKLOG) -> None:
        """Bind and listen (closing the socket if either fails), serving ``owner``."""
        self.owner = owner
        self.request_queue_size = backlog
        self._handler_slots = threading.BoundedSemaphore(max_handlers)
        self._spare_slots = threading.BoundedSemaphore(SPARE_THREADS)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._handler_slots.acquire(blocking=False):
            slots, handler = self._handler_slots, self.RequestHandlerClass
        elif self._spare_slots.acquire(blocking=False):
            slots, handler = self._spare_slots, BusyHandler
        else:
            self.shutdown_request(request)
            return
        threading.Thread(
            target=self._handle, args=(request, client_address, handler, slots), daemon=True
        ).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet when the client went away (it closed or reset the connection); any other
        failure is printed as socketserver prints it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def _handle(self, request: Any, client_address: Any, handler: type,
                slots: threading.BoundedSemaphore) -> None:
        try:
            handler(request, client_address, self)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            slots.release()


class _DeadlineReader(io.RawIOBase):
    """The connection's incoming bytes, each read waiting at most the read timeout and at most
    until the current request's deadline (set at its first byte)."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        handler = self.handler
        wait = handler.owner.read_timeout
        if handler.deadline is not None:
            left = handler.deadline - time.monotonic()
            if left <= 0:
                raise _DeadlinePassed(handler.deadline_message())
            wait = min(wait, left)
        handler.connection.settimeout(wait)
        try:
            received = handler.connection.recv_into(buffer)
        except TimeoutError:
            if handler.deadline is not None and time.monotonic() >= handler.deadline:
                raise _DeadlinePassed(handler.deadline_message()) from None
            raise
        if received and handler.deadline is None:
            handler.deadline = time.monotonic() + handler.owner.request_deadline
        return received


class RequestHandler(BaseHTTPRequestHandler):
    """One connection to an :class:`InstrumentServer`: every answer is the protocol's JSON, every
    read is bounded in time (:class:`_DeadlineReader`) and the body in size."""

    protocol_version = "HTTP/1.1"
    # what a request that is not HTTP/1.x is answered in: the protocol is HTTP/1.1, and
    # http.server's default (HTTP/0.9) answers a malformed request line with a bare body
    default_request_version = "HTTP/1.1"
    busy = False  # answer every request 503 (a connection over the handler cap)
    deadline: float | None = None  # when the current request must have arrived
    _body_consumed = False  # the current request's body has been read, or given up on

    @property
    def owner(self) -> InstrumentServer:
        return self.server.owner  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ reading
    def setup(self) -> None:
        self.timeout = self.owner.read_timeout  # applied to the socket by socketserver
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        self.deadline = None  # starts at the request's first byte
        super().handle_one_request()

    def deadline_message(self) -> str:
        return f"request not received within the deadline of {self.owner.request_deadline:g} s"

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
        if length > self.owner.max_body_bytes:
            raise _Refusal(
                f"body of {length} bytes is longer than this server accepts "
                f"({self.owner.max_body_bytes} bytes)", 413,
            )
        self._body_consumed = True
        try:
            raw = self.rfile.read(length)
        except _DeadlinePassed as err:
            self.close_connection = True
            raise _Refusal(str(err), 408) from None
        except TimeoutError:
            self.close_connection = True  # the rest of the body may still arrive
            raise _Refusal(f"body not received within {self.owner.read_timeout:g} s", 408) from None
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

    def _request_id(self) -> str | None:
        given = self.headers.get_all(REQUEST_ID_HEADER) or []
        if not given:
            return None
        if len(given) > 1 or not protocol.is_valid_request_id(given[0].strip()):
            raise _Refusal(
                f"{REQUEST_ID_HEADER} must be one id of 1 to {protocol.MAX_REQUEST_ID_CHARS} "
                f"printable ASCII characters, got {reprlib.repr(', '.join(given))}"
            )
        return given[0].strip()

    def _declares_body(self) -> bool:
        length = (self.headers.get("Content-Length") or "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length != "0"

    # ------------------------------------------------------------------ methods
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(lambda: self.owner.get(self.path))

    def do_POST(self) -> None:  # noqa: N802
        def call() -> Answer:
            request_id = self._request_id()
            return self.owner.post(self.path, self._read_body(), request_id)

        self._answer(call)

    def _refuse_method(self) -> None:
        def refuse() -> Answer:
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

    # ------------------------------------------------------------------ answering
    def _answer(self, call: Callable[[], Answer]) -> None:
        self._body_consumed = False
        try:
            if self.busy:
                raise _Refusal(
                    "the server is handling as many connections as it allows; try again shortly",
                    503, {"Retry-After": "1"},
                )
            self.owner.check_authorization(self.headers.get("Authorization"))
            status, payload = call()
            headers: dict[str, str] = {}
        except _Refusal as err:
            status, payload, headers = err.status, {"error": str(err)}, err.headers
        except Exception as err:  # the server itself failed: tell the client why
            status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
        # An unread body would be taken for the next request on this connection: close it.
        body_left_unread = self._declares_body() and not self._body_consumed
        if body_left_unread or self.busy:
            self.close_connection = True
        self._send_json(status, payload, headers)
        if body_left_unread:
            self._discard_until_closed()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        # http.server's own refusals (a malformed request line, too many headers, ...)
        # in the protocol's JSON instead of an HTML page.
        self.close_connection = True
        reason = message or self.responses.get(code, ("refused",))[0]
        self._send_json(code, {"error": reason}, {})

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        self.connection.settimeout(self.owner.read_timeout)  # not what was left of the deadline
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

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the experiment shows its own progress


class BusyHandler(RequestHandler):
    """A connection over the handler cap: every request on it is answered 503."""

    busy = True
