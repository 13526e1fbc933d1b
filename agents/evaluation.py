"""Run policies on acquisition environments and summarise what instrument time each one saves.

This is the library behind ``evaluate.py``: one episode gives a :class:`Trace` (accuracy against
charged seconds), a set of traces over seeds gives an :class:`AgentSummary` with means and 95 %
intervals (from :mod:`agents.statistics`), and :mod:`agents.report` prints, writes and draws them.

Time axis. Every point of a trace is charged the environment's seconds (instrument time from the
cost model plus its modelled reconstruction time) plus the policy's own decision time. Decision
time is measured on the wall clock by default (``charge_decisions="measured"``): it is the one
quantity that varies from run to run; with ``"none"`` the whole evaluation is bit-for-bit
deterministic for a given seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from agents.base import Policy
from agents.statistics import mean_and_interval
from reconstruct.metrics import auc_normalised, seconds_to_reach


@dataclass
class Trace:
    """One episode of one policy."""

    agent: str
    seed: int
    seconds: np.ndarray  # charged seconds after each measurement (first entry: initial design)
    r2: np.ndarray  # R^2 against the measured reference after each measurement
    decision_seconds: np.ndarray  # wall-clock seconds of each decision
    n_measurements: int
    budget_seconds: float
    raster_seconds: float
    r2_truth: float = math.nan  # final R^2 against the noise-free truth, when the data has one
    final_map: np.ndarray | None = field(default=None, repr=False)  # reconstructed map (X, Y)
    measured_map: np.ndarray | None = field(default=None, repr=False)  # blocks measured per pixel

    def seconds_to(self, target: float) -> float:
        """Charged seconds until R^2 first reaches ``target`` (NaN when it never does)."""
        reached = seconds_to_reach(self.seconds, self.r2, target)
        return math.nan if reached is None else float(reached)

    def gain_at(self, target: float) -> float:
        """Efficiency gain against the full raster: ``1 - seconds_to(target) / raster_seconds``."""
        return 1.0 - self.seconds_to(target) / self.raster_seconds

    def auc(self) -> float:
        """Normalised area under R^2 versus seconds over the budget."""
        return auc_normalised(self.seconds, self.r2, self.budget_seconds)


def run_episode(
    env,
    policy: Policy,
    seed: int,
    *,
    stop_r2: float | None = None,
    charge_decisions: str = "measured",
    progress=None,
) -> Trace:
    """Run ``policy`` for one episode of ``env`` reset with ``seed``.

    Parameters
    ----------
    stop_r2
        End the episode early once R^2 reaches this value (the curve then holds its last value,
        which saves time when only the time to a target matters).
    charge_decisions
        ``"measured"``: add each decision's wall-clock seconds to the time axis; ``"none"``: do
        not (fully deterministic runs).
    progress
        Optional tqdm-like bar, advanced by one per step.
    """
    if charge_decisions not in ("measured", "none"):
        raise ValueError(f"charge_decisions must be 'measured' or 'none', got {charge_decisions!r}")
    observation, info = env.reset(seed=seed)
    policy.reset(env, seed=seed)
    unwrapped = env.unwrapped
    seconds, r2, decisions = [float(info["seconds"])], [float(info["r2"])], []
    charged_decisions = 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        mask = np.asarray(info["action_mask"], dtype=bool)
        start = time.perf_counter()
        action = policy.act(observation, mask)
        elapsed = time.perf_counter() - start
        decisions.append(elapsed)
        if charge_decisions == "measured":
            charged_decisions += elapsed
        observation, _, terminated, truncated, info = env.step(action)
        seconds.append(float(info["seconds"]) + charged_decisions)
        r2.append(float(info["r2"]))
        if progress is not None:
            progress.update(1)
        if stop_r2 is not None and r2[-1] >= stop_r2:
            break
    final_map, measured_map = _final_maps(unwrapped)
    return Trace(
        agent=policy.label,
        seed=seed,
        seconds=np.asarray(seconds),
        r2=np.asarray(r2),
        decision_seconds=np.asarray(decisions),
        n_measurements=int(info["n_measurements"]),
        budget_seconds=float(unwrapped.budget_seconds),
        raster_seconds=float(unwrapped.full_raster_seconds),
        r2_truth=float(unwrapped.r2_truth()) if unwrapped.dataset.truth is not None else math.nan,
        final_map=final_map,
        measured_map=measured_map,
    )


def _final_maps(env) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction at the middle spectral entry (the one :func:`map_slice` names), and
    blocks measured per pixel."""
    estimate = env.reconstructor.estimate().detach().cpu().numpy()
    middle = estimate[(slice(None), slice(None), *_middle_index(estimate.shape[2:]))]
    measured = env.measured.sum(1).reshape(env.grid_shape)
    return middle, measured


def _middle_index(spectral_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size // 2 for size in spectral_shape)


@dataclass
class MapSlice:
    """The spectral entry that the reconstruction maps show, named, with the reference there."""

    label: str  # e.g. "voltage 8 of 16 (2.5 V), time 64 of 128 (0.0012 s)", indices from 0
    reference: np.ndarray  # (X, Y): the noise-free truth when known, else the measured data
    reference_name: str  # "truth" or "measured"
    value_label: str  # what the map values are, e.g. "piezoresponse (a.u.)"
    n_blocks: int  # the most blocks a pixel can have measured


def map_slice(env) -> MapSlice:
    """The middle spectral entry of ``env``'s dataset (the one the final maps of its episodes
    show), named by axis, index and coordinate."""
    dataset = env.dataset
    index = _middle_index(dataset.data.shape[2:])
    parts = []
    for axis, i in zip(dataset.axes[2:], index, strict=True):
        value = f"{float(axis.values[i]):.3g}{' ' + axis.unit if axis.unit else ''}"
        parts.append(f"{axis.name} {i} of {len(axis)} ({value})")
    truth_known = dataset.truth is not None
    source = dataset.truth if truth_known else dataset.data
    return MapSlice(
        label=", ".join(parts),
        reference=source[(slice(None), slice(None), *index)],
        reference_name="truth" if truth_known else "measured",
        value_label=f"{dataset.quantity} ({dataset.unit})" if dataset.unit else dataset.quantity,
        n_blocks=int(env.n_blocks),
    )


def target_key(target: float) -> str:
    """The name of an R^2 target in tables and files: two decimals (``"0.90"``), more where the
    target needs them (``"0.875"``), so that two targets never share a name."""
    two_decimals = f"{target:.2f}"
    return two_decimals if float(two_decimals) == target else f"{target:g}"


# The ranges the per-seed statistics can take, to which their intervals are clipped: R^2 and
# what is built on it (AUC, gain) are at most 1, times and counts are at least 0.
AT_MOST_ONE = (-math.inf, 1.0)
NON_NEGATIVE = (0.0, math.inf)


@dataclass
class AgentSummary:
    """Per-agent statistics over seeds (mean, 95 % low, 95 % high) for one dataset; with one
    seed, low and high are NaN (no interval)."""

    agent: str
    data: str
    n_seeds: int
    seconds_to: dict[str, tuple[float, float, float]]
    gain_at: dict[str, tuple[float, float, float]]
    reached: dict[str, int]  # seeds that reached each target
    auc: tuple[float, float, float]
    n_measurements: tuple[float, float, float]
    decision_seconds_median: float
    final_r2: tuple[float, float, float]
    final_r2_truth: tuple[float, float, float]
    raster_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(traces: list[Trace], data: str, targets: tuple[float, ...]) -> AgentSummary:
    """Aggregate the traces of one agent on one dataset over seeds."""
    if not traces:
        raise ValueError("no traces to summarise")
    key = {t: target_key(t) for t in targets}
    return AgentSummary(
        agent=traces[0].agent,
        data=data,
        n_seeds=len(traces),
        seconds_to={
            key[t]: mean_and_interval([tr.seconds_to(t) for tr in traces], NON_NEGATIVE)
            for t in targets
        },
        gain_at={
            key[t]: mean_and_interval([tr.gain_at(t) for tr in traces], AT_MOST_ONE)
            for t in targets
        },
        reached={key[t]: int(sum(np.isfinite(tr.seconds_to(t)) for tr in traces)) for t in targets},
        auc=mean_and_interval([tr.auc() for tr in traces], AT_MOST_ONE),
        n_measurements=mean_and_interval([tr.n_measurements for tr in traces], NON_NEGATIVE),
        decision_seconds_median=float(
            np.median(np.concatenate([tr.decision_seconds for tr in traces]))
        ),
        final_r2=mean_and_interval([tr.r2[-1] for tr in traces], AT_MOST_ONE),
        final_r2_truth=mean_and_interval([tr.r2_truth for tr in traces], AT_MOST_ONE),
        raster_seconds=float(traces[0].raster_seconds),
    )


@dataclass
class Failure:
    """An agent that raised on one dataset: where, and the error, for the report."""

    agent: str
    data: str
    seed: int
    episodes_done: int  # seeds that finished before the failing one (in episodes.csv)
    error: str  # "ExceptionType: message"

    def as_dict(self) -> dict:
        return asdict(self)
