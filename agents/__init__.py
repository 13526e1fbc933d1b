"""Acquisition policies behind one interface (`Policy`), chosen by name (`make_policy`)."""

from agents.base import Policy
from agents.registry import available_policies, make_policy

__all__ = ["Policy", "available_policies", "make_policy"]
