"""Policies by name, so command lines and configs can choose one with a string.

``make_policy("name")`` or ``make_policy("name:argument")`` builds a policy; each class reads its
own argument (:meth:`agents.policy.Policy.from_argument`), e.g. ``"ppo:models/other.zip"``,
``"gp-surprise-per-second:1.5"`` (the surprise weight) or ``"variance-reduction:128"`` (the
candidate count). The PPO policy is listed only when its dependencies import.

``"rllib:CHECKPOINT"`` loads a policy trained with Ray RLlib (``train_distributed.py``;
:class:`agents.rllib.RLlibPolicy`), and so does ``"ppo:CHECKPOINT"`` when the path is an RLlib
algorithm checkpoint folder. Ray is imported only then; without it the error is one line
naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path

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


#: Name of the policy trained with Ray RLlib (its class needs the ``distributed`` extra).
RLLIB_NAME = "rllib"
#: The file RLlib writes at the top of every checkpoint folder.
RLLIB_CHECKPOINT_FILE = "rllib_checkpoint.json"


def is_rllib_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder that RLlib wrote as a checkpoint."""
    return (Path(path).expanduser() / RLLIB_CHECKPOINT_FILE).is_file()


def _rllib_policy(argument: str | None) -> Policy:
    try:
        from agents.rllib import RLlibPolicy
    except ImportError as err:  # no Ray: one line naming the extra
        raise ValueError(f"policy {RLLIB_NAME!r}: {err}") from None
    return RLlibPolicy.from_argument(argument)


def available_policies() -> list[str]:
    """Registered policy names that build without an argument (``rllib:CHECKPOINT`` needs
    one, and Ray, so it is not listed)."""
    return sorted(_policy_classes())


def make_policy(spec: str) -> Policy:
    """Build a policy from ``"name"`` or ``"name:argument"``."""
    name, _, argument = spec.partition(":")
    if name == RLLIB_NAME or (name == "ppo" and argument and is_rllib_checkpoint(argument)):
        return _rllib_policy(argument or None)
    classes = _policy_classes()
    if name not in classes:
        raise ValueError(
            f"unknown policy {name!r}; available: {', '.join(sorted(classes))} "
            f"(and {RLLIB_NAME}:CHECKPOINT)"
        )
    return classes[name].from_argument(argument or None)
