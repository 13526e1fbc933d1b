"""Run policies on acquisition environments and summarise what instrument time each one saves.

This is the library behind ``evaluate.py``: one episode gives a :class:`Trace` (accuracy against
charged seconds), a set of traces over seeds gives an :class:`AgentSummary` with means and 95 %
intervals (from :mod:`agents.statistics`), and :mod:`agents.report` prints, writes and draws them.

Time axis. Every point of a trace is charged the environment's seconds (instrument time from the
cost model plus its modelled reconstruction time) plus the policy's own decision time. Decision
time is measured on the wall clock by default (``charge_decisions="measured"``): it is the one
quantity that varies from run to run; with ``"none"`` the whole evaluation is bit-for-bit
deterministic for a given seed.

Dynamics. The tensor R^2 is dominated by the level after each pulse; the relaxation the
experiment exists to measure is a small part of it. A trace therefore also records when the
reconstruction first keeps the relaxation as well as a full raster would: its dynamics R^2
(:func:`reconstruct.metrics.dynamics_r2`) at least the full raster's minus
:data:`DYNAMICS_MARGIN`, checked once the tensor R^2 has reached ``dynamics_target``
(:class:`DynamicsCriterion`). The challenge asks for both.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from agents.policy import Policy
from agents.statistics import mean_and_interval
from reconstruct.metrics import (
    auc_normalised,
    dynamics_r2,
    dynamics_r2_per_voltage,
    seconds_to_reach,
)

#: How far below the full raster's dynamics R^2 a reconstruction's may lie and still count as
#: keeping the relaxation. Why 0.05: a raster's own dynamics R^2 moves by about that much
#: between twin seeds of one setting (0.839 and 0.819 on two 60 x 60 relaxation-rich twins,
#: ``docs/twin.md``), so a smaller margin would judge the sample rather than the policy.
DYNAMICS_MARGIN = 0.05


@dataclass
class DynamicsCriterion:
    """Does a reconstruction keep the relaxation as well as a full raster would?

    ``reference_name`` is ``"truth"`` when the data has a noise-free truth: the full raster's
    reconstruction is then the measured data itself, scored against the truth. Without a truth
    the reference is the measured data, and the full raster's score is that of its rank-``k``
    projection on a basis fitted to every pixel (what a low-rank reconstruction of a complete
    scan keeps of the relaxation; the data scored against itself would be 1 by definition).
    The criterion is met when ``dynamics_r2(reference, estimate) >= raster - margin``."""

    reference_name: str
    reference: np.ndarray = field(repr=False)
    raster: float
    margin: float = DYNAMICS_MARGIN

    @property
    def floor(self) -> float:
        return self.raster - self.margin

    def score(self, estimate: np.ndarray) -> float:
        return dynamics_r2(self.reference, estimate)

    def per_voltage(self, estimate: np.ndarray) -> np.ndarray:
        """The dynamics R^2 of each voltage's map."""
        return dynamics_r2_per_voltage(self.reference, estimate)


def dynamics_criterion(dataset, margin: float = DYNAMICS_MARGIN, seed: int = 0):
    """The :class:`DynamicsCriterion` of a dataset, or None for data without a time axis."""
    data = dataset.data
    if data.ndim < 4 or data.shape[3] < 2:
        return None
    if dataset.truth is not None:
        # Lost entries are scored nowhere, against the truth as against the data.
        reference = np.where(np.isfinite(data), dataset.truth, np.nan)
        return DynamicsCriterion("truth", reference, dynamics_r2(reference, data), margin)
    return DynamicsCriterion("data", data, dynamics_r2(data, _low_rank_raster(data, seed)), margin)


def _low_rank_raster(data: np.ndarray, seed: int, max_pixels: int = 512) -> np.ndarray:
    """Every complete spectrum projected on a basis fitted to (a seeded sample of) them, the
    way :class:`reconstruct.lowrank.LowRankGP` models a pixel; pixels with lost entries keep
    their data (a reconstruction keeps what it measured)."""
    import torch

    from reconstruct.lowrank import fit_basis

    x, y = data.shape[:2]
    flat = torch.from_numpy(np.asarray(data, dtype=np.float64).reshape(x * y, 1, -1))
    complete = torch.isfinite(flat).all(dim=(1, 2))
    rows = torch.nonzero(complete).reshape(-1)
    if rows.numel() > max_pixels:
        pick = np.sort(np.random.default_rng(seed).choice(rows.numel(), max_pixels, False))
        rows = rows[torch.as_tensor(pick)]
    basis = fit_basis(flat[rows])
    comps = basis.components.reshape(basis.k, -1)
    centred = torch.nan_to_num(flat.reshape(x * y, -1) - basis.mean.reshape(1, -1))
    projected = (centred @ comps.T) @ comps + basis.mean.reshape(1, -1)
    projected[~complete] = flat.reshape(x * y, -1)[~complete]
    return projected.reshape(data.shape).numpy()


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
    # Charged seconds until R^2 >= dynamics_target with the dynamics criterion met (NaN: never
    # or not checked); the criterion's floor and the final dynamics R^2 (NaN without time axis).
    seconds_to_dynamics: float = math.nan
    dynamics_floor: float = math.nan
    r2_dynamics: float = math.nan
    r2_dynamics_per_voltage: list[float] = field(default_factory=list)  # at the end
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

    def gain_with_dynamics(self) -> float:
        """Efficiency gain at the dynamics target with the dynamics criterion met."""
        return 1.0 - self.seconds_to_dynamics / self.raster_seconds

    def save(self, path) -> None:
        """Write the trace to ``path`` (``.npz``, no pickles): every number it holds, so that
        :meth:`load` gives a trace whose statistics and figures are this one's. Written under
        a temporary name and renamed, so that a file at ``path`` is always whole."""
        from pathlib import Path

        path = Path(path)
        arrays = {
            "agent": np.asarray(self.agent),
            "seed": np.asarray(self.seed),
            "seconds": self.seconds,
            "r2": self.r2,
            "decision_seconds": self.decision_seconds,
            "r2_dynamics_per_voltage": np.asarray(self.r2_dynamics_per_voltage, dtype=float),
        }
        for name in _TRACE_SCALARS:
            arrays[name] = np.asarray(getattr(self, name))
        for name in ("final_map", "measured_map"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            np.savez(file, **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path) -> Trace:
        """The trace :meth:`save` wrote to ``path``."""
        with np.load(path, allow_pickle=False) as arrays:
            values = {name: arrays[name] for name in arrays.files}
        return cls(
            agent=str(values["agent"]),
            seed=int(values["seed"]),
            seconds=values["seconds"],
            r2=values["r2"],
            decision_seconds=values["decision_seconds"],
            r2_dynamics_per_voltage=values["r2_dynamics_per_voltage"].tolist(),
            final_map=values.get("final_map"),
            measured_map=values.get("measured_map"),
            **{
                name: (int if name == "n_measurements" else float)(values[name])
                for name in _TRACE_SCALARS
            },
        )


#: The single numbers of a :class:`Trace`, as :meth:`Trace.save` stores them.
_TRACE_SCALARS = (
    "n_measurements", "budget_seconds", "raster_seconds", "r2_truth", "seconds_to_dynamics",
    "dynamics_floor", "r2_dynamics",
)  # fmt: skip


def run_episode(
    env,
    policy: Policy,
    seed: int,
    *,
    stop_r2: float | None = None,
    charge_decisions: str = "measured",
    dynamics_target: float | None = None,
    dynamics_every: int | None = None,
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
    dynamics_target
        Once R^2 reaches this, check the dynamics criterion (:func:`dynamics_criterion`) every
        ``dynamics_every`` steps (default: 1 % of the (pixel, block) cells) until it is met; the
        episode then also runs past ``stop_r2`` until it is (or the budget ends). The check
        builds the whole estimate, so it is not made at every step; its time is not charged.
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
    criterion = dynamics_criterion(unwrapped.dataset) if dynamics_target is not None else None
    every = dynamics_every or max(1, unwrapped.measured.size // 100)
    seconds_to_dynamics, next_check = math.nan, 0
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
        step = len(decisions)
        if criterion is not None and math.isnan(seconds_to_dynamics):
            if r2[-1] >= dynamics_target and step >= next_check:
                next_check = step + every
                if criterion.score(unwrapped.estimate().detach().cpu().numpy()) >= criterion.floor:
                    seconds_to_dynamics = seconds[-1]
        dynamics_pending = criterion is not None and math.isnan(seconds_to_dynamics)
        if stop_r2 is not None and r2[-1] >= stop_r2 and not dynamics_pending:
            break
    final_map, measured_map = _final_maps(unwrapped)
    final = unwrapped.estimate().detach().cpu().numpy() if criterion is not None else None
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
        seconds_to_dynamics=seconds_to_dynamics,
        dynamics_floor=criterion.floor if criterion is not None else math.nan,
        r2_dynamics=criterion.score(final) if criterion is not None else math.nan,
        r2_dynamics_per_voltage=(
            criterion.per_voltage(final).tolist() if criterion is not None else []
        ),
    )


def _final_maps(env) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction at the middle spectral entry (the one :func:`map_slice` names), and
    blocks measured per pixel."""
    estimate = env.estimate().detach().cpu().numpy()
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
    # The challenge with the relaxation kept (NaN/0 for data without a time axis): time saved
    # at R^2 >= the dynamics target with the dynamics criterion met, on how many seeds, the
    # final dynamics R^2 and the criterion's floor (mean over seeds).
    gain_with_dynamics: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    reached_dynamics: int = 0
    final_r2_dynamics: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    dynamics_floor: float = math.nan
    # the final dynamics R^2 of each voltage's map, mean over seeds (empty without time axis)
    final_r2_dynamics_per_voltage: list[float] = field(default_factory=list)

    @property
    def checks_dynamics(self) -> bool:
        """Whether the data has a time axis, so that the dynamics criterion applies."""
        return math.isfinite(self.dynamics_floor)

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
        gain_with_dynamics=mean_and_interval(
            [tr.gain_with_dynamics() for tr in traces], AT_MOST_ONE
        ),
        reached_dynamics=int(sum(np.isfinite(tr.seconds_to_dynamics) for tr in traces)),
        final_r2_dynamics=mean_and_interval([tr.r2_dynamics for tr in traces], AT_MOST_ONE),
        dynamics_floor=float(np.mean([tr.dynamics_floor for tr in traces])),
        final_r2_dynamics_per_voltage=(
            np.mean([tr.r2_dynamics_per_voltage for tr in traces], axis=0).tolist()
            if all(tr.r2_dynamics_per_voltage for tr in traces)
            else []
        ),
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
