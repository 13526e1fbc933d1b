"""Acquisition policies behind one interface (`Policy`), chosen by name (`make_policy`)."""

from agents.catalog import available_policies, make_policy
from agents.policy import Policy

__all__ = ["Policy", "available_policies", "make_policy"]
