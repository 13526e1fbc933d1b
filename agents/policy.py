"""The one interface every acquisition policy follows (:mod:`agents.catalog` names them).

A policy is told about a new episode with :meth:`Policy.reset` and then asked for one action at a
time with :meth:`Policy.act`. Model-based heuristics read the environment's model state (layout,
what is measured, the reconstruction's estimate and uncertainty, the prices of actions, the
budget) through one read-only view, :class:`envs.acquisition.view.AcquisitionView`, which
``reset`` keeps as ``self.view``: a real instrument's operator has the same at hand. A policy
keeps no handle on the env itself. Only policies marked ``privileged`` get the ground truth:
their ``self.view`` is a :class:`envs.acquisition.view.PrivilegedView`; tables and plots label
them as such.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np

from envs.acquisition.view import AcquisitionView


class Policy(ABC):
    """An acquisition policy: ``reset(env, seed)`` then ``act(observation, action_mask)``."""

    #: Registry name, e.g. ``"gp-uncertainty"``.
    name: str = "policy"
    #: True for policies that read the ground truth (upper references, never deployable).
    privileged: bool = False

    def __init__(self) -> None:
        #: The read-only view of the episode's env (None before ``reset``, or on an env that
        #: is no acquisition env); a privileged policy's is a ``PrivilegedView``.
        self.view: AcquisitionView | None = None
        self.rng = np.random.default_rng(0)

    def reset(self, env: gym.Env, seed: int | None = None) -> None:
        """Start an episode on ``env``: keep its view (``env.unwrapped.view``; for a privileged
        policy the view with the ground truth), not the env; seed the policy."""
        view = getattr(env.unwrapped, "view", None)
        if view is not None and self.privileged:
            view = view.privileged(self)
        self.view = view
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def act(self, observation: dict[str, np.ndarray], action_mask: np.ndarray) -> int:
        """Return a flat action index whose ``action_mask`` entry is True."""

    @classmethod
    def from_argument(cls, argument: str | None) -> Policy:
        """The policy for ``"name:argument"`` (``argument`` None for a bare ``"name"``); a
        policy that takes no argument refuses one."""
        if argument:
            raise ValueError(f"policy {cls.name!r} takes no argument, got {argument!r}")
        return cls()

    def env_settings(self) -> dict[str, Any]:
        """Env settings (:class:`envs.acquisition.factory.EnvConfig` fields) this policy needs,
        e.g. the
        observation planes a trained model reads; programs build its env with them."""
        return {}

    @property
    def label(self) -> str:
        """Name for tables and plots; privileged policies say so."""
        return f"{self.name} (privileged)" if self.privileged else self.name
