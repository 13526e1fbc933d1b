"""The background refit of :class:`~reconstruct.lowrank.LowRankGP` (``refit_mode="deferred"``).

A refit (basis, hyperparameters, GP factor) costs far more than one measurement's incremental
update. Deferred, it runs in a thread on a snapshot of the reconstructor while the model in use
keeps taking measurements; :class:`DeferredRefit` holds that thread, the measurements that
arrive meanwhile, and hands the refitted model, with every arrival in it, to the reconstructor
when it installs it. Results depend only on the data and the seed, never on timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import torch

from reconstruct.gp import single_thread


class RefitModel(Protocol):
    """What a deferred refit needs of its snapshot (a :class:`~reconstruct.lowrank.LowRankGP`;
    named by this protocol so that this module does not import the model)."""

    n_measured: int
    _refit_delay: Callable[[], None] | None

    def _refit(self) -> None: ...

    def _add_batch_to_spatial(self, arrivals: list) -> None: ...


class DeferredRefit:
    """A refit computed in a background thread, and the measurements that arrive until the
    reconstructor installs it.

    The thread refits ``model``, a snapshot of the reconstructor (its own mask; the measured
    values are shared, and a block in the snapshot is never written again), then brings in
    the arrivals (:meth:`push`): the measurements after the snapshot and before the install
    count. The install step's own measurement is not one: the reconstructor adds it to the
    installed model itself, as an ordinary update, so the install never waits for work that
    could only start in its own step. Arrivals enter in arrival order, in chunks of ``CHUNK``
    as each chunk is complete and the last ``CHUNK`` one by one as they come. When the
    reconstructor asks for the model (:meth:`finish`) it waits for the refit and for the
    piece of work in progress, and brings in what the thread has not reached itself (the
    same pieces: the last arrival, typically, or the rest of a chunk when the next refit
    made the install early), rather than wait for the thread to get to them. What is
    computed depends only on the snapshot and the arrivals, never on when the thread runs or
    which thread brings in a piece (both run it single-threaded), so a slow machine gives
    the same results as a fast one, only later (:meth:`finish` waits). A chunk enters the GP
    as one block update (:meth:`SpatialGP.add_many`), several times cheaper per measurement
    than the single updates the reconstructor makes meanwhile, so the thread catches up.

    The thread runs while there is work (refit, or a complete chunk) and waits up to
    ``IDLE_S`` for more before it ends (starting a thread makes the caller wait until it
    runs: a scheduling round trip in every step that hands it work), so an abandoned
    reconstructor is not kept alive by it for long. Its first piece of work frees the state
    the previous install replaced (``release``: its GP factor is tens of MB handed back to
    the system, which slowed the install step when done then). Copying
    (``copy.deepcopy``, pickling) waits until the work in progress is done and copies the
    result; the copy continues on its own.
    ``waited_s`` and ``caught_up`` say how long :meth:`finish` waited for the thread and how
    many arrivals it brought in itself (for benchmarks).
    """

    CHUNK = 8
    IDLE_S = 0.5

    def __init__(
        self,
        model: RefitModel,
        install_at: int,
        release: list | None = None,
    ) -> None:
        self.model = model
        self.install_at = install_at
        # Arrivals the thread brings in: those before the install count (that one's own blocks
        # enter the installed model on the reconstructor's thread).
        self._expected = install_at - model.n_measured - 1
        self.arrivals: list[tuple[int, list[tuple[int, torch.Tensor]]]] = []
        self.applied = 0  # arrivals already in the model
        self.refitted = False
        self.waited_s: float | None = None  # by finish(): for the thread
        self.caught_up = 0  # arrivals finish() brought in itself
        self._init_sync()
        self._release = release
        with self._cond:
            self._wake()

    def _init_sync(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False  # the thread is in a piece of work
        self._final = False  # the reconstructor asked for the model: no more arrivals
        self._cancelled = False
        self._error: BaseException | None = None
        self._release: list | None = None  # what the thread is to free first

    def _chunk_size(self) -> int:
        return self.CHUNK if self.applied + 2 * self.CHUNK <= self._expected else 1

    def _work_ready(self) -> bool:
        """Work for the thread: the refit, or a complete chunk until :meth:`finish` takes
        over the arrivals."""
        waiting = len(self.arrivals) - self.applied
        return not self.refitted or (not self._final and waiting >= self._chunk_size())

    def _wake(self) -> None:
        """Have the thread take the work there is (the condition's lock held): start one if
        none runs, else wake the one waiting for work."""
        if self._cancelled or not (self._work_ready() or self._release is not None):
            return
        if self._thread is None:
            # Not a daemon: at exit the interpreter waits for the piece of work in progress
            # (a daemon thread inside a torch kernel aborted the process at shutdown).
            self._thread = threading.Thread(target=self._run, name="LowRankGP refit")
            self._thread.start()
        else:
            self._cond.notify_all()

    def _next_piece(self) -> tuple[str, list] | None:
        """Wait (the condition's lock held) until there is work, and take it: ``("refit",
        [])``, ``("chunk", arrivals)`` or ``("release", objects)``; None when the thread is to
        end (cancelled, the model asked for, or no work for ``IDLE_S``)."""
        deadline = time.monotonic() + self.IDLE_S
        while not self._cancelled:
            if self._release is not None:
                objects, self._release = self._release, None
                return "release", objects
            if self._work_ready():
                if not self.refitted:
                    return "refit", []
                return "chunk", self.arrivals[self.applied : self.applied + self._chunk_size()]
            left = deadline - time.monotonic()
            if left <= 0 or self._final:
                break
            self._cond.wait(left)
        return None

    def _run(self) -> None:
        try:
            with single_thread():
                while True:
                    with self._cond:
                        piece = self._next_piece()
                        if piece is None:
                            self._thread = None
                            self._cond.notify_all()
                            return
                        self._busy = True
                    kind, items = piece
                    if kind == "release":
                        items.clear()
                        with self._cond:
                            self._busy = False
                        continue
                    delay = self.model._refit_delay
                    if delay is not None:
                        delay()
                    if kind == "refit":
                        self.model._refit()
                    else:
                        self.model._add_batch_to_spatial(items)
                    with self._cond:
                        if kind == "chunk":
                            self.applied += len(items)
                        self.refitted = True
                        self._busy = False
                        self._cond.notify_all()
        except BaseException as error:  # handed to the reconstructor's thread by finish()
            with self._cond:
                self._error = error
                self._thread = None
                self._busy = False
                self._cond.notify_all()

    def push(self, pixel: int, items: list[tuple[int, torch.Tensor]]) -> None:
        """Blocks ``items`` of ``pixel`` were measured after the snapshot."""
        with self._cond:
            self.arrivals.append((pixel, items))
            self._wake()

    def _wait_idle(self) -> None:
        """Wait until every piece of work there is has been done."""
        with self._cond:
            while self._error is None and not self._cancelled and (
                self._busy or self._work_ready()
            ):
                self._wake()
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def finish(self) -> RefitModel:
        """The refitted model with every arrival in it: waits for the refit and the piece of
        work in progress, then brings in the arrivals left, in the thread's pieces."""
        start = time.perf_counter()
        with self._cond:
            self._final = True  # the thread takes no more arrivals
        self._wait_idle()
        self.waited_s = time.perf_counter() - start
        self.caught_up = len(self.arrivals) - self.applied
        with single_thread():
            while self.applied < len(self.arrivals):
                chunk = self.arrivals[self.applied : self.applied + self._chunk_size()]
                self.model._add_batch_to_spatial(chunk)
                self.applied += len(chunk)
        return self.model

    def cancel(self) -> None:
        """Drop the refit: a running thread stops after its current piece of work."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def __getstate__(self) -> dict:
        self._wait_idle()
        state = dict(vars(self))
        for name in ("_cond", "_thread", "_busy", "_final", "_cancelled", "_error", "_release"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._init_sync()
