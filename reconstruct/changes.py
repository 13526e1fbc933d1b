"""What changed in a reconstructor's estimate since a scorer last looked.

A reconstructor never holds a reference to score against (the ground truth belongs to whoever
scores, e.g. the environment's :class:`~reconstruct.scoring.ReferenceScorer`). A scorer that
keeps error terms up to date between calls instead of rescoring the whole estimate needs to
know what changed; a :class:`ChangeLog` is that record, kept by the reconstructor and read by
any number of scorers, each with its own position in it.

Events, in the order they happened:

- ``("stored", pixel, block, coef)``: a block was measured; ``coef`` is the pixel's
  coefficients ``(k,)`` just before (a copy), or None when the model could not give them
  cheaply (the scorer then recomputes its terms);
- ``("moved", a, delta)``: the coefficients changed by ``outer(a, delta)`` (a GP rank-one
  update);
- ``("replaced",)``: the coefficients or the basis changed in any other way (a refit, a batch
  update, a model that recomputes on read).

The log keeps the last ``max_events`` events (an environment scores after every step, which
adds a few; a ``moved`` event holds a ``(P,)`` vector, so the log is kept short); a scorer that
fell further behind, or that last looked at another history (:attr:`epoch` changes at every
:meth:`clear` and in every copy), recomputes from scratch.
"""

from __future__ import annotations

import torch


class _Epoch:
    """A token that is a new object in every copy (deepcopy, pickle): a copied reconstructor
    is a different history for a scorer."""

    def __deepcopy__(self, memo: dict) -> _Epoch:
        return _Epoch()

    def __reduce__(self) -> tuple:
        return (_Epoch, ())


class ChangeLog:
    """An ordered, bounded record of changes to a reconstructor's estimate (module notes)."""

    def __init__(self, max_events: int = 64) -> None:
        self.max_events = int(max_events)
        self.clear()

    def clear(self) -> None:
        """A new history: scorers that read the old one start again."""
        self.epoch = _Epoch()
        self.start = 0  # position of events[0] in the whole history
        self.events: list[tuple] = []

    @property
    def end(self) -> int:
        """Position after the last event."""
        return self.start + len(self.events)

    def _append(self, event: tuple) -> None:
        self.events.append(event)
        if len(self.events) > self.max_events:
            drop = len(self.events) // 2
            del self.events[:drop]
            self.start += drop

    def stored(self, pixel: int, block: int, coef: torch.Tensor | None) -> None:
        self._append(("stored", pixel, block, coef))

    def moved(self, a: torch.Tensor, delta: torch.Tensor) -> None:
        self._append(("moved", a, delta))

    def replaced(self) -> None:
        self._append(("replaced",))

    def since(self, epoch: object, position: int) -> list[tuple] | None:
        """The events after ``position`` of history ``epoch``; None when they are no longer
        all kept (another history, or fallen out of the log)."""
        if epoch is not self.epoch or position < self.start or position > self.end:
            return None
        return self.events[position - self.start :]
