"""Command-line pieces the studies share: bad input is one line naming the option."""

from __future__ import annotations

import argparse
import json


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the option, and exit status 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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
