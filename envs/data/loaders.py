"""Read spectroscopic image tensors from files into a :class:`~envs.data.dataset.Dataset`; write
them.

Entry points
------------
- :func:`load_dataset` reads ``.npy``, ``.npz`` and HDF5 (``.h5``, ``.hdf5``, ``.hdf``) files.
- :func:`save_dataset` writes a Dataset to HDF5 in the project's own layout (below).
- :func:`envs.data.sources.open_data` is what command-line tools call: a file path or the twin.

How an HDF5 file is read (first rule that applies)
--------------------------------------------------
1. **Project layout**: a group carrying ``format = "pfm-active-acquisition/dataset"`` (written by
   :func:`save_dataset`) is read back exactly.
2. **pyNSID / sidpy layout**: datasets with a ``DIMENSION_LABELS`` attribute. Axis names come from
   the labels, coordinates from the attached HDF5 dimension scales (or, failing that, from a
   sibling dataset named after the label), units from the scales' ``units`` attribute. When the
   scales' ``dimension_type`` marks exactly two axes as spatial, they are moved to the front.
   Several 2-D images of one shape (e.g. height, amplitude, deflection, phase) are stacked into
   one ``(X, Y, n_channels)`` tensor with a ``channel`` axis; ``channel=`` (index, dataset name or
   its ``quantity`` attribute) picks one of them, and a single 2-D image becomes ``(X, Y, 1)``.
3. **Relaxation layout / single tensor**: exactly one numeric dataset with three or more axes (or
   an amplitude + phase, or real + imaginary, pair of same-shape tensors, combined into one
   complex response). 1-D vectors in the file are attached as axis coordinates by their names:
   ``voltage``/``bias``/``dc``/``v`` to a spectral axis of matching length, ``time``/``t`` and
   ``frequency``/``freq`` likewise, ``x``/``y`` to the spatial axes. The voltage axis is moved to
   the first spectral position, because voltage blocks are cut along that axis
   (:class:`reconstruct.base.BlockLayout`); the file's order is kept in ``attrs``.

``dataset_path`` overrides the search: it may name a tensor, or a group whose contents are then
searched as above. ``.npz`` archives are searched like an HDF5 group (rule 3); ``.npy`` files hold
one array. Arrays without coordinate information get index coordinates (unit ``"index"``);
``axis_names`` renames the axes (one name per axis) and, in rule 3, attaches 1-D vectors of the
same name. First two axes are always spatial; NaN marks an unmeasured entry.

Complex responses
-----------------
Complex data (or a compound dtype with real/imag or amplitude/phase fields, or a pair of such
tensors) is turned into a real tensor by ``complex_view``: ``"real"`` (default,
``amplitude * cos(phase)``, the in-phase part), ``"imag"`` (``amplitude * sin(phase)``),
``"amplitude"`` (``|z|``) or ``"phase"`` (``angle(z)`` in radians). Phase stored separately is read
in radians unless its ``units``/``unit`` attribute says degrees. Real data ignores the option.

Provenance
----------
Loaded datasets get ``source`` (the file path) and ``path`` (the dataset path inside it), and in
``attrs``: ``source_file``, ``dataset_path``, ``layout`` (``npy``, ``npz``, ``nsid``, ``tensor``),
``h5_attrs`` (the tensor's JSON-able HDF5 attributes), ``complex_view`` when it applied, and
layout-specific entries (``channels``, ``axis_sources``, ``file_axis_order``,
``original_metadata``).

Project layout written by :func:`save_dataset`
----------------------------------------------
::

    /dataset                       group; attrs: format = "pfm-active-acquisition/dataset",
                                   format_version = 1, quantity, unit, source, path,
                                   attrs_json (Dataset.attrs as JSON), axis_names (JSON list)
    /dataset/data                  float32 (X, Y, *spectral), NaN = not measured
    /dataset/truth                 float32, same shape, optional (synthetic data only)
    /dataset/axis_0, axis_1, ...   1-D coordinates of each axis; attrs name, unit; also attached
                                   to data (and truth) as HDF5 dimension scales, so generic
                                   viewers show the axes

Tensors are chunked per spatial row and LZF-compressed (fast to decompress: a (60, 60, 16, 128)
float32 tensor reads in well under a second; NaN regions shrink); coordinates are stored as they
are. Dataset.attrs must be JSON-like; NumPy scalars and arrays in it are stored as numbers and
lists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from envs.data.dataset import Axis, DataError, Dataset, default_axes

FORMAT_NAME = "pfm-active-acquisition/dataset"
FORMAT_VERSION = 1
SAVED_GROUP = "dataset"
H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
COMPLEX_VIEWS = ("real", "imag", "amplitude", "phase")

# Name tokens that mark a 1-D vector as the coordinates of a particular axis.
_ROLE_TOKENS: dict[str, frozenset[str]] = {
    "voltage": frozenset({"voltage", "voltages", "volt", "volts", "bias", "dc", "vdc", "v"}),
    "time": frozenset({"time", "times", "t"}),
    "frequency": frozenset({"frequency", "frequencies", "freq", "f"}),
    "x": frozenset({"x"}),
    "y": frozenset({"y"}),
}
_SPECTRAL_ROLES = ("voltage", "time", "frequency")
_AMPLITUDE_TOKENS = frozenset({"amp", "amplitude", "amplitudes", "mag", "magnitude", "abs", "r"})
_PHASE_TOKENS = frozenset({"phase", "phases", "phi", "angle", "theta"})
_REAL_TOKENS = frozenset({"real", "re"})
_IMAG_TOKENS = frozenset({"imag", "im", "imaginary"})
# LZF: reading stays about as fast as uncompressed, and unmeasured NaN pixels and smooth data
# shrink; gzip + shuffle saved little on noisy spectra and read far slower, too close to the 1 s
# budget for data + truth (docs/performance.md, "Measured in the code").
_COMPRESSION: dict[str, Any] = {"compression": "lzf"}
# HDF5 attributes that describe structure (references), not the measurement.
_STRUCTURAL_ATTRS = frozenset({"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME"})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_dataset(
    path: str | os.PathLike[str],
    dataset_path: str | None = None,
    axis_names: Sequence[str] | None = None,
    channel: int | str | None = None,
    complex_view: str = "real",
) -> Dataset:
    """Read a tensor file into a :class:`Dataset`.

    Parameters
    ----------
    path
        A ``.npy``, ``.npz`` or HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``) file.
    dataset_path
        HDF5: path of the tensor (or of a group to search); ``.npz``: the array's key. ``None``
        finds the tensor by the rules in the module docstring.
    axis_names
        One name per axis of the loaded tensor, replacing the names found in the file.
    channel
        For files holding several channel images (pyNSID layout): the one to load, by index, by
        dataset name or by its ``quantity`` attribute. ``None`` stacks all channels.
    complex_view
        Real view of complex data: ``"real"`` (default), ``"imag"``, ``"amplitude"``, ``"phase"``.

    Returns
    -------
    Dataset
        float32 tensor ``(X, Y, *spectral)`` with axes, units and provenance.

    Raises
    ------
    DataError
        For a missing or unreadable file, an unknown extension, a missing dataset path, several
        candidate tensors and no path, fewer than three axes, non-numeric or all-NaN data, or
        axis vectors whose length does not match the tensor.
    """
    if complex_view not in COMPLEX_VIEWS:
        raise DataError(f"complex_view={complex_view!r} is not one of {list(COMPLEX_VIEWS)}")
    if isinstance(axis_names, str):
        raise DataError(
            f"axis_names must be a list of names, one per axis, got the string {axis_names!r}"
        )
    if channel is not None and not isinstance(channel, (int, np.integer, str)):
        raise DataError(f"channel must be an index or a name, got {type(channel).__name__}")
    file = Path(path)
    if not file.exists():
        raise DataError(f"file not found: {file}")
    if file.is_dir():
        raise DataError(f"{file} is a directory; expected a .npy, .npz or HDF5 file")
    suffix = file.suffix.lower()
    options = _Options(
        dataset_path, None if axis_names is None else list(axis_names), channel, complex_view
    )
    try:
        if suffix == ".npy":
            loaded = _load_npy(file, options)
        elif suffix == ".npz":
            loaded = _load_npz(file, options)
        elif suffix in H5_SUFFIXES:
            loaded = _load_h5(file, options)
        else:
            raise DataError(
                f"unknown file extension {file.suffix!r} of {file}; expected .npy, .npz or one of "
                f"{', '.join(H5_SUFFIXES)}"
            )
    except DataError as err:
        message = str(err)
        raise DataError(message if str(file) in message else f"{file}: {message}") from None
    return loaded


def save_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` to an HDF5 file in the project layout (see the module docstring).

    Parameters
    ----------
    dataset
        The dataset to write; its ``attrs`` must be JSON-like.
    path
        Destination file; overwritten if it exists. Parent folders are created.

    Returns
    -------
    Path
        The file written.
    """
    if not isinstance(dataset, Dataset):
        raise DataError(f"save_dataset expects a Dataset, got {type(dataset).__name__}")
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        attrs_json = json.dumps(dataset.attrs, default=_json_default)
    except TypeError as err:
        raise DataError(f"Dataset.attrs must be JSON-like to be saved: {err}") from None
    # One chunk per spatial row: whole-tensor reads stay fast and a chunk is a few hundred kB.
    chunks = (1, *dataset.shape[1:])
    with h5py.File(file, "w") as h5:
        group = h5.create_group(SAVED_GROUP)
        group.attrs.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            quantity=dataset.quantity,
            unit=dataset.unit,
            source=dataset.source,
            path=dataset.path,
            attrs_json=attrs_json,
            axis_names=json.dumps(dataset.axis_names),
        )
        tensors = [group.create_dataset("data", data=dataset.data, chunks=chunks, **_COMPRESSION)]
        if dataset.truth is not None:
            tensors.append(
                group.create_dataset("truth", data=dataset.truth, chunks=chunks, **_COMPRESSION)
            )
        for i, axis in enumerate(dataset.axes):
            scale = group.create_dataset(f"axis_{i}", data=axis.values)
            scale.attrs.update(name=axis.name, unit=axis.unit)
            scale.make_scale(axis.name)
            for tensor in tensors:
                tensor.dims[i].attach_scale(scale)
                tensor.dims[i].label = axis.name
    return file


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    dataset_path: str | None
    axis_names: list[str] | None
    channel: int | str | None
    complex_view: str


@dataclass
class _Entry:
    """One named array in a file, read only on demand."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    read: Callable[[], np.ndarray]

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"{self.path} {self.shape} {self.dtype}"


@dataclass
class _Tensor:
    """A tensor on its way to becoming a Dataset."""

    data: np.ndarray
    axes: list[Axis]
    quantity: str = "response"
    unit: str = "a.u."
    path: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


def _is_numeric(dtype: np.dtype) -> bool:
    """Numbers, booleans, or a compound that stores a complex number as two float fields."""
    if dtype.fields is not None:
        return _compound_kind(dtype) is not None
    return bool(np.issubdtype(dtype, np.number) or dtype == np.bool_)


def _tokens(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def _compound_kind(dtype: np.dtype) -> tuple[str, str, str] | None:
    """``("realimag" | "ampphase", field_a, field_b)`` for a two-field complex compound dtype."""
    if dtype.fields is None or len(dtype.fields) != 2:
        return None
    first, second = dtype.names
    for kind, tokens_a, tokens_b in (
        ("realimag", _REAL_TOKENS | {"r"}, _IMAG_TOKENS | {"i"}),
        ("ampphase", _AMPLITUDE_TOKENS, _PHASE_TOKENS),
    ):
        if _tokens(first) & tokens_a and _tokens(second) & tokens_b:
            return kind, first, second
        if _tokens(second) & tokens_a and _tokens(first) & tokens_b:
            return kind, second, first
    return None


def _phase_in_radians(phase: np.ndarray, unit_text: str) -> np.ndarray:
    """Phase in radians, converted when ``unit_text`` (e.g. ``Phase [deg]``) names degrees."""
    return np.deg2rad(phase) if _tokens(unit_text) & {"deg", "degree", "degrees"} else phase


def _complex_from_compound(array: np.ndarray) -> np.ndarray:
    kind = _compound_kind(array.dtype)
    if kind is None:
        raise DataError(
            f"structured dtype with fields {array.dtype.names} is not numeric; expected plain "
            "numbers or a complex compound (real/imag or amplitude/phase fields)"
        )
    label, a, b = kind
    if label == "realimag":
        return array[a].astype(np.float64) + 1j * array[b].astype(np.float64)
    return array[a].astype(np.float64) * np.exp(1j * _phase_in_radians(array[b], b))


def _real_view(array: np.ndarray, view: str, where: str) -> tuple[np.ndarray, bool]:
    """A real array from ``array`` (complex via ``view``); second item: whether it was complex."""
    if array.dtype.fields is not None:
        array = _complex_from_compound(array)
    if not _is_numeric(array.dtype):
        raise DataError(f"{where} holds non-numeric data (dtype {array.dtype}); expected numbers")
    if not np.iscomplexobj(array):
        return array, False
    views = {"real": np.real, "imag": np.imag, "amplitude": np.abs, "phase": np.angle}
    return views[view](array), True


def _unit_of(attrs: dict[str, Any]) -> str:
    for key in ("units", "unit"):
        if key in attrs:
            return str(_jsonable(attrs[key]))
    return ""


def _jsonable(value: Any) -> Any:
    """A JSON-representable copy of an attribute value, or None when there is none."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufUS" or value.dtype == object:
            items = [_jsonable(v) for v in value.ravel().tolist()]
            if any(v is None for v in items):
                return None
            return (
                items[0]
                if value.ndim == 0
                else np.array(items, dtype=object).reshape(value.shape).tolist()
            )
        return None
    return None


def _jsonable_attrs(attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _STRUCTURAL_ATTRS:
            continue
        try:
            converted = _jsonable(value)
        except (TypeError, ValueError):  # references and exotic types carry no measurement info
            continue
        if converted is not None:
            out[key] = converted
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _renamed(axes: list[Axis], names: list[str] | None, shape: tuple[int, ...]) -> list[Axis]:
    """``axes`` with the names asked for (coordinates and units kept)."""
    if names is None:
        return axes
    if len(names) != len(axes):
        raise DataError(
            f"{len(names)} axis names {names} given for a tensor with {len(axes)} axes "
            f"of shape {shape}; expected one name per axis"
        )
    return [Axis(n, a.values, a.unit) for n, a in zip(names, axes, strict=True)]


def _finish(tensor: _Tensor, source: Path, layout: str, options: _Options) -> Dataset:
    """Apply axis names, record provenance, and build the Dataset (which validates)."""
    axes = _renamed(tensor.axes, options.axis_names, tensor.data.shape)
    attrs = {"source_file": str(source), "dataset_path": tensor.path, "layout": layout}
    attrs.update(tensor.attrs)
    return Dataset(
        data=tensor.data,
        axes=axes,
        quantity=tensor.quantity,
        unit=tensor.unit,
        source=str(source),
        path=tensor.path,
        attrs=attrs,
    )


def _check_ndim(shape: tuple[int, ...], where: str) -> None:
    if len(shape) < 3:
        raise DataError(
            f"{where} has shape {shape}: fewer than 3 axes; expected (x, y, spectral...) with at "
            "least one spectral axis"
        )


# --------------------------------------------------------------------------------------------
# .npy / .npz
# --------------------------------------------------------------------------------------------


def _load_npy(file: Path, options: _Options) -> Dataset:
    if options.channel is not None:
        raise DataError(
            "channel= applies to files with several channel images; a .npy holds one array"
        )
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError("holds non-numeric (object) data; expected a numeric array") from None
        raise DataError(f"not a readable .npy file ({err})") from None
    except OSError as err:
        raise DataError(f"not a readable .npy file ({err})") from None
    entry = _Entry("", array.shape, array.dtype, {}, lambda: array)
    tensor = _tensor_from_entries(entry, [], options)
    return _finish(tensor, file, "npy", options)


def _load_npz(file: Path, options: _Options) -> Dataset:
    if options.channel is not None:
        raise DataError(
            "channel= applies to files with several channel images, not to .npz archives"
        )
    try:
        archive = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"not a readable .npz file ({err})") from None
    with archive:
        entries = []
        for key in archive.files:
            try:
                array = archive[key]
            except ValueError:  # object arrays refuse to load without pickle
                array = np.empty((0,), dtype=object)
            entries.append(_Entry(key, array.shape, array.dtype, {}, lambda a=array: a))
        tensor = _select_and_read(entries, options, "archive")
    return _finish(tensor, file, "npz", options)


# --------------------------------------------------------------------------------------------
# Tensor selection and axis vectors (npz and generic HDF5)
# --------------------------------------------------------------------------------------------


def _select_and_read(entries: list[_Entry], options: _Options, container: str) -> _Tensor:
    """Pick the tensor among ``entries`` (or the one ``dataset_path`` names) and read it."""
    by_path = {e.path.strip("/"): e for e in entries}
    if options.dataset_path is not None:
        wanted = options.dataset_path.strip("/")
        if wanted not in by_path:
            raise DataError(
                f"no dataset {options.dataset_path!r} in the {container}; it holds:\n"
                + _listing(entries)
            )
        chosen = by_path[wanted]
        return _tensor_from_entries(chosen, [e for e in entries if e is not chosen], options)
    if len(entries) == 1:
        return _tensor_from_entries(entries[0], [], options)
    numeric = [e for e in entries if _is_numeric(e.dtype)]
    candidates = [e for e in numeric if len(e.shape) >= 3]
    pair = _complex_pair(candidates)
    if pair is not None:
        return _tensor_from_pair(pair, [e for e in entries if e not in pair], options)
    if len(candidates) == 1:
        chosen = candidates[0]
        return _tensor_from_entries(chosen, [e for e in entries if e is not chosen], options)
    if not candidates:
        if not entries:
            raise DataError(f"the {container} holds no datasets")
        if not numeric:
            raise DataError(
                f"the {container} holds no numeric data; it holds:\n" + _listing(entries)
            )
        raise DataError(
            f"the {container} holds no tensor with at least 3 axes (x, y, spectral...); it holds:\n"
            + _listing(entries)
        )
    raise DataError(
        f"the {container} holds {len(candidates)} candidate tensors; choose one with "
        "dataset_path=...:\n" + _listing(candidates)
    )


def _listing(entries: Sequence[_Entry]) -> str:
    return "\n".join(f"  {e.describe()}" for e in entries) or "  (nothing)"


def _complex_pair(candidates: list[_Entry]) -> tuple[_Entry, _Entry] | None:
    """An (amplitude, phase) or (real, imag) pair when those are the only two candidates."""
    if len(candidates) != 2 or candidates[0].shape != candidates[1].shape:
        return None
    a, b = candidates
    for tokens_first, tokens_second in (
        (_AMPLITUDE_TOKENS, _PHASE_TOKENS),
        (_REAL_TOKENS, _IMAG_TOKENS),
    ):
        if _tokens(a.name) & tokens_first and _tokens(b.name) & tokens_second:
            return a, b
        if _tokens(b.name) & tokens_first and _tokens(a.name) & tokens_second:
            return b, a
    return None


def _tensor_from_pair(
    pair: tuple[_Entry, _Entry], others: list[_Entry], options: _Options
) -> _Tensor:
    first, second = pair
    a, b = first.read().astype(np.float64), second.read().astype(np.float64)
    if _tokens(second.name) & _PHASE_TOKENS:
        combined = a * np.exp(1j * _phase_in_radians(b, _unit_of(second.attrs)))
    else:
        combined = a + 1j * b
    merged = _Entry(
        f"{first.path} + {second.path}", first.shape, combined.dtype, first.attrs, lambda: combined
    )
    tensor = _tensor_from_entries(merged, others, options)
    tensor.attrs["complex_sources"] = [first.path, second.path]
    return tensor


def _tensor_from_entries(entry: _Entry, others: list[_Entry], options: _Options) -> _Tensor:
    """Read ``entry`` as the tensor and attach coordinate vectors found among ``others``."""
    where = f"dataset {entry.path!r}" if entry.path else "the array"
    if not _is_numeric(entry.dtype):
        raise DataError(f"{where} holds non-numeric data (dtype {entry.dtype}); expected numbers")
    _check_ndim(entry.shape, where)
    data, was_complex = _real_view(entry.read(), options.complex_view, where)
    axes = default_axes(data.shape)
    vectors = [e for e in others if len(e.shape) == 1 and _is_numeric(e.dtype) and e.shape[0] > 0]
    axes, sources = _attach_vectors(axes, vectors, options.axis_names, data.shape)
    tensor = _Tensor(data, axes, path=entry.path)
    tensor.quantity = str(_jsonable(entry.attrs.get("quantity", "response")))
    tensor.unit = _unit_of(entry.attrs) or "a.u."
    if entry.attrs:
        tensor.attrs["h5_attrs"] = _jsonable_attrs(entry.attrs)
    if was_complex:
        tensor.attrs["complex_view"] = options.complex_view
    if sources:
        tensor.attrs["axis_sources"] = sources
    _voltage_first(tensor)
    return tensor


def _attach_vectors(
    axes: list[Axis], vectors: list[_Entry], axis_names: list[str] | None, shape: tuple[int, ...]
) -> tuple[list[Axis], dict[str, str]]:
    """Attach 1-D vectors as coordinates: by the names asked for, else by name role and length."""
    axes = list(axes)
    sources: dict[str, str] = {}
    assigned: set[int] = set()

    def assign(i: int, name: str, vector: _Entry) -> None:
        axes[i] = Axis(name, np.asarray(vector.read(), dtype=np.float64), _unit_of(vector.attrs))
        sources[name] = vector.path
        assigned.add(i)

    if axis_names is not None and len(axis_names) == len(shape):
        by_name = {v.name: v for v in vectors}
        for i, name in enumerate(axis_names):
            if name in by_name:
                vector = by_name[name]
                if vector.shape[0] != shape[i]:
                    raise DataError(
                        f"axis vector {vector.path!r} has {vector.shape[0]} entries but axis {i} "
                        f"({name!r}) of the tensor has {shape[i]} (tensor shape {shape})"
                    )
                assign(i, name, vector)
        return axes, sources

    for role in ("x", "y", *_SPECTRAL_ROLES):
        with_role = [v for v in vectors if _tokens(v.name) & _ROLE_TOKENS[role]]
        if not with_role:
            continue
        allowed = [{"x": 0, "y": 1}[role]] if role in ("x", "y") else range(2, len(shape))
        placed = False
        for vector in with_role:
            free = [i for i in allowed if i not in assigned and shape[i] == vector.shape[0]]
            if free:
                assign(free[0], role, vector)
                placed = True
                break
        if not placed:
            where = "spatial axis" if role in ("x", "y") else "spectral axis"
            raise DataError(
                f"{role} vector {with_role[0].path!r} has {with_role[0].shape[0]} entries but no "
                f"free {where} of the tensor (shape {shape}) has that length"
            )
    return axes, sources


def _voltage_first(tensor: _Tensor) -> None:
    """Move a voltage axis found elsewhere to the first spectral position (axis 2)."""
    names = [a.name for a in tensor.axes]
    if "voltage" not in names[2:] or names.index("voltage") == 2:
        return
    k = names.index("voltage")
    order = [0, 1, k] + [i for i in range(2, len(names)) if i != k]
    tensor.data = np.transpose(tensor.data, order)
    tensor.axes = [tensor.axes[i] for i in order]
    tensor.attrs["file_axis_order"] = names


# --------------------------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------------------------


def _load_h5(file: Path, options: _Options) -> Dataset:
    try:
        h5 = h5py.File(file, "r")
    except OSError as err:
        raise DataError(f"not a readable HDF5 file ({err})") from None
    with h5:
        scope: h5py.Group | h5py.Dataset = h5
        if options.dataset_path is not None:
            if options.dataset_path not in h5:
                raise DataError(
                    f"no dataset {options.dataset_path!r} in the file; it holds:\n"
                    + _listing(_h5_entries(h5))
                )
            scope = h5[options.dataset_path]
        if isinstance(scope, h5py.Group):
            saved = _find_saved_group(scope)
        else:  # a path to the project layout's data tensor still reads the whole saved dataset
            saved = scope.parent if _is_saved_group(scope.parent) else None
        if saved is not None:
            if options.channel is not None:
                raise DataError("channel= does not apply to a file in the project layout")
            return _read_saved(saved, options)
        if isinstance(scope, h5py.Group):
            tensor, layout = _read_h5_group(scope, options)
        else:
            tensor, layout = _read_h5_dataset(scope, options)
        if h5.attrs:
            tensor.attrs["h5_file_attrs"] = _jsonable_attrs(h5.attrs)
    return _finish(tensor, file, layout, options)


def _h5_entries(group: h5py.Group) -> list[_Entry]:
    """Every dataset below ``group`` except dimension scales, in file order."""
    entries: list[_Entry] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not _is_scale(obj):
            entries.append(_entry_of(obj))

    group.visititems(visit)
    return entries


def _entry_of(ds: h5py.Dataset) -> _Entry:
    return _Entry(ds.name, ds.shape or (), ds.dtype, dict(ds.attrs), lambda: ds[()])


def _is_scale(ds: h5py.Dataset) -> bool:
    return _jsonable(ds.attrs.get("CLASS", b"")) == "DIMENSION_SCALE"


def _is_nsid(ds: h5py.Dataset) -> bool:
    return "DIMENSION_LABELS" in ds.attrs and not _is_scale(ds)


def _read_h5_dataset(ds: h5py.Dataset, options: _Options) -> tuple[_Tensor, str]:
    if _is_nsid(ds):
        return _read_nsid([ds], options), "nsid"
    if options.channel is not None:
        raise DataError(
            f"channel= applies to several channel images, but {ds.name!r} is one tensor"
        )
    parent = ds.parent
    others = [e for e in _h5_entries(parent) if e.path != ds.name]
    return _tensor_from_entries(_entry_of(ds), others, options), "tensor"


def _read_h5_group(group: h5py.Group, options: _Options) -> tuple[_Tensor, str]:
    nsid: list[h5py.Dataset] = []
    group.visititems(
        lambda _, obj: nsid.append(obj) if isinstance(obj, h5py.Dataset) and _is_nsid(obj) else None
    )
    if nsid:
        return _read_nsid(nsid, options), "nsid"
    if options.channel is not None:
        raise DataError("channel= applies to files with several channel images (pyNSID layout)")
    # dataset_path (if any) already chose this group: search inside it.
    inside = replace(options, dataset_path=None)
    container = "file" if group.name == "/" else f"group {group.name!r}"
    return _select_and_read(_h5_entries(group), inside, container), "tensor"


def _find_saved_group(group: h5py.Group) -> h5py.Group | None:
    """``group`` itself, or its ``dataset`` child, when it holds the project layout."""
    for candidate in (group, group.get(SAVED_GROUP)):
        if _is_saved_group(candidate):
            return candidate
    return None


def _is_saved_group(obj: object) -> bool:
    """Whether ``obj`` is a group written by :func:`save_dataset`."""
    return isinstance(obj, h5py.Group) and _jsonable(obj.attrs.get("format")) == FORMAT_NAME


def _read_saved(group: h5py.Group, options: _Options) -> Dataset:
    """Read the project layout back into exactly the Dataset that was saved."""
    if "data" not in group:
        raise DataError(f"project-layout group {group.name!r} lacks its 'data' tensor")
    data = group["data"][()]
    names = json.loads(group.attrs["axis_names"])
    axes = []
    for i, name in enumerate(names):
        scale = group.get(f"axis_{i}")
        if scale is None:
            raise DataError(f"project-layout group {group.name!r} lacks axis_{i} ({name!r})")
        axes.append(Axis(name, scale[()], str(_jsonable(scale.attrs.get("unit", "")))))
    axes = _renamed(axes, options.axis_names, data.shape)
    return Dataset(
        data=data,
        axes=axes,
        quantity=str(_jsonable(group.attrs["quantity"])),
        unit=str(_jsonable(group.attrs["unit"])),
        source=str(_jsonable(group.attrs["source"])),
        path=str(_jsonable(group.attrs["path"])),
        attrs=json.loads(group.attrs["attrs_json"]),
        truth=group["truth"][()] if "truth" in group else None,
    )


# --- pyNSID / sidpy ---------------------------------------------------------------------------


def _read_nsid(datasets: list[h5py.Dataset], options: _Options) -> _Tensor:
    """Read one NSID dataset, or stack several same-shape 2-D channel images."""
    channel_index = np.arange(len(datasets), dtype=np.float64)
    if options.channel is not None:
        index = _pick_channel(datasets, options.channel)
        datasets, channel_index = [datasets[index]], channel_index[[index]]
    tensors = [d for d in datasets if d.ndim >= 3]
    if len(datasets) > 1 and (tensors or len({d.shape for d in datasets}) > 1):
        raise DataError(
            f"the file holds {len(datasets)} pyNSID datasets that cannot be stacked as channels; "
            "choose one with channel=... or dataset_path=...:\n"
            + _listing([_entry_of(d) for d in datasets])
        )
    for ds in datasets:
        if not _is_numeric(ds.dtype):
            raise DataError(
                f"dataset {ds.name!r} holds non-numeric data (dtype {ds.dtype}); expected numbers"
            )
        if ds.ndim < 2:
            raise DataError(
                f"dataset {ds.name!r} has shape {ds.shape}: fewer than 3 axes; expected an image "
                "(x, y) or a tensor (x, y, spectral...)"
            )
    arrays, axes_per_ds, complex_flags = [], [], []
    for ds in datasets:
        data, was_complex = _real_view(ds[()], options.complex_view, f"dataset {ds.name!r}")
        axes, spatial = _nsid_axes(ds)
        if len(spatial) == 2 and spatial != [0, 1]:
            order = spatial + [i for i in range(ds.ndim) if i not in spatial]
            data = np.transpose(data, order)
            axes = [axes[i] for i in order]
        arrays.append(data)
        axes_per_ds.append(axes)
        complex_flags.append(was_complex)
    first = datasets[0]
    channels = [
        {
            "path": d.name,
            "name": d.name.rsplit("/", 1)[-1],
            "quantity": str(_jsonable(d.attrs.get("quantity", ""))),
            "unit": _unit_of(dict(d.attrs)),
        }
        for d in datasets
    ]
    if first.ndim >= 3:
        data, axes, path = arrays[0], axes_per_ds[0], first.name
    else:
        data = np.stack(arrays, axis=-1)
        channel_axis = Axis("channel", channel_index, "index")
        axes = [*axes_per_ds[0], channel_axis]
        path = first.name if len(datasets) == 1 else _common_group(datasets)
    tensor = _Tensor(data, axes, path=path)
    quantities = list(dict.fromkeys(c["quantity"] for c in channels if c["quantity"]))
    units = list(dict.fromkeys(c["unit"] for c in channels))
    tensor.quantity = ", ".join(quantities) or "response"
    tensor.unit = (
        units[0] if len(units) == 1 and units[0] else ("mixed" if len(units) > 1 else "a.u.")
    )
    tensor.attrs["channels"] = channels
    tensor.attrs["h5_attrs"] = _jsonable_attrs(first.attrs)
    metadata = first.parent.get("original_metadata")
    if isinstance(metadata, h5py.Group):
        tensor.attrs["original_metadata"] = _jsonable_attrs(metadata.attrs)
    if any(complex_flags):
        tensor.attrs["complex_view"] = options.complex_view
    return tensor


def _pick_channel(datasets: list[h5py.Dataset], channel: int | str) -> int:
    """Index into ``datasets`` of the channel named by index, dataset name or quantity."""
    listing = "\n".join(
        f"  {i}: {d.name.rsplit('/', 1)[-1]} ({_jsonable(d.attrs.get('quantity', '')) or '-'})"
        for i, d in enumerate(datasets)
    )
    if isinstance(channel, (int, np.integer)):
        if 0 <= channel < len(datasets):
            return int(channel)
        raise DataError(
            f"channel {channel} out of range; the file has {len(datasets)} channels:\n{listing}"
        )
    wanted = channel.strip("/").lower()
    for index, ds in enumerate(datasets):
        keys = {
            ds.name.strip("/").lower(),
            ds.name.rsplit("/", 1)[-1].lower(),
            str(_jsonable(ds.attrs.get("quantity", ""))).lower(),
        }
        if wanted in keys:
            return index
    raise DataError(f"no channel named {channel!r}; the channels are:\n{listing}")


def _common_group(datasets: list[h5py.Dataset]) -> str:
    common = os.path.commonpath([d.name for d in datasets])
    return common if common.startswith("/") else "/" + common


def _nsid_axes(ds: h5py.Dataset) -> tuple[list[Axis], list[int]]:
    """Axes of an NSID dataset from its labels and scales, and the indices of spatial axes."""
    axes: list[Axis] = []
    spatial: list[int] = []
    for i, dim in enumerate(ds.dims):
        label = dim.label or f"dim_{i}"
        scale = dim[0] if len(dim) else ds.parent.get(label)
        if not isinstance(scale, h5py.Dataset) or scale.ndim != 1:
            axes.append(Axis(label, np.arange(ds.shape[i], dtype=np.float64), "index"))
            continue
        if scale.shape[0] != ds.shape[i]:
            raise DataError(
                f"axis vector {scale.name!r} has {scale.shape[0]} entries but axis {i} ({label!r}) "
                f"of dataset {ds.name!r} has {ds.shape[i]} (shape {ds.shape})"
            )
        axes.append(
            Axis(label, np.asarray(scale[()], dtype=np.float64), _unit_of(dict(scale.attrs)))
        )
        if str(_jsonable(scale.attrs.get("dimension_type", ""))).upper() == "SPATIAL":
            spatial.append(i)
    return axes, spatial
