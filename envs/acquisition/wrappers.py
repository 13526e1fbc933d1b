"""Wrappers that adapt the acquisition environment to libraries with other conventions."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.acquisition.factory import EnvConfig, make_env


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


#: Observation key of the action mask in the RLlib env (added by :class:`MaskObservation`).
MASK_KEY = "action_mask"
#: ``info`` key saying whether the action just taken was masked out.
INVALID_ACTION_KEY = "invalid_action"


class CountInvalidActions(gym.Wrapper):
    """Says in ``info[INVALID_ACTION_KEY]`` whether each action was masked out when taken,
    and counts them in ``invalid_actions`` (since the wrapper was made).

    The acquisition env accepts a masked-out (already measured) block as a penalised no-op, so
    a policy that ignored the mask would train without error; this flag makes it visible.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.invalid_actions = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return observation, {**info, INVALID_ACTION_KEY: False}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        invalid = not bool(self.env.unwrapped.action_masks()[int(action)])
        self.invalid_actions += int(invalid)
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated, truncated, {**info, INVALID_ACTION_KEY: invalid}

    def action_masks(self) -> np.ndarray:
        return np.asarray(self.env.unwrapped.action_masks(), dtype=bool)


def make_rllib_env(env_config: dict[str, Any] | None = None) -> gym.Env:
    """The env creator RLlib calls on every env runner.

    ``env_config`` holds :class:`envs.acquisition.factory.EnvConfig` settings (JSON-safe: it
    travels to remote workers); RLlib passes it as an ``EnvContext``, a dict that also carries the
    runner's index, which is not a setting and is dropped here.
    """
    settings = dict(env_config or {})
    # Fail on the driver's side of a typo, with the list of known settings.
    EnvConfig.from_kwargs(**settings)
    return CountInvalidActions(MaskObservation(make_env(**settings), key=MASK_KEY))
