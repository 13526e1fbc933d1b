"""Reconstructors by name, so command-line programs and configs can choose one with a string.

The cheap baselines live in :mod:`reconstruct.interpolate`; the GP and low-rank reconstructors
are imported only when asked for, so choosing a baseline never pays for (or depends on) them.
A module's reconstructor is found by its ``name`` class attribute.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from reconstruct.base import BlockLayout, Reconstructor

# name -> the one module that defines the Reconstructor subclass whose ``name`` attribute is
# that name. (``reconstruct.gp`` is the spatial GP engine, not a reconstructor: the "gp"
# reconstructor, a GP over low-rank coefficients, is defined in ``reconstruct.lowrank``.)
_MODULES: dict[str, str] = {
    "mean": "reconstruct.interpolate",
    "nearest": "reconstruct.interpolate",
    "idw": "reconstruct.interpolate",
    "linear": "reconstruct.interpolate",
    "gp": "reconstruct.lowrank",
    "lowrank": "reconstruct.lowrank",
}


def reconstructor_names() -> list[str]:
    """Every registered name (whether or not its module can be imported here)."""
    return list(_MODULES)


def reconstructor_class(name: str) -> type[Reconstructor]:
    """The class registered as ``name``.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    ImportError
        When the module registered for ``name`` is missing, or does not define it.
    """
    if name not in _MODULES:
        raise KeyError(f"unknown reconstructor {name!r}; choose one of {reconstructor_names()}")
    module = importlib.import_module(_MODULES[name])
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, Reconstructor)
            and getattr(obj, "name", None) == name
            and obj.__module__ == module.__name__
        ):
            return obj
    raise ImportError(f"{module.__name__} defines no Reconstructor with name = {name!r}")


def make_reconstructor(
    name: str,
    spatial_shape: tuple[int, int],
    spectral_shape: Sequence[int],
    layout: BlockLayout | None = None,
    **kwargs: Any,
) -> Reconstructor:
    """Build the reconstructor registered as ``name``.

    Parameters
    ----------
    name
        One of :func:`reconstructor_names`: ``"mean"``, ``"nearest"``, ``"idw"``, ``"linear"``,
        ``"gp"``, ``"lowrank"``.
    spatial_shape, spectral_shape, layout
        As for :class:`reconstruct.base.Reconstructor`.
    **kwargs
        Passed to the class (``device``, ``dtype`` and the class's own options).
    """
    check_reconstructor_options(name, kwargs)
    return reconstructor_class(name)(spatial_shape, spectral_shape, layout, **kwargs)


def check_reconstructor_options(name: str, options: dict[str, Any]) -> None:
    """``ValueError`` (one line naming the known options) when ``options`` holds a keyword the
    reconstructor registered as ``name`` does not take; its values are the class's to check.
    So that a misspelt option from a command line fails before any work, not in a traceback
    from the constructor."""
    cls = reconstructor_class(name)
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [p for p in parameters if p not in ("spatial_shape", "spectral_shape", "layout")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"reconstructor {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(known)}"
        )
