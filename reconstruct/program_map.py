"""What a program reads, mapped to what the standard sequence reads: a first-visit correction.

A sample with memory answers a program with the response to *its own* pulses: a block of
voltages applied alone to a pristine pixel (a *first visit*) does not read the values that the
same voltages give inside the whole standard sequence, which is what every reconstructor in
this package models (``docs/memory.md`` measures the gap: R^2 0.84-0.98 for a spread block
alone). :class:`ProgramMap` learns, per program, a linear map from a program's values to the
standard sequence's values at the same entries, from pairs of both (for a twin, simulated on
training twins: :func:`envs.instruments.memory.first_visit_pairs`), and applies it to measured
program values before they reach a reconstructor.

The map. For one program, ``A`` ``(n, F)`` its values and ``S`` ``(n, F)`` the standard values
at the same pixels. Both are projected on their leading principal components (``rank`` each:
``F`` is hundreds of entries, the response of a pixel a handful of parameters), and the
standard coefficients are regressed on the program's by ridge regression: ``S ~ mean_S +
((A - mean_A) Ua^T) W Us``. Linear, so it cannot undo a switching that the program made and the
sequence did not, but the program's values carry most of what the pixel is; measured in
``docs/memory.md``.

A program is named by :class:`Program`: the voltage indices applied (in sequence order) and the
reads of each curve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Format version of :meth:`ProgramMap.save`.
FORMAT = 1


@dataclass(frozen=True, order=True)
class Program:
    """A first visit: ``voltages`` (indices of the standard sequence, ascending) applied alone
    to a pristine pixel, each curve read for its first ``reads`` time points."""

    voltages: tuple[int, ...]
    reads: int

    def __post_init__(self) -> None:
        voltages = tuple(int(v) for v in self.voltages)
        ascending = all(b > a for a, b in zip(voltages, voltages[1:], strict=False))
        if not voltages or not ascending or voltages[0] < 0:
            raise ValueError(f"a program's voltages must be ascending indices, got {voltages}")
        if int(self.reads) < 1:
            raise ValueError(f"a program reads at least 1 time point, got {self.reads}")
        object.__setattr__(self, "voltages", voltages)
        object.__setattr__(self, "reads", int(self.reads))

    @property
    def n_features(self) -> int:
        return len(self.voltages) * self.reads

    def name(self) -> str:
        return f"voltages {list(self.voltages)}, {self.reads} reads"


@dataclass(frozen=True)
class _LinearMap:
    """One program's map (see the module docstring)."""

    mean_in: np.ndarray  # (F,)
    basis_in: np.ndarray  # (r_in, F)
    weights: np.ndarray  # (r_in, r_out)
    basis_out: np.ndarray  # (r_out, F)
    mean_out: np.ndarray  # (F,)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        coefficients = (values - self.mean_in) @ self.basis_in.T
        return self.mean_out + coefficients @ self.weights @ self.basis_out


def _principal_axes(centred: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading principal axes (rows) of ``centred`` ``(n, F)``."""
    return np.linalg.svd(centred, full_matrices=False)[2][:rank]


def fit_linear_map(
    program_values: np.ndarray, standard_values: np.ndarray, rank: int, ridge: float
) -> _LinearMap:
    """The map of one program from paired rows (see the module docstring); ``ridge`` is
    relative to the mean eigenvalue of the program coefficients' Gram matrix."""
    a = np.asarray(program_values, np.float64).reshape(len(program_values), -1)
    s = np.asarray(standard_values, np.float64).reshape(len(standard_values), -1)
    mean_in, mean_out = a.mean(0), s.mean(0)
    basis_in = _principal_axes(a - mean_in, rank)
    basis_out = _principal_axes(s - mean_out, rank)
    za, zs = (a - mean_in) @ basis_in.T, (s - mean_out) @ basis_out.T
    gram = za.T @ za
    scale = float(np.trace(gram)) / max(len(gram), 1)
    weights = np.linalg.solve(gram + ridge * scale * np.eye(len(gram)), za.T @ zs)
    return _LinearMap(mean_in, basis_in, weights, basis_out, mean_out)


class ProgramMap:
    """Per-program maps from a first visit's values to the standard sequence's values.

    Parameters
    ----------
    rank
        Principal components kept on each side of a program's map (at most the number of
        pairs and features). 16 by measurement: on a 30 x 30 twin (``python -m
        studies.redundancy --data twin --grid 30 --experiments combined
        --combined-reconstructors lowrank --program-map 1,2,3``, seed 0) 8, 16 and 32 gave the
        same R^2 within 0.01 for blocks of 2 and 4 voltages, and for blocks of 8 voltages 16
        and 32 gave 0.892 and 0.922 where 8 gave 0.882 and 0.913 (10 % and 20 % full pixels).
    ridge
        Relative ridge of the regression (see :func:`fit_linear_map`).
    """

    def __init__(self, rank: int = 16, ridge: float = 1e-4) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.rank, self.ridge = int(rank), float(ridge)
        self._maps: dict[Program, _LinearMap] = {}

    @property
    def programs(self) -> list[Program]:
        return sorted(self._maps)

    def __contains__(self, program: object) -> bool:
        return program in self._maps

    def fit(self, pairs: Mapping[Program, tuple[np.ndarray, np.ndarray]]) -> ProgramMap:
        """Learn one map per program from ``pairs[program] = (program_values,
        standard_values)``, each ``(n, len(voltages), reads)`` (or flattened ``(n, F)``) over
        the same ``n`` pixels; replaces a program's earlier map.

        Raises
        ------
        ValueError
            For mismatched shapes, NaN/inf, or fewer than 2 pairs.
        """
        for program, (program_values, standard_values) in pairs.items():
            a = _rows(program, program_values, "program values")
            s = _rows(program, standard_values, "standard values")
            if len(a) != len(s):
                raise ValueError(
                    f"{program.name()}: {len(a)} rows of program values but {len(s)} of "
                    f"standard values"
                )
            if len(a) < 2:
                raise ValueError(f"{program.name()}: a map needs at least 2 pairs, got {len(a)}")
            rank = min(self.rank, len(a) - 1, program.n_features)
            self._maps[program] = fit_linear_map(a, s, rank, self.ridge)
        return self

    def apply(self, program: Program, values: np.ndarray) -> np.ndarray:
        """The standard sequence's values that ``values`` (one pixel ``(len(voltages),
        reads)`` or several ``(n, len(voltages), reads)``) stand for; float32, same shape.

        Raises
        ------
        KeyError
            For a program the map was not fitted on (one line, naming the known ones).
        ValueError
            For values of the wrong shape or holding NaN/inf.
        """
        if program not in self._maps:
            known = ", ".join(p.name() for p in self.programs) or "none"
            raise KeyError(f"no map for the program {program.name()}; fitted: {known}")
        values = np.asarray(values)
        single = values.ndim == 2
        if single and values.shape != (len(program.voltages), program.reads):
            raise ValueError(
                f"values of {program.name()} must be ({len(program.voltages)}, {program.reads}) "
                f"for one pixel or (n, {len(program.voltages)}, {program.reads}), got shape "
                f"{values.shape}"
            )
        rows = _rows(program, values[None] if single else values, "values")
        mapped = self._maps[program](rows.astype(np.float64)).astype(np.float32)
        mapped = mapped.reshape(len(rows), len(program.voltages), program.reads)
        return mapped[0] if single else mapped

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the maps to ``path`` (``.npz``) and return it."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "rank": np.array(self.rank), "ridge": np.array(self.ridge),
        }
        for i, (program, linear) in enumerate(sorted(self._maps.items())):
            arrays[f"{i}/voltages"] = np.array(program.voltages)
            arrays[f"{i}/reads"] = np.array(program.reads)
            for field in ("mean_in", "basis_in", "weights", "basis_out", "mean_out"):
                arrays[f"{i}/{field}"] = getattr(linear, field)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProgramMap:
        """The maps :meth:`save` wrote; a one-line ``ValueError`` for another file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no program map at {path}")
        with np.load(path) as stored:
            if "format" not in stored or int(stored["format"]) != FORMAT:
                raise ValueError(f"{path} is not a program map of format {FORMAT}")
            loaded = cls(int(stored["rank"]), float(stored["ridge"]))
            for i in range(len({k.split("/")[0] for k in stored if "/" in k})):
                voltages, reads = stored[f"{i}/voltages"].tolist(), int(stored[f"{i}/reads"])
                program = Program(tuple(voltages), reads)
                loaded._maps[program] = _LinearMap(*(
                    stored[f"{i}/{field}"]
                    for field in ("mean_in", "basis_in", "weights", "basis_out", "mean_out")
                ))
        return loaded


def _rows(program: Program, values: np.ndarray | Iterable, what: str) -> np.ndarray:
    """``values`` as ``(n, F)`` rows of ``program``, or a one-line ``ValueError``."""
    array = np.asarray(values)
    if array.ndim not in (2, 3) or array.reshape(len(array), -1).shape[1] != program.n_features:
        raise ValueError(
            f"{what} of {program.name()} must be (n, {len(program.voltages)}, {program.reads}), "
            f"got shape {array.shape}"
        )
    rows = array.reshape(len(array), -1)
    if not np.isfinite(rows).all():
        raise ValueError(f"{what} of {program.name()} hold NaN or inf")
    return rows
