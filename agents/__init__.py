"""Acquisition policies behind one interface (`Policy`), chosen by name (`make_policy`).

The catalog pulls in torch and every policy: it is imported only when asked for, so a program
that needs only :mod:`envs.command_line` starts quickly.
"""

from typing import Any

__all__ = ["Policy", "available_policies", "make_policy"]


def __getattr__(name: str) -> Any:
    if name in ("available_policies", "make_policy"):
        import agents.catalog

        return getattr(agents.catalog, name)
    if name == "Policy":
        from agents.policy import Policy

        return Policy
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
