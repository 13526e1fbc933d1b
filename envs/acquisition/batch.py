"""Batch decisions: a policy that sets how the error estimates are weighed, k measurements at a
time.

The one-measurement env asks a policy for one of tens of thousands of actions per step, over
episodes of thousands of steps: a long horizon and a huge action space, where one-step values
are mostly decided by where the reconstruction is wrong (which no observation shows well).
:class:`BatchDecisionEnv` offers learning a different decision: every step chooses the
*weights* of the cost-aware score (:class:`WeightedScore`), and the env then takes the ``k``
valid measurements with the highest score, at most one per pixel, in one go. An episode is
``budget / (k measurements)`` decisions of a few numbers each, and the score's recomputation
(the policy's share of the algorithm time) is paid once per ``k`` measurements.

What the weights can express is what a one-step heuristic cannot schedule: how much the
posterior variance should count against the seconds (exploration against cost), how much a
short read window is credited with what it teaches about the rest of its curves, and how much
completing pixels that already have blocks is preferred (building the spectral basis early).
The weights ``(1, 1, 1, 0)``, the action 0, are ``gp-uncertainty-per-second``'s score.

The wrapped env itself is not changed (its one-measurement interface stays as it is); the
observation here is a short vector of what the episode shows without the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.acquisition.view import AcquisitionView, as_view

#: The weights a decision sets, and the range each may take.
WEIGHT_NAMES = ("uncertainty_power", "cost_power", "window_credit", "completion_bonus")
WEIGHT_LOW = np.array([0.25, 0.0, 0.0, -2.0])
WEIGHT_HIGH = np.array([2.0, 2.0, 2.0, 2.0])
#: ``gp-uncertainty-per-second``'s weights: the action 0.
HEURISTIC_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.0])
#: How far an action of +-1 moves each weight from the heuristic's.
WEIGHT_SPAN = np.array([0.75, 1.0, 1.0, 2.0])

#: The observation's features, in order.
FEATURES = (
    "budget_used",
    "units_measured",
    "map_change",
    "pixels_complete",
    "pixels_started",
    "log_mean_uncertainty",  # over the unmeasured units, relative to the mean at reset
    "log_max_uncertainty",  # the same for the largest
)


@dataclass(frozen=True)
class WeightedScore:
    """The cost-aware score with tunable weights, for every action of an acquisition env:

    ``log score = a log(variance removed) - b log(seconds) + d * (share of the pixel's blocks
    already read in full)``, where the variance removed is that of the reads an action takes
    plus ``c`` times the variance it removes from the rest of those curves
    (:meth:`envs.acquisition.view.AcquisitionView.window_values`). ``(a, b, c, d) = (1, 1, 1,
    0)`` ranks actions as ``gp-uncertainty-per-second``."""

    uncertainty_power: float = 1.0
    cost_power: float = 1.0
    window_credit: float = 1.0
    completion_bonus: float = 0.0

    @classmethod
    def from_action(cls, action: np.ndarray) -> WeightedScore:
        """The weights of a decision ``action`` in ``[-1, 1]^4``: the heuristic's weights plus
        ``action * WEIGHT_SPAN``, clipped to their ranges (a Gaussian policy's sample may fall
        outside). The action 0 is the heuristic, where a fresh PPO policy's mean starts."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.size != len(WEIGHT_NAMES) or not np.isfinite(action).all():
            raise ValueError(
                f"a decision is {len(WEIGHT_NAMES)} finite numbers for {WEIGHT_NAMES}, got "
                f"{action!r}"
            )
        weights = np.clip(HEURISTIC_WEIGHTS + action * WEIGHT_SPAN, WEIGHT_LOW, WEIGHT_HIGH)
        return cls(*(float(w) for w in weights))

    def log_scores(self, env: Any) -> np.ndarray:
        """``(n_actions,)`` log scores in action order (``-inf`` where invalid), read from the
        view of ``env`` (an acquisition env, a wrapper of one, or its view)."""
        view = as_view(env)
        uncertainty = view.model.uncertainty().detach().cpu().numpy().astype(np.float64)
        own = view.window_gain(uncertainty)
        rest = view.window_values(uncertainty) - own
        value = own + self.window_credit * rest
        seconds = view.action_seconds()
        complete = view.measured.mean(axis=1)  # share of each pixel's blocks read in full
        per_action = view.n_blocks * view.n_windows
        bonus = self.completion_bonus * np.repeat(complete, per_action)
        with np.errstate(divide="ignore"):
            scores = (
                self.uncertainty_power * np.log(value)
                - self.cost_power * np.log(seconds)
                + bonus
            )
        return np.where(view.action_masks() & (value > 0), scores, -np.inf)


def top_actions_one_per_pixel(scores: np.ndarray, per_pixel: int, k: int) -> np.ndarray:
    """The ``k`` highest-scoring actions (finite scores only), at most one per pixel, best
    first (ties: lower index first)."""
    by_pixel = scores.reshape(-1, per_pixel)
    best = by_pixel.argmax(axis=1)
    best_score = by_pixel[np.arange(by_pixel.shape[0]), best]
    pixels = np.flatnonzero(np.isfinite(best_score))
    order = pixels[np.argsort(-best_score[pixels], kind="stable")][:k]
    return order * per_pixel + best[order]


class BatchDecisionEnv(gym.Env):
    """Each step sets the score's weights and measures the ``k`` best actions of the wrapped
    acquisition env (see the module docstring).

    Action: ``Box(-1, 1, (4,))``, the weights of :class:`WeightedScore` as offsets from the
    heuristic's (:meth:`WeightedScore.from_action`). Reward: the
    sum of the wrapped env's rewards over the step's measurements (its AUC reward's return is
    still the normalised area under the accuracy curve). Observation: ``Box`` of
    :data:`FEATURES`, none of them from the ground truth. The episode ends when the wrapped one
    does; ``info`` is the wrapped env's last, plus ``"measurements"`` (taken this step).
    It reads the wrapped env's state only through its view (:attr:`view`) and drives it only
    through ``reset`` and ``step`` (and ``observe`` when nothing is left to measure).

    Parameters
    ----------
    env
        An :class:`envs.acquisition.env.AcquisitionEnv` (or a wrapper of one).
    k
        Measurements per decision.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: gym.Env, k: int = 16) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.env, self.k = env, int(k)
        self._scale = 1.0
        self.action_space = spaces.Box(-1.0, 1.0, shape=(len(WEIGHT_NAMES),), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(len(FEATURES),), dtype=np.float32
        )

    @property
    def acquisition(self) -> Any:
        """The wrapped acquisition env itself (what this env drives)."""
        return self.env.unwrapped

    @property
    def view(self) -> AcquisitionView:
        """The read-only view of the wrapped env's model state (what this env reads)."""
        return self.env.unwrapped.view

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        observation, info = self.env.reset(seed=seed, options=options)
        self._scale = 1.0  # uncertainties are read relative to their mean at reset
        first = self._features(observation)
        self._scale = float(np.exp(first[FEATURES.index("log_mean_uncertainty")]))
        return self._features(observation), info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        score = WeightedScore.from_action(action)
        view = self.view
        chosen = top_actions_one_per_pixel(
            score.log_scores(view), view.n_blocks * view.n_windows, self.k
        )
        total, terminated, truncated, info = 0.0, False, False, {}
        observation, taken = None, 0
        for inner_action in chosen:
            observation, reward, terminated, truncated, info = self.env.step(int(inner_action))
            total += float(reward)
            taken += 1
            if terminated or truncated:
                break
        if observation is None:  # nothing valid was left to measure
            return (
                self._features(self.acquisition.observe()), 0.0, True, False, {"measurements": 0}
            )
        info = {**info, "measurements": taken}
        return self._features(observation), total, terminated, truncated, info

    def _features(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """What the episode shows now (:data:`FEATURES`), from the wrapped env's observation
        and the reconstruction's own uncertainty."""
        view = self.view
        budget_used, units_measured, map_change = (float(v) for v in observation["scalars"][:3])
        blocks_read = view.measured.sum(axis=1)
        uncertainty = view.model.uncertainty().detach().cpu().numpy()
        unmeasured = uncertainty[~view.unit_measured]
        floor = 1e-12
        mean_u = float(unmeasured.mean()) / self._scale if unmeasured.size else floor
        max_u = float(unmeasured.max()) / self._scale if unmeasured.size else floor
        return np.array(
            [
                budget_used,
                units_measured,
                map_change,
                float(np.mean(blocks_read == view.n_blocks)),
                float(np.mean(view.segments_read.sum(axis=1) > 0)),
                np.log(max(mean_u, floor)),
                np.log(max(max_u, floor)),
            ],
            dtype=np.float32,
        )
