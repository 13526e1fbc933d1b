"""The programs' one command-line style: options generated from a settings dataclass.

Every program (``train.py``, ``evaluate.py``, ``experiment.py``, ``train_distributed.py``, the
instrument server) keeps its settings in a dataclass whose fields carry their help text
(:func:`option`). :func:`add_options` turns the fields into ``--kebab-case`` options with their
defaults shown, and :func:`settings_from` builds the dataclass from the parsed options, so its
``__post_init__`` is the one place the values are checked. Bad input is one line naming the
option and exit status 2 (:class:`OneLineParser`), never a traceback.

Field types understood: ``int``, ``float``, ``str``, ``bool`` (``--flag / --no-flag``), their
``X | None`` forms (``None`` is the default, not something to type), ``dict`` (a JSON object)
and ``list[int]`` / ``list[str]`` (comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

Settings = TypeVar("Settings")


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the option, and exit status 2 (no usage block)."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the program's docstring as written (its example commands) and shows defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default is not argparse.SUPPRESS
            and action.option_strings
            and not isinstance(action, argparse._HelpAction)
            and action.default not in (None, "", {}, [])
        ):
            text += " (default: %(default)s)"
        return text


def option(
    default: Any,
    help: str,  # noqa: A002  (argparse's own word)
    *,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    flag: bool = True,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``choices`` limits the values, ``metavar`` names the value in ``--help``; ``flag=False``
    keeps the field off the command line (a setting only code or a stored record sets).
    Mutable defaults (dict, list) are copied for each instance.
    """
    metadata = {"help": help, "choices": choices, "metavar": metavar, "flag": flag}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive_int(text: str) -> int:
    """An integer >= 1, for ``type=``."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def json_object(text: str) -> dict:
    """A JSON object of option names and values (``""`` is ``{}``), for ``type=`` and for
    programs that check their options themselves (``ValueError``, one line)."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("give a JSON object of option names and values")
    return value


def _comma_list(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"give comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    parse.__name__ = f"comma-separated {kind.__name__} list"
    return parse


def _named(kind: type) -> Any:
    """``kind`` for ``type=``, with a readable name in argparse's 'invalid value' message."""

    def parse(text: str) -> Any:
        return kind(text)

    parse.__name__ = {int: "integer", float: "number"}.get(kind, kind.__name__)
    return parse


def _value_parser(annotation: Any) -> tuple[Any, bool]:
    """``(type= callable, is_bool)`` for a field's resolved type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _value_parser(members[0])
    if annotation is bool:
        return None, True
    if annotation in (int, float):
        return _named(annotation), False
    if annotation is str:
        return str, False
    if annotation is dict or origin is dict:
        return json_object, False
    if origin in (list, tuple):
        (item,) = set(typing.get_args(annotation)) - {Ellipsis} or {str}
        return _comma_list(item), False
    raise TypeError(f"no command-line form for a field of type {annotation!r}")


def add_options(
    parser: argparse.ArgumentParser,
    settings: type,
    *,
    defaults: dict[str, Any] | None = None,
    exclude: Sequence[str] = (),
    required: Sequence[str] = (),
) -> None:
    """One option per field of the dataclass ``settings`` (those made with :func:`option` and
    ``flag`` true), named ``--field-name``, with the field's help, choices and default
    (``defaults`` overrides the dataclass's; ``required`` fields have none)."""
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        meta = f.metadata
        if "help" not in meta or not meta.get("flag", True) or f.name in exclude:
            continue
        if defaults and f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind, is_bool = _value_parser(hints[f.name])
        name = "--" + f.name.replace("_", "-")
        extra: dict[str, Any] = {}
        if meta.get("choices") is not None:
            extra["choices"] = meta["choices"]
        if meta.get("metavar") is not None:
            extra["metavar"] = meta["metavar"]
        if f.name in required:
            extra["required"] = True
        else:
            extra["default"] = default
        if is_bool:
            parser.add_argument(
                name, action=argparse.BooleanOptionalAction, help=meta["help"], **extra
            )
        else:
            if isinstance(default, list):
                extra["default"] = ",".join(str(v) for v in default)
            elif isinstance(default, dict) and "default" in extra:
                extra["default"] = json.dumps(default) if default else ""
            parser.add_argument(name, type=kind, help=meta["help"], **extra)


def settings_from(
    settings: type[Settings], namespace: argparse.Namespace, **fixed: Any
) -> Settings:
    """The dataclass ``settings`` from the parsed options that name its fields (and ``fixed``
    values); its ``__post_init__`` checks them."""
    names = {f.name for f in dataclasses.fields(settings)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    return settings(**{**values, **fixed})


def program_parser(prog: str, doc: str | None) -> OneLineParser:
    """The parser every program starts from: its docstring as the description (example
    commands kept as written), defaults shown, one-line errors."""
    return OneLineParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def fail(prog: str, message: str, status: int = 2) -> typing.NoReturn:
    """Print ``prog: error: message`` on one line and exit with ``status``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)
