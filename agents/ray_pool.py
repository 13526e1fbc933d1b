"""Run evaluation episodes as Ray tasks: the executor ``evaluate.py --ray ADDRESS`` uses.

:class:`RayExecutor` offers the two calls ``evaluate.py`` makes of a
:class:`concurrent.futures.ProcessPoolExecutor` (``submit`` returning something with
``result()`` and ``cancel()``, and ``shutdown``), so episodes run on the cores of a Ray cluster
exactly as they run in local worker processes: each task builds its policy from its spec and its
env from the run's settings, with one thread, and ``evaluate.py`` writes the results in serial
order. Every node needs the project installed (``pip install -e ".[distributed]"``) and the
same data files at the same paths.

Ray is imported only here, and only when an executor is made, so the rest of the project runs
without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _limited(threads: int, function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` with ``threads`` torch threads (a Ray task's body)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return function(*args)


class RayFuture:
    """The result of one task, as a future: ``result()`` waits for it, ``cancel()`` drops it."""

    def __init__(self, ray: Any, reference: Any) -> None:
        self._ray, self._reference = ray, reference

    def result(self) -> Any:
        return self._ray.get(self._reference)

    def cancel(self) -> bool:
        self._ray.cancel(self._reference)
        return True


class RayExecutor:
    """Submits calls as Ray tasks of one CPU each.

    Parameters
    ----------
    address
        ``"local"``: start Ray on this machine; anything else is handed to ``ray.init`` (e.g.
        ``"auto"`` for the cluster this machine belongs to, or ``"ray://HEAD:10001"``).
    threads
        Torch threads per task (1 when 0).

    Raises
    ------
    ImportError
        Without Ray, with a one-line hint at the ``distributed`` extra.
    """

    def __init__(self, address: str, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError(
                "--ray needs Ray: pip install -e '.[distributed]' (or pip install ray)"
            ) from None
        self._ray = ray
        self._threads = max(int(threads), 1)
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=None if address == "local" else address,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(self._threads)}},
                log_to_driver=False,
            )
        self._task = ray.remote(num_cpus=1)(_limited)
        self._pending: list[RayFuture] = []

    def submit(self, function: Callable[..., Any], *args: Any) -> RayFuture:
        future = RayFuture(self._ray, self._task.remote(self._threads, function, *args))
        self._pending.append(future)
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        """Drop unfinished tasks when asked, and stop Ray if this executor started it."""
        if cancel_futures:
            for future in self._pending:
                future.cancel()
        self._pending.clear()
        if self._started:
            self._ray.shutdown()
