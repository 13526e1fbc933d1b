"""The in-memory dataset: a spectroscopic image tensor with named axes, units and provenance.

Every data source (h5/npy files, the synthetic twin, a live session) ends up as a
:class:`Dataset`, so the instrument, the reconstructors and the environment see one shape of
data. Conventions:

- ``data`` is float32 of shape ``(X, Y, *spectral)``: the first two axes are spatial (row, column
  of the scan grid), the remaining one or more axes are spectral (voltage, time, frequency, ...).
- NaN marks an entry that was not measured (or was rejected). ``measured_mask`` is its negation.
- Each axis carries a name, a coordinate vector of matching length and a unit.
- ``truth`` optionally holds the noise-free tensor (synthetic data only), same shape as ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DataError(ValueError):
    """Raised for input data that cannot be used, with a message saying what was expected."""


@dataclass(frozen=True)
class Axis:
    """One axis of a dataset: its name, coordinate values and unit."""

    name: str
    values: np.ndarray
    unit: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 1:
            raise DataError(
                f"axis {self.name!r}: coordinate vector must be 1-D, got shape {values.shape}"
            )
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Axis):
            return NotImplemented
        return (
            self.name == other.name
            and self.unit == other.unit
            and self.values.shape == other.values.shape
            and bool(np.array_equal(self.values, other.values))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable array inside: not hashable


def default_axes(shape: tuple[int, ...], names: list[str] | None = None) -> list[Axis]:
    """Index-valued axes for a tensor of ``shape``: ``x, y, spectral_0, ...`` unless named."""
    if names is None:
        names = ["x", "y"] + [f"spectral_{i}" for i in range(len(shape) - 2)]
    if len(names) != len(shape):
        raise DataError(f"{len(names)} axis names given for a {len(shape)}-axis tensor: {names}")
    return [
        Axis(n, np.arange(s, dtype=np.float64), "index") for n, s in zip(names, shape, strict=True)
    ]


@dataclass
class Dataset:
    """A spectroscopic image tensor with named axes, units and provenance.

    Parameters
    ----------
    data
        Array of shape ``(X, Y, *spectral)`` with at least three axes; stored as float32.
        NaN entries mean "not measured".
    axes
        One :class:`Axis` per array axis; defaults to index axes ``x, y, spectral_0, ...``.
    quantity, unit
        What the values are (e.g. ``"piezoresponse"``) and their unit.
    source, path
        Provenance: the file it came from (or ``"twin"``) and the dataset path inside it.
    attrs
        Free-form metadata (instrument settings, generator parameters); JSON-like values.
    truth
        Optional noise-free tensor of the same shape (synthetic data only).
    """

    data: np.ndarray
    axes: list[Axis] = field(default_factory=list)
    quantity: str = "response"
    unit: str = "a.u."
    source: str = ""
    path: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    truth: np.ndarray | None = None

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
            raise DataError(f"data must be numeric, got dtype {data.dtype}")
        if np.iscomplexobj(data):
            raise DataError(
                "data is complex: choose a real view first (real part, amplitude or phase); "
                "the file loader does this with its `complex_view` argument"
            )
        if data.ndim < 3:
            raise DataError(
                f"data must have at least 3 axes (x, y, and one or more spectral axes), "
                f"got shape {data.shape}"
            )
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        if not np.isfinite(self.data).any():
            raise DataError(f"data of shape {self.data.shape} holds no finite value (all NaN/inf)")
        # Infinite values are as unusable as missing ones: treat them as unmeasured.
        self.data[np.isinf(self.data)] = np.nan
        if not self.axes:
            self.axes = default_axes(self.data.shape)
        if len(self.axes) != self.data.ndim:
            raise DataError(f"{len(self.axes)} axes given for data of shape {self.data.shape}")
        for i, (axis, size) in enumerate(zip(self.axes, self.data.shape, strict=True)):
            if len(axis) != size:
                raise DataError(
                    f"axis {i} ({axis.name!r}) has {len(axis)} coordinates but the data has "
                    f"{size} entries along it (data shape {self.data.shape})"
                )
        if self.truth is not None:
            truth = np.ascontiguousarray(self.truth, dtype=np.float32)
            if truth.shape != self.data.shape:
                raise DataError(
                    f"truth shape {truth.shape} differs from data shape {self.data.shape}"
                )
            self.truth = truth

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1]

    @property
    def spectral_shape(self) -> tuple[int, ...]:
        return self.data.shape[2:]

    @property
    def n_pixels(self) -> int:
        return self.data.shape[0] * self.data.shape[1]

    @property
    def measured_mask(self) -> np.ndarray:
        """Boolean array, True where the entry holds a measured (finite) value."""
        return np.isfinite(self.data)

    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    def axis(self, name: str) -> Axis:
        """The axis called ``name``."""
        for a in self.axes:
            if a.name == name:
                return a
        raise KeyError(f"no axis named {name!r}; axes are {self.axis_names}")

    def summary(self) -> str:
        """A one-line description for logs and command-line output."""
        axes = ", ".join(
            f"{a.name}[{len(a)}]" + (f" {a.unit}" if a.unit else "") for a in self.axes
        )
        missing = 1.0 - float(self.measured_mask.mean())
        where = f"{self.source}:{self.path}" if self.path else self.source
        return (
            f"{self.quantity} ({self.unit}) {axes}, {missing:.1%} unmeasured, from {where or '?'}"
        )
