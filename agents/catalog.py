"""Policies by name, so command lines and configs can choose one with a string.

``make_policy("name")`` or ``make_policy("name:argument")`` builds a policy; each class reads its
own argument (:meth:`agents.policy.Policy.from_argument`), e.g. ``"ppo:models/other.zip"``,
``"gp-surprise-per-second:1.5"`` (the surprise weight) or ``"variance-reduction:128"`` (the
candidate count). The PPO policy is listed only when its dependencies import.
"""

from __future__ import annotations

import agents.baselines as baselines
from agents.policy import Policy

_BASELINES: tuple[type[Policy], ...] = (
    baselines.RandomPolicy,
    baselines.RasterPolicy,
    baselines.StaticSubsamplePolicy,
    baselines.StaticBasisPolicy,
    baselines.UncertaintyPolicy,
    baselines.UncertaintyPerSecondPolicy,
    baselines.SurprisePerSecondPolicy,
    baselines.EnergySurprisePerSecondPolicy,
    baselines.CalibratedEnergySurprisePolicy,
    baselines.VarianceReductionPolicy,
    baselines.GreedyOraclePolicy,
    baselines.StructureOraclePolicy,
)


def _policy_classes() -> dict[str, type[Policy]]:
    classes: list[type[Policy]] = list(_BASELINES)
    try:
        from agents.ppo import PPOPolicy
    except ImportError:  # sb3-contrib missing: the heuristics still work
        pass
    else:
        classes.append(PPOPolicy)
    return {cls.name: cls for cls in classes}


def available_policies() -> list[str]:
    """Registered policy names."""
    return sorted(_policy_classes())


def make_policy(spec: str) -> Policy:
    """Build a policy from ``"name"`` or ``"name:argument"``."""
    name, _, argument = spec.partition(":")
    classes = _policy_classes()
    if name not in classes:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(sorted(classes))}")
    return classes[name].from_argument(argument or None)
