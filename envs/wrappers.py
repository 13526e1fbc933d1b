"""Wrappers that adapt the acquisition environment to libraries with other conventions."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class MaskObservation(gym.ObservationWrapper):
    """Adds the action mask to a ``Dict`` observation under ``key`` (default ``"action_mask"``).

    For libraries that read the mask from the observation (e.g. TorchRL's ``ActionMask``
    transform) rather than calling ``action_masks()``. The mask is ``MultiBinary(n)``, int8,
    1 where the action is valid; ``action_masks()`` stays reachable through the wrapper.

    Parameters
    ----------
    env
        An environment with a ``Dict`` observation space, a ``Discrete`` action space and an
        ``action_masks()`` method.
    key
        Name of the new observation entry; must not clash with an existing one.
    """

    def __init__(self, env: gym.Env, key: str = "action_mask") -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError(
                f"MaskObservation needs a Dict observation space, got {env.observation_space}"
            )
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(
                f"MaskObservation needs a Discrete action space, got {env.action_space}"
            )
        if key in env.observation_space.spaces:
            raise ValueError(f"observation already has a {key!r} entry")
        if not callable(getattr(env.unwrapped, "action_masks", None)):
            raise TypeError("the environment has no action_masks() method")
        self.key = key
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces, key: spaces.MultiBinary(int(env.action_space.n))}
        )

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, self.key: self.action_masks().astype(np.int8)}

    def action_masks(self) -> np.ndarray:
        """Bool mask of valid actions, from the wrapped environment."""
        return np.asarray(self.env.unwrapped.action_masks(), dtype=bool)
