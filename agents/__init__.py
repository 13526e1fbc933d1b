"""Acquisition policies behind one interface (`Policy`), chosen by name (`make_policy`)."""

from agents.base import Policy, available_policies, make_policy, register_policy

__all__ = ["Policy", "available_policies", "make_policy", "register_policy"]
