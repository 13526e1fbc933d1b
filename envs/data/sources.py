"""Where data comes from: the one place a data spec is parsed, and the twin seed ranges.

A *data spec* is a string a command line or a JSON config can hold:

- ``"twin"``: the synthetic relaxation twin; which seed is the caller's choice (a seed range an
  environment draws from at each reset, or seed 0 where one dataset is opened);
- ``"twin:SEED"``: the twin with seed ``SEED``, always that one;
- anything else: a file path for :func:`envs.data.loaders.load_dataset`.

:func:`parse_spec` reads a spec, :func:`open_data` opens one dataset, and a
:class:`DatasetSource` gives an environment one dataset per episode (a fixed one, a file, or a
twin drawn from a seed range with the environment's generator).

Seeds. Twin samples with seeds from :data:`HELD_OUT_SEED_START` on are never drawn for training
(:data:`TRAINING_SEEDS`); evaluations and studies take theirs from :func:`held_out_seeds`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.data.dataset import DataError, Dataset
from envs.data.loaders import load_dataset
from envs.data.twin import twin_dataset

#: Twin seeds from here on are held out: evaluation and studies only, never training.
HELD_OUT_SEED_START = 100_000
#: ``[lo, hi)`` of the twin seeds training draws from.
TRAINING_SEEDS = (0, HELD_OUT_SEED_START)
#: Options of :func:`envs.data.loaders.load_dataset`, which make no sense for the twin.
LOADER_OPTIONS = ("dataset_path", "axis_names", "channel", "complex_view")


def held_out_seeds(n: int, start: int = HELD_OUT_SEED_START) -> list[int]:
    """``n`` consecutive held-out twin seeds from ``start`` (which must not reach below the
    held-out range)."""
    if n < 0:
        raise ValueError(f"the number of seeds must be >= 0, got {n}")
    if start < HELD_OUT_SEED_START:
        raise ValueError(
            f"held-out seeds start at {HELD_OUT_SEED_START}; {start} is a training seed"
        )
    return list(range(start, start + n))


@dataclass(frozen=True)
class Spec:
    """A parsed data spec: ``kind`` is ``"twin"`` or ``"file"``; ``seed`` is the twin seed it
    names (None for plain ``"twin"``); ``path`` the file."""

    kind: str
    seed: int | None = None
    path: str = ""

    @property
    def is_twin(self) -> bool:
        return self.kind == "twin"


def parse_spec(spec: str | os.PathLike[str]) -> Spec:
    """Read a data spec (see the module docstring); a bad ``twin:...`` is a :class:`DataError`."""
    text = os.fspath(spec).strip()
    if text == "twin":
        return Spec("twin")
    if text.startswith("twin:"):
        match = re.fullmatch(r"twin:(\d+)", text)
        if match is None:
            raise DataError(
                f"bad twin spec {text!r}: expected 'twin' or 'twin:SEED' with SEED >= 0"
            )
        return Spec("twin", seed=int(match.group(1)))
    return Spec("file", path=text)


def open_data(spec: str | os.PathLike[str], seed: int = 0, **kwargs: Any) -> Dataset:
    """Open one dataset named by a data spec.

    Parameters
    ----------
    spec
        A data spec; plain ``"twin"`` opens the twin with ``seed``.
    seed
        The twin seed for plain ``"twin"`` (``"twin:SEED"`` names its own).
    **kwargs
        For a file: keyword arguments of :func:`envs.data.loaders.load_dataset`. For the twin: twin
        settings (:class:`envs.data.twin.TwinConfig` fields); loader options set to ``None`` are
        ignored there, so a command-line tool can pass its options unconditionally.
    """
    parsed = parse_spec(spec)
    if not parsed.is_twin:
        return load_dataset(parsed.path, **kwargs)
    misplaced = [k for k in LOADER_OPTIONS if kwargs.get(k) not in (None, "real")]
    if misplaced:
        raise DataError(
            f"{sorted(misplaced)} apply to data files, not to the synthetic twin {spec!r}"
        )
    settings = {k: v for k, v in kwargs.items() if k not in LOADER_OPTIONS}
    return twin_dataset(seed=parsed.seed if parsed.seed is not None else seed, **settings)


class DatasetSource:
    """The datasets an environment replays, one per episode.

    Parameters
    ----------
    data
        A data spec or a :class:`Dataset` (always that one).
    twin_seeds
        For plain ``"twin"``: an int (the same twin every episode) or ``[lo, hi)``, from which
        :meth:`draw` picks a seed with the generator it is given.
    twin_settings
        Twin settings (:class:`envs.data.twin.TwinConfig` fields), JSON-safe.

    The last dataset opened is kept, so an environment that replays one file or one twin seed
    reads it once.
    """

    def __init__(
        self,
        data: str | Dataset = "twin",
        twin_seeds: int | tuple[int, int] | list[int] = 0,
        twin_settings: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(data, (str, os.PathLike, Dataset)):
            raise TypeError(
                f"data must be 'twin', 'twin:SEED', a file path or a Dataset, got {data!r}"
            )
        self.data = data
        self.spec = None if isinstance(data, Dataset) else parse_spec(data)
        self.seed_range = self.parse_seed_range(twin_seeds)
        self.twin_settings = dict(twin_settings or {})
        self._cached: tuple[Any, Dataset] | None = None

    @staticmethod
    def parse_seed_range(twin_seeds: int | tuple[int, int] | list[int]) -> tuple[int, int]:
        """``[lo, hi)`` of twin seeds (an int ``s`` means ``[s, s + 1)``)."""
        if isinstance(twin_seeds, (int, np.integer)) and not isinstance(twin_seeds, bool):
            return int(twin_seeds), int(twin_seeds) + 1
        if isinstance(twin_seeds, (list, tuple)) and len(twin_seeds) == 2:
            lo, hi = (int(s) for s in twin_seeds)
            if hi > lo:
                return lo, hi
        raise ValueError(
            f"twin_seeds must be an int or a [lo, hi) pair with hi > lo, got {twin_seeds!r}"
        )

    def first(self) -> Dataset:
        """The dataset of the lowest seed (what an environment sizes itself on)."""
        return self._open(self.seed_range[0])

    def draw(self, rng: np.random.Generator) -> Dataset:
        """The next episode's dataset. One seed is drawn from ``rng`` whatever the source, so
        that the generator's later draws do not depend on it; only plain ``"twin"`` uses it."""
        seed = int(rng.integers(*self.seed_range))
        if self.spec is not None and self.spec.is_twin and self.spec.seed is None:
            return self._open(seed)
        return self._open(self.seed_range[0])

    def _open(self, seed: int) -> Dataset:
        if isinstance(self.data, Dataset):
            return self.data
        assert self.spec is not None
        key = (self.spec, seed)
        if self._cached is None or self._cached[0] != key:
            settings = self.twin_settings if self.spec.is_twin else {}
            self._cached = (key, open_data(self.data, seed=seed, **settings))
        return self._cached[1]
