"""Checks of reconstructor options.

Every reconstructor checks its options at construction with :func:`check_int`,
:func:`check_real` and :func:`choose`: a wrong type or value raises one ``TypeError`` or
``ValueError`` that names the option and what it accepts, instead of failing hundreds of
measurements later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, if it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    accepts: str,
    valid: Callable[[float], bool] = math.isfinite,
) -> float:
    """``value`` as a float, if it is a real number (not a bool) for which ``valid`` holds;
    ``accepts`` says in words what is accepted (for the message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {accepts}, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and valid(number)):
        raise ValueError(f"{name} must be {accepts}, got {value!r}")
    return number


def choose(name: str, value: Any, table: Mapping[str, Any]) -> Any:
    """The entry of ``table`` named ``value`` (one of its keys)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(table)}, got {value!r}")
    if value not in table:
        raise ValueError(f"{name} must be one of {tuple(table)}, got {value!r}")
    return table[value]
