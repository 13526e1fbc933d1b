"""The one interface every acquisition policy follows, and the registry that names them.

A policy is told about a new episode with :meth:`Policy.reset` and then asked for one action at a
time with :meth:`Policy.act`. Model-based heuristics may read the environment's public model
state (its reconstructor, cost model and tip position) through the env handed to ``reset``: a
real instrument has the same reconstruction at hand. Only policies marked ``privileged`` may read
the dataset itself (the ground truth); tables and plots label them as such.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np


class Policy(ABC):
    """An acquisition policy: ``reset(env, seed)`` then ``act(observation, action_mask)``."""

    #: Registry name, e.g. ``"gp-uncertainty"``.
    name: str = "policy"
    #: True for policies that read the ground truth (upper references, never deployable).
    privileged: bool = False

    def __init__(self) -> None:
        self.env: Any = None
        self.rng = np.random.default_rng(0)

    def reset(self, env: gym.Env, seed: int | None = None) -> None:
        """Start an episode on ``env`` (the unwrapped acquisition env is kept); seed the policy."""
        self.env = env.unwrapped
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def act(self, observation: dict[str, np.ndarray], action_mask: np.ndarray) -> int:
        """Return a flat action index whose ``action_mask`` entry is True."""

    @property
    def label(self) -> str:
        """Name for tables and plots; privileged policies say so."""
        return f"{self.name} (privileged)" if self.privileged else self.name


PolicyFactory = Callable[[str | None], Policy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str) -> Callable[[PolicyFactory], PolicyFactory]:
    """Decorator registering ``factory(argument) -> Policy`` under ``name``."""

    def decorator(factory: PolicyFactory) -> PolicyFactory:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_policies() -> list[str]:
    """Registered policy names."""
    import agents.baselines  # noqa: F401  (registers the baselines)

    try:
        import agents.ppo  # noqa: F401  (registers "ppo" when its dependencies import)
    except ImportError:
        pass
    return sorted(_REGISTRY)


def make_policy(spec: str) -> Policy:
    """Build a policy from ``"name"`` or ``"name:argument"`` (e.g. ``"ppo:models/ppo.zip"``,
    ``"static-subsample:6"``)."""
    name, _, argument = spec.partition(":")
    names = available_policies()
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(names)}")
    return _REGISTRY[name](argument or None)
