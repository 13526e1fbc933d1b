"""Redundancy study: how much of each axis can be left unmeasured at a given accuracy.

``python -m studies.redundancy --data twin|FILE --out DIR`` keeps a fraction of the data
along one axis (or a combination), reconstructs the rest, and scores every reconstruction
twice: with the tensor R^2 (:func:`reconstruct.metrics.r2_score`) and, for data with a time
axis, with the dynamics R^2 (:func:`reconstruct.metrics.dynamics_r2`, the R^2 of each curve
minus its time mean), each against the measured tensor and, when the dataset has a noise-free
``truth``, against the truth. The tensor R^2 is dominated by the level after each pulse, so on
data whose relaxation is a small share of the variance it says little about the time axis;
the dynamics R^2 is what does.

Every kept fraction is a fraction of *instrument time*: the pulses and reads that the kept
measurements cost under :class:`envs.instruments.cost.CostModel` (per voltage: ``pulse_s + reads *
read_interval_s``, 20 ms + 128 x 2 ms by default), relative to a full raster. Settling and tip
travel are left out: they depend on the path, not on what is dropped. For whole curves this is
the share of the tensor measured; a curve read for its first ``r`` of ``T`` reads costs
``(pulse + r * interval) / (pulse + T * interval)`` of a whole one (0.17 for 13 of 128 reads):
the pulse is paid however short the read.

Experiments:

``pixels``
    Random pixels with their full spectra; every reconstructor fills in the other pixels.
``voltages_random``, ``voltages_regular``
    Every pixel at a subset of the first spectral axis (random, or evenly spread); the dropped
    entries are interpolated along that axis in acquisition order (``axis-linear``). No pixel
    holds the dropped voltages, so spatial reconstructors cannot help here.
``time_truncation``
    Every pixel and voltage, but each curve read for its first reads only; the rest is held at
    the last read value (``axis-linear``). Needs a time axis. Evenly spread reads (time
    *subsampling*) are not studied: the tip waits out the whole curve either way, so they save
    no instrument time.
``combined``
    A fraction of pixels measured in full, and every other pixel at one voltage block of a few
    voltages spread over the sequence (the default :class:`~reconstruct.base.BlockLayout`, one
    block chosen at random per pixel), read in full; the reconstructors complete the rest
    (low-rank completion is the natural fit).
``combined_short_reads``
    As ``combined``, but every other pixel reads each curve of its block for only the first
    ``T / S`` reads (``S`` segments per curve); the blocks may also hold every voltage. The
    segments are folded into the voltage axis (:class:`~reconstruct.base.SegmentedLayout`,
    one unit per (block, segment)), as the acquisition environment's read windows do, so a
    short read is a measurement of one unit. Needs a time axis.

The sample's memory (``--memory``, default ``auto``): on a twin, each pixel of a design runs
one program from its as-grown state with the twin's own physics
(:class:`envs.instruments.memory.TwinMemoryInstrument`), so a pixel kept at some voltages reads
what those pulses alone give, not what the whole sequence gave there; whole sequences, and
whole sequences read short, read the standard sequence's values. The scores stay against the
standard sequence's tensor. A recorded file is its own values (``--memory on`` for one is a
one-line error); ``--memory off`` gives a twin's own values too, as a sample without memory.

What a first visit reads (``--program-map SEEDS``, with the memory simulated): a
:class:`reconstruct.program_map.ProgramMap` learns, on every pixel of the training twins
``SEEDS`` (the studied twin's settings), what each block measured alone reads against the
standard sequence's values there; every combined design is then reconstructed a second time with
its partial pixels' values mapped, recorded as ``NAME+map`` beside ``NAME``.

The dynamics criterion is the project's (:func:`agents.evaluation.dynamics_criterion`): a
reconstruction keeps the relaxation when its dynamics R^2 is at least the full raster's minus
:data:`agents.evaluation.DYNAMICS_MARGIN` (against the truth where there is one). The study
writes ``DIR/redundancy.json`` and ``DIR/redundancy.png`` (one panel per axis: tensor and
dynamics R^2 against the fraction of instrument time kept), and prints, per experiment and
reconstructor, the largest fraction of instrument time that can be dropped while the tensor R^2
stays >= 0.90 and >= 0.95, with and without the dynamics criterion. Entries that are NaN in the
data are never measured (a pixel is skipped by a draw when its values there are not finite) and
are ignored by the scores. Every draw comes from one seeded generator, so a seed fixes the
result.

The experiments work on plain arrays: ``envs`` (the data, the cost model) and ``agents`` (the
dynamics criterion) are imported only where they are needed, inside functions.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from reconstruct.base import BlockLayout, SegmentedLayout
from reconstruct.metrics import dynamics_r2, r2_score
from reconstruct.program_map import Program, ProgramMap
from reconstruct.registry import make_reconstructor

FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
TARGETS: tuple[float, ...] = (0.90, 0.95)
SPATIAL_RECONSTRUCTORS: tuple[str, ...] = ("mean", "nearest", "idw", "linear", "gp", "lowrank")
# The GP reconstructor is left out of the combined experiment by default: with one partial
# block at most pixels it took 80-300 s per setting on the 60 x 60 twin (2 shared cores),
# against about 5 s for low-rank completion. Pass it explicitly to include it.
COMBINED_RECONSTRUCTORS: tuple[str, ...] = ("mean", "nearest", "idw", "linear", "lowrank")
# Short reads leave most units of a pixel unmeasured, which only a spectral basis learned from
# whole curves can fill in; the interpolators would fill each unit from the few full pixels.
SHORT_READ_RECONSTRUCTORS: tuple[str, ...] = ("lowrank",)
# Share of pixels measured in full, and share of the voltage axis each other pixel gets.
COMBINED_FULL_SHARES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
# One-voltage blocks are left out: on the twin they scored below two- and four-voltage blocks
# at every cost tried, and low-rank completion took 20-80 s per setting with them.
COMBINED_VOLTAGE_SHARES: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2)
# With short reads the pulses dominate a partial pixel's cost, so reading every voltage briefly
# is a design worth trying too.
SHORT_READ_VOLTAGE_SHARES: tuple[float, ...] = (1 / 4, 1 / 2, 1.0)
# Segments per curve for short reads: a partial pixel reads T / S reads (8, 16, 32 of 128).
# At most 16, as for the environment's read windows (each segment is a unit of the model).
SHORT_READ_SEGMENTS: tuple[int, ...] = (16, 8, 4)
AXIS_METHOD = "axis-linear"
EXPERIMENTS: tuple[str, ...] = (
    "pixels",
    "voltages_random",
    "voltages_regular",
    "time_truncation",
    "combined",
    "combined_short_reads",
)
#: Experiments that need a time axis.
TIME_EXPERIMENTS: frozenset[str] = frozenset({"time_truncation", "combined_short_reads"})


@dataclass
class Trial:
    """One reconstruction: what was kept, by which method, and how well it scored.

    ``fraction_kept`` is the fraction of the full raster's pulse-and-read time that the kept
    measurements cost; the dynamics scores are None for data without a time axis, and
    ``dynamics_truth`` is None without a truth."""

    experiment: str
    reconstructor: str
    fraction_kept: float
    r2_measured: float
    r2_truth: float | None
    seconds: float
    dynamics_measured: float | None = None
    dynamics_truth: float | None = None
    setting: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ interpolation along an axis
def axis_interpolation_weights(length: int, kept: np.ndarray) -> np.ndarray:
    """``(length, len(kept))`` weights that linearly interpolate along an axis of ``length``
    entries from the entries ``kept`` (sorted, unique), holding the end values beyond them."""
    kept = np.asarray(kept)
    if kept.size == 0 or np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= length:
        raise ValueError(f"kept indices must be sorted, unique and within [0, {length}): {kept}")
    positions = np.arange(length, dtype=np.float64)
    weights = np.zeros((length, kept.size))
    right = np.clip(np.searchsorted(kept, positions), 1, max(kept.size - 1, 1))
    left = right - 1
    if kept.size == 1:
        weights[:, 0] = 1.0
        return weights
    span = kept[right] - kept[left]
    frac = np.clip((positions - kept[left]) / span, 0.0, 1.0)
    rows = np.arange(length)
    weights[rows, left] = 1.0 - frac
    weights[rows, right] += frac
    return weights


def interpolate_along_axis(data: np.ndarray, axis: int, kept: np.ndarray) -> np.ndarray:
    """The tensor rebuilt from the entries ``kept`` along ``axis`` (see
    :func:`axis_interpolation_weights`); entries that come out non-finite (from NaN inputs)
    are replaced by the per-channel spatial mean of the result, so every estimate is finite."""
    weights = axis_interpolation_weights(data.shape[axis], kept)
    subset = np.take(data, kept, axis=axis).astype(np.float64)
    rebuilt = np.moveaxis(np.tensordot(subset, weights, axes=([axis], [1])), -1, axis)
    bad = ~np.isfinite(rebuilt)
    if bad.any():
        with warnings.catch_warnings():  # an all-NaN channel's mean is NaN, then 0: fine
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.where(bad, np.nan, rebuilt), axis=(0, 1), keepdims=True)
        rebuilt = np.where(bad, np.nan_to_num(np.broadcast_to(mean, rebuilt.shape)), rebuilt)
    return rebuilt


# ------------------------------------------------------------------ the study
@dataclass
class _Scorer:
    """Scores estimates in image layout against the data and (optionally) the truth, with the
    tensor R^2 always and the dynamics R^2 when the data has a time axis.

    The dynamics score against the truth is the criterion's own (``criterion.score``: the truth
    at the entries the data holds), so that it is comparable with the criterion's floor."""

    data: np.ndarray
    truth: np.ndarray | None
    criterion: Any = None  # agents.evaluation.DynamicsCriterion, or None without a time axis

    def __call__(self, estimate: np.ndarray | torch.Tensor) -> dict[str, float | None]:
        scores: dict[str, float | None] = {
            "r2_measured": r2_score(self.data, estimate, spatial_axes=2),
            "r2_truth": None
            if self.truth is None
            else r2_score(self.truth, estimate, spatial_axes=2),
            "dynamics_measured": None,
            "dynamics_truth": None,
        }
        if self.criterion is not None:
            scores["dynamics_measured"] = dynamics_r2(self.data, estimate)
            if self.criterion.reference_name == "truth":
                scores["dynamics_truth"] = self.criterion.score(estimate)
        return scores


@dataclass(frozen=True)
class _Arrays:
    """The two attributes of a dataset that :func:`agents.evaluation.dynamics_criterion`
    reads, for a study that was handed plain arrays."""

    data: np.ndarray
    truth: np.ndarray | None


def has_time_axis(shape: Sequence[int]) -> bool:
    """Whether a ``(X, Y, V, T, ...)`` tensor has a time axis of at least two reads."""
    return len(shape) >= 4 and shape[3] >= 2


def _counts(length: int, fractions: Sequence[float]) -> list[int]:
    """Distinct numbers of kept entries, one per fraction, each in [1, length - 1]."""
    if length < 2:
        return []
    return sorted({min(max(1, round(f * length)), length - 1) for f in fractions})


def _regular(length: int, count: int) -> np.ndarray:
    """``count`` indices evenly spread over ``[0, length)``, first and last included."""
    return np.unique(np.linspace(0, length - 1, count).round().astype(int))


def _divisor_near(n: int, target: float) -> int:
    """The divisor of ``n`` closest to ``target`` (even blocks: every partly measured pixel
    then costs the same)."""
    divisors = np.array([d for d in range(1, n + 1) if n % d == 0])
    return int(divisors[np.argmin(np.abs(divisors - target))])


class RedundancyStudy:
    """Runs the experiments on one tensor.

    Parameters
    ----------
    data
        ``(X, Y, V, *rest)`` measured tensor; NaN marks unmeasured entries. Axis 3, when
        present, is the time axis.
    truth
        Optional noise-free tensor of the same shape.
    reconstructors
        Names from :mod:`reconstruct.registry` for the ``pixels`` experiment; names whose
        module is not available are skipped and listed in ``skipped``.
    combined_reconstructors, short_read_reconstructors
        The same for the ``combined`` and ``combined_short_reads`` experiments.
    fractions
        Kept fractions tried along each single axis.
    seed
        Seed of every random draw.
    device
        Device of the reconstructors (``"auto"``: CUDA when present).
    reconstructor_options
        Extra keyword arguments per reconstructor name.
    cost
        The :class:`envs.instruments.cost.CostModel` that prices pulses and reads; its ``reads``
        must equal the time axis' length. Default: the default cost model with that many reads.
    experiments
        Which of :data:`EXPERIMENTS` to run; those that need a time axis are skipped (and
        listed in ``not_run``) for data without one.
    short_read_segments
        Segments per curve ``S`` tried by ``combined_short_reads`` (a partial pixel reads the
        first ``T / S`` reads); those that do not divide the time axis are left out.
    program_values
        What the sample gives for one program, ``program_values(pixel, voltages, reads)``:
        the pulses ``voltages`` (ascending) applied in order from the pixel's as-grown state,
        each curve read for its first ``reads`` points (None: all), ``(len(voltages), reads)``.
        None (the default): the data's own values, as a sample without memory (or a replay of a
        recorded file) gives them. Every pixel of a design runs one program, so a pixel kept at
        some voltages reads what those pulses alone give, while the scores stay against the
        standard sequence's tensor.
    program_map
        A :class:`reconstruct.program_map.ProgramMap` fitted on the first visits of the
        combined designs (:meth:`first_visit_programs`): each combined design is then
        reconstructed a second time with its partial pixels' values mapped to the standard
        sequence's first, recorded as ``NAME+map``. Only with ``program_values``.
    """

    def __init__(
        self,
        data: np.ndarray,
        truth: np.ndarray | None = None,
        *,
        reconstructors: Sequence[str] = SPATIAL_RECONSTRUCTORS,
        combined_reconstructors: Sequence[str] = COMBINED_RECONSTRUCTORS,
        short_read_reconstructors: Sequence[str] = SHORT_READ_RECONSTRUCTORS,
        fractions: Sequence[float] = FRACTIONS,
        seed: int = 0,
        device: str | torch.device = "auto",
        reconstructor_options: dict[str, dict[str, Any]] | None = None,
        cost: Any = None,
        experiments: Sequence[str] = EXPERIMENTS,
        short_read_segments: Sequence[int] = SHORT_READ_SEGMENTS,
        program_values: Callable[[int, np.ndarray, int | None], np.ndarray] | None = None,
        program_map: ProgramMap | None = None,
    ) -> None:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim < 3:
            raise ValueError(f"data must be (X, Y, V, ...) with at least 3 axes, got {data.shape}")
        if truth is not None and np.shape(truth) != data.shape:
            raise ValueError(f"truth shape {np.shape(truth)} differs from data shape {data.shape}")
        if not fractions or not all(0 < f < 1 for f in fractions):
            raise ValueError(f"fractions must be a non-empty list of values in (0, 1): {fractions}")
        unknown = sorted(set(experiments) - set(EXPERIMENTS))
        if unknown:
            raise ValueError(f"unknown experiments {unknown}; known are {list(EXPERIMENTS)}")
        self.data = data
        self.truth = None if truth is None else np.asarray(truth, dtype=np.float32)
        self.has_time = has_time_axis(data.shape)
        self.n_times = int(data.shape[3]) if self.has_time else 1
        self.cost = self._check_cost(cost)
        self.fractions = tuple(float(f) for f in fractions)
        self.seed = int(seed)
        self.device = device
        self.options = reconstructor_options or {}
        self.rng = np.random.default_rng(self.seed)
        self.experiments = [e for e in EXPERIMENTS if e in experiments]
        self.not_run = [e for e in self.experiments if e in TIME_EXPERIMENTS and not self.has_time]
        self.experiments = [e for e in self.experiments if e not in self.not_run]
        self.short_read_segments = sorted(
            {
                int(s)
                for s in short_read_segments
                if 1 < s <= self.n_times and self.n_times % s == 0
            },
            reverse=True,
        )
        self.criterion = self._dynamics_criterion()
        self.score = _Scorer(self.data, self.truth, self.criterion)
        self.skipped: dict[str, str] = {}
        self.reconstructors = [n for n in reconstructors if self._available(n)]
        self.combined_reconstructors = [n for n in combined_reconstructors if self._available(n)]
        self.short_read_reconstructors = [
            n for n in short_read_reconstructors if self._available(n)
        ]
        if program_map is not None and program_values is None:
            raise ValueError(
                "a program map corrects what a sample with memory reads: it needs "
                "program_values (a twin with its memory simulated)"
            )
        self.program_values = program_values
        self.program_map = program_map
        self.trials: list[Trial] = []

    def _check_cost(self, cost: Any) -> Any:
        if cost is None:
            from envs.instruments.cost import (
                CostModel,  # numpy only; lazy so plain-array use stays light
            )

            return CostModel(reads=self.n_times)
        if self.has_time and int(cost.reads) != self.n_times:
            raise ValueError(
                f"the cost model prices {cost.reads} reads per curve but the data holds "
                f"{self.n_times}: use CostModel(...).for_axes(dataset.axes)"
            )
        return cost

    def _dynamics_criterion(self) -> Any:
        """The project's dynamics criterion for this data (None without a time axis)."""
        if not self.has_time:
            return None
        from agents.evaluation import dynamics_criterion

        return dynamics_criterion(_Arrays(self.data, self.truth), seed=self.seed)

    def _available(self, name: str) -> bool:
        from reconstruct.registry import reconstructor_class

        try:
            reconstructor_class(name)
        except (ImportError, KeyError) as err:
            self.skipped[name] = str(err)
            return False
        return True

    def time_share(self, reads: int | None = None) -> float:
        """Instrument time of one voltage read for ``reads`` reads (None: the whole curve),
        as a fraction of a whole curve's: ``(pulse + reads * interval) / (pulse + T *
        interval)``. 1 for data without a time axis."""
        if not self.has_time or reads is None:
            return 1.0
        return self.cost.voltage_seconds(reads) / self.cost.voltage_seconds()

    # -------------------------------------------------------------- planning
    def plan(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (experiment, setting) the study will run, in order."""
        x, y, v = self.data.shape[:3]
        jobs: list[tuple[str, dict[str, Any]]] = []
        wanted = set(self.experiments)
        if "pixels" in wanted:
            for f in self.fractions:
                jobs.append(("pixels", {"n_pixels": max(1, round(f * x * y))}))
        for count in _counts(v, self.fractions):
            for experiment in ("voltages_random", "voltages_regular"):
                if experiment in wanted:
                    jobs.append((experiment, {"n_kept": count}))
        if "time_truncation" in wanted:
            for count in _counts(self.n_times, self.fractions):
                jobs.append(("time_truncation", {"n_kept": count}))
        if "combined" in wanted:
            sizes = sorted({_divisor_near(v, s * v) for s in COMBINED_VOLTAGE_SHARES} - {v})
            for share in COMBINED_FULL_SHARES:
                for size in sizes:
                    jobs.append(("combined", {"full_share": share, "block_size": size}))
        if "combined_short_reads" in wanted:
            sizes = sorted({_divisor_near(v, s * v) for s in SHORT_READ_VOLTAGE_SHARES})
            for share in COMBINED_FULL_SHARES:
                for size in sizes:
                    for segments in self.short_read_segments:
                        setting = {"full_share": share, "block_size": size, "n_segments": segments}
                        jobs.append(("combined_short_reads", setting))
        return jobs

    def first_visit_programs(self) -> list[Program]:
        """The programs the planned combined designs apply to their partial pixels (one block
        of the default layout alone, read whole or for its first segment), each once."""
        v = self.data.shape[2]
        programs = set()
        for experiment, setting in self.plan():
            if experiment.startswith("combined"):
                layout = BlockLayout(v, v // setting["block_size"])
                reads = self.n_times // setting.get("n_segments", 1)
                programs.update(
                    Program(tuple(layout.voltages(b).tolist()), reads)
                    for b in range(layout.n_blocks)
                )
        return sorted(programs)

    def run(self, progress: bool = True) -> list[Trial]:
        """Run every planned setting; returns (and keeps) the trials."""
        jobs = self.plan()
        for experiment, setting in tqdm(jobs, desc="redundancy", disable=not progress):
            if experiment == "pixels":
                self._pixels(setting)
            elif experiment.startswith("voltages"):
                self._along_axis(experiment, 2, setting, random=experiment.endswith("random"))
            elif experiment == "time_truncation":
                self._along_axis(experiment, 3, setting, random=False, truncate=True)
            else:
                self._combined(experiment, setting)
        return self.trials

    # -------------------------------------------------------------- experiments
    def _measured(
        self, programs: Sequence[tuple[int, np.ndarray, int | None]]
    ) -> np.ndarray:
        """The tensor a design reads: ``self.data`` where each ``(pixel, voltages, reads)``
        program's entries are what ``program_values`` gives for it (the data itself without
        ``program_values``). Only those entries may be read from the result."""
        if self.program_values is None:
            return self.data
        measured = self.data.copy()
        rows = measured.reshape(-1, *measured.shape[2:])
        for pixel, voltages, reads in programs:
            values = np.asarray(self.program_values(int(pixel), voltages, reads))
            if rows.ndim == 2:
                rows[pixel, voltages] = values
            else:
                rows[pixel, voltages, : values.shape[1]] = values
        return measured

    def _reconstruct(
        self,
        experiment: str,
        layout: BlockLayout,
        pixels: np.ndarray,
        blocks: np.ndarray,
        fraction: float,
        setting: dict[str, Any],
        names: Sequence[str],
        measured: np.ndarray | None = None,
        label: str = "{}",
    ) -> None:
        """Feed (pixel, block) measurements (from ``measured``, default the data) to each
        reconstructor in ``names``; score each against the data, recorded as
        ``label.format(name)``.

        With a :class:`SegmentedLayout` the blocks are units (block, segment): the data is
        folded for the reconstructors and their estimates unfolded for the scores."""
        segmented = isinstance(layout, SegmentedLayout)
        data = self.data if measured is None else measured
        data = layout.fold(data) if segmented else data
        spatial, spectral = data.shape[:2], data.shape[2:]
        block_data = np.asarray(layout.to_blocks(data))
        values = block_data[pixels, blocks]
        finite = np.isfinite(values).all(axis=1)  # a non-finite block is never "measured"
        pixels, blocks, values = pixels[finite], blocks[finite], values[finite]
        for name in names:
            recon = make_reconstructor(
                name, spatial, spectral, layout, device=self.device, **self.options.get(name, {})
            )
            start = time.perf_counter()
            recon.add_many(pixels, blocks, values)
            estimate = recon.estimate().detach().cpu()
            seconds = time.perf_counter() - start
            if segmented:
                estimate = layout.unfold(estimate)
            self._record(experiment, label.format(name), fraction, estimate, seconds, setting)

    def _record(
        self,
        experiment: str,
        method: str,
        fraction: float,
        estimate: np.ndarray | torch.Tensor,
        seconds: float,
        setting: dict[str, Any],
    ) -> None:
        scores = self.score(estimate)
        self.trials.append(
            Trial(experiment, method, fraction, seconds=seconds, setting=dict(setting), **scores)
        )

    def _pixels(self, setting: dict[str, Any]) -> None:
        x, y, v = self.data.shape[:3]
        chosen = np.sort(self.rng.choice(x * y, setting["n_pixels"], replace=False))
        layout = BlockLayout(v, 1)
        fraction = chosen.size / (x * y)
        blocks = np.zeros_like(chosen)
        self._reconstruct("pixels", layout, chosen, blocks, fraction, setting, self.reconstructors)

    def _along_axis(
        self,
        experiment: str,
        axis: int,
        setting: dict[str, Any],
        *,
        random: bool,
        truncate: bool = False,
    ) -> None:
        length, count = self.data.shape[axis], setting["n_kept"]
        n_pixels, n_voltages = int(np.prod(self.data.shape[:2])), self.data.shape[2]
        if truncate:
            kept = np.arange(count)
            # Every curve is still pulsed; only its reads after the first ``count`` are saved.
            fraction = self.time_share(count)
            setting = {**setting, "fraction_of_reads": count / length}
            program = (np.arange(n_voltages), count)
        else:
            kept = (
                np.sort(self.rng.choice(length, count, replace=False))
                if random
                else _regular(length, count)
            )
            fraction = kept.size / length
            program = (kept, None)
        measured = self._measured([(pixel, *program) for pixel in range(n_pixels)])
        start = time.perf_counter()
        estimate = interpolate_along_axis(measured, axis, kept)
        seconds = time.perf_counter() - start
        setting = {**setting, "kept": kept.tolist()}
        self._record(experiment, AXIS_METHOD, fraction, estimate, seconds, setting)

    def _combined(self, experiment: str, setting: dict[str, Any]) -> None:
        """A share of pixels measured in full, every other pixel at one random block of the
        default layout, read for the whole curve (``combined``) or for its first segment of
        ``n_segments`` (``combined_short_reads``)."""
        x, y, v = self.data.shape[:3]
        n_pixels = x * y
        base = BlockLayout(v, v // setting["block_size"])  # the default, spread-out blocks
        segments = setting.get("n_segments", 1)
        layout = base if segments == 1 else SegmentedLayout.split(base, segments)
        setting = {**setting, "block_scheme": base.effective_scheme}
        order = self.rng.permutation(n_pixels)
        n_full = max(1, round(setting["full_share"] * n_pixels))
        full, partial = order[:n_full], order[n_full:]
        # Unit ``block * S`` is a block's first segment: the short read (the block itself for S=1).
        partial_units = self.rng.integers(0, base.n_blocks, size=partial.size) * segments
        pixels = np.concatenate([np.repeat(full, layout.n_blocks), partial])
        units = np.concatenate([np.tile(np.arange(layout.n_blocks), n_full), partial_units])
        reads = None if segments == 1 else self.n_times // segments
        if reads is not None:
            setting = {**setting, "reads": reads}
        partial_share = base.block_size / v * self.time_share(reads)
        fraction = (n_full + partial.size * partial_share) / n_pixels
        names = self.short_read_reconstructors if segments > 1 else self.combined_reconstructors
        every_voltage = np.arange(v)
        programs = [(pixel, every_voltage, None) for pixel in full] + [
            (pixel, base.voltages(unit // segments), reads)
            for pixel, unit in zip(partial, partial_units, strict=True)
        ]
        measured = self._measured(programs)
        self._reconstruct(experiment, layout, pixels, units, fraction, setting, names, measured)
        if self.program_map is not None:
            mapped = self._mapped(measured, programs[n_full:], reads or self.n_times)
            self._reconstruct(
                experiment, layout, pixels, units, fraction, setting, names, mapped, "{}+map"
            )

    def _mapped(
        self, measured: np.ndarray, programs: Sequence[tuple[int, np.ndarray, int | None]],
        reads: int,
    ) -> np.ndarray:
        """``measured`` with each first visit's values replaced by the standard sequence's
        values that the program map reads in them (a lost pixel's NaN stays NaN)."""
        mapped = measured.copy()
        rows = mapped.reshape(-1, *mapped.shape[2:])
        for pixel, voltages, _ in programs:
            values = rows[pixel, voltages, :reads]
            if np.isfinite(values).all():
                program = Program(tuple(voltages.tolist()), reads)
                rows[pixel, voltages, :reads] = self.program_map.apply(program, values)
        return mapped

    # -------------------------------------------------------------- summaries
    def passes(
        self, trial: Trial, target: float, against: str = "measured", with_dynamics: bool = False
    ) -> bool | None:
        """Whether a trial's tensor R^2 against ``against`` (``"measured"`` or ``"truth"``) is
        >= ``target`` and, with ``with_dynamics``, its dynamics R^2 meets the dynamics
        criterion; None when a needed score is missing."""
        score = {"measured": trial.r2_measured, "truth": trial.r2_truth}[against]
        if score is None:
            return None
        if not with_dynamics:
            return score >= target
        if self.criterion is None:
            return None
        dynamics = (
            trial.dynamics_truth
            if self.criterion.reference_name == "truth"
            else trial.dynamics_measured
        )
        if dynamics is None:
            return None
        return score >= target and dynamics >= self.criterion.floor

    def max_dropped(
        self, target: float, against: str = "measured", with_dynamics: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Per experiment and method, the largest fraction dropped (1 - kept) at which the
        trials pass (:meth:`passes`): along one axis, at that kept fraction and at every larger
        one tried; for the combined designs, the cheapest passing design
        (:func:`_smallest_safe_fraction`). None when no tried fraction qualifies."""
        curves: dict[str, dict[str, list[tuple[float, bool]]]] = {}
        for t in self.trials:
            ok = self.passes(t, target, against, with_dynamics)
            if ok is not None:
                curves.setdefault(t.experiment, {}).setdefault(t.reconstructor, []).append(
                    (t.fraction_kept, ok)
                )
        table: dict[str, dict[str, Any]] = {}
        for experiment, methods in curves.items():
            table[experiment] = {}
            for method, points in methods.items():
                best = _smallest_safe_fraction(points, experiment.startswith("combined"))
                table[experiment][method] = None if best is None else round(1.0 - best, 4)
        return table

    def summary(self) -> dict[str, Any]:
        """Everything the JSON file holds."""
        against = ("measured", "truth") if self.truth is not None else ("measured",)
        tables = {
            f"{name}@{target:.2f}": self.max_dropped(target, name)
            for name in against
            for target in TARGETS
        }
        if self.criterion is not None:
            for target in TARGETS:
                tables[f"with_dynamics@{target:.2f}"] = self.max_dropped(
                    target, "measured", with_dynamics=True
                )
        dynamics = None
        if self.criterion is not None:
            dynamics = {
                "reference": self.criterion.reference_name,
                "raster": self.criterion.raster,
                "margin": self.criterion.margin,
                "floor": self.criterion.floor,
            }
        return {
            "shape": list(self.data.shape),
            "seed": self.seed,
            "fractions": list(self.fractions),
            "experiments": self.experiments,
            "not_run": self.not_run,
            "reconstructors": self.reconstructors,
            "combined_reconstructors": self.combined_reconstructors,
            "short_read_reconstructors": self.short_read_reconstructors,
            "skipped": self.skipped,
            "has_truth": self.truth is not None,
            "cost": {
                "pulse_s": self.cost.pulse_s,
                "reads": self.n_times,
                "read_interval_s": self.cost.read_interval_s,
            },
            "dynamics_criterion": dynamics,
            "trials": [asdict(t) for t in self.trials],
            "max_fraction_dropped": tables,
        }


def _smallest_safe_fraction(points: list[tuple[float, bool]], designs: bool) -> float | None:
    """The smallest kept fraction that counts as passing, or None.

    Along one axis (``designs`` false) it is the smallest fraction from which every larger
    fraction tried passes too: a lucky pass below a failure does not count. The combined
    experiments (``designs`` true) try designs of unrelated costs, not one curve, and a designer
    would pick the cheapest design that passes, so it is the smallest passing fraction. Where
    several settings share a fraction, it passes when any of them does.
    """
    passed: dict[float, bool] = {}
    for fraction, ok in points:
        passed[fraction] = ok or passed.get(fraction, False)
    if designs:
        return min((f for f, ok in passed.items() if ok), default=None)
    safe = None
    for fraction in sorted(passed, reverse=True):
        if not passed[fraction]:
            break
        safe = fraction
    return safe


# ------------------------------------------------------------------ output
def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: per experiment and method, the largest fraction of instrument time
    dropped at each target, against the measured data, the truth (when present) and with the
    dynamics criterion (data with a time axis)."""
    tables = summary["max_fraction_dropped"]
    columns = list(tables)
    width = max(len(c) for c in columns) + 1
    rows = sorted({(e, m) for t in tables.values() for e, ms in t.items() for m in ms})
    header = f"{'experiment':<21} {'method':<12} " + " ".join(f"{c:>{width}}" for c in columns)
    lines = [
        "largest fraction of instrument time (pulses and reads) that can be dropped with tensor "
        "R^2 >= target ('-' = not reached at any fraction tried)",
    ]
    criterion = summary.get("dynamics_criterion")
    if criterion:
        lines.append(
            f"with_dynamics: tensor R^2 (measured) >= target and dynamics R^2 against the "
            f"{criterion['reference']} >= {criterion['floor']:.3f} (full raster "
            f"{criterion['raster']:.3f} - {criterion['margin']})"
        )
    lines += [header, "-" * len(header)]
    for experiment, method in rows:
        cells = []
        for column in columns:
            value = tables[column].get(experiment, {}).get(method)
            cells.append(f"{'-' if value is None else f'{value:.2f}':>{width}}")
        lines.append(f"{experiment:<21} {method:<12} " + " ".join(cells))
    return "\n".join(lines)


#: The figure's panels: one per axis, each with the experiments that drop part of it.
PANELS: dict[str, tuple[str, ...]] = {
    "space (random pixels, full spectra)": ("pixels",),
    "voltage (every pixel, some voltages)": ("voltages_random", "voltages_regular"),
    "time (every curve read for its first reads)": ("time_truncation",),
    "combined (full pixels + one block elsewhere)": ("combined", "combined_short_reads"),
}


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """One PNG with a panel per axis: tensor R^2 (solid, against the measured data) and
    dynamics R^2 (dashed, against the truth when there is one) against the fraction of
    instrument time kept, a colour per method, with the targets and the dynamics floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {t["experiment"] for t in summary["trials"]}
    panels = [(title, [e for e in exps if e in present]) for title, exps in PANELS.items()]
    panels = [(title, exps) for title, exps in panels if exps]
    criterion = summary.get("dynamics_criterion")
    dynamics_key = (
        "dynamics_truth" if criterion and criterion["reference"] == "truth" else "dynamics_measured"
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, experiments) in zip(axes[0], panels, strict=True):
        colour = 0
        for experiment in experiments:
            trials = [t for t in summary["trials"] if t["experiment"] == experiment]
            # The combined designs are points of a cost-accuracy scatter, not one curve.
            style = "" if experiment.startswith("combined") else "-"
            for method in sorted({t["reconstructor"] for t in trials}):
                label = method if len(experiments) == 1 else f"{experiment}: {method}"
                points = _best_per_fraction(
                    [t for t in trials if t["reconstructor"] == method], dynamics_key
                )
                fractions = sorted(points)
                c = f"C{colour}"
                colour += 1
                ax.plot(
                    fractions,
                    [points[f][0] for f in fractions],
                    "o" + style,
                    color=c,
                    ms=4,
                    label=f"{label} (tensor)",
                )
                dynamics = [points[f][1] for f in fractions]
                if np.isfinite(dynamics).any():
                    ax.plot(
                        fractions,
                        dynamics,
                        "x" + style.replace("-", "--"),
                        color=c,
                        ms=5,
                        label=f"{label} (dynamics)",
                    )
        for target in TARGETS:
            ax.axhline(target, color="grey", lw=0.8, ls=":")
        if criterion:
            ax.axhline(criterion["floor"], color="red", lw=0.8, ls=":")
        ax.set_xlabel("fraction of instrument time kept (pulses + reads)")
        ax.set_ylabel("R$^2$")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.5, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=1 + (len(ax.lines) > 8))
    subtitle = (
        f"; dynamics against the {criterion['reference']}, red: its floor {criterion['floor']:.2f}"
        if criterion
        else "; no time axis: tensor R$^2$ only"
    )
    fig.suptitle(f"{summary.get('data', '')} {tuple(summary['shape'])}{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_per_fraction(
    trials: list[dict[str, Any]], dynamics_key: str
) -> dict[float, tuple[float, float]]:
    """(tensor R^2 measured, dynamics R^2 or NaN) of the best tensor-scoring setting at each
    kept fraction."""
    best: dict[float, tuple[float, float]] = {}
    for t in trials:
        f = round(t["fraction_kept"], 6)
        dynamics = t.get(dynamics_key)
        score = (t["r2_measured"], np.nan if dynamics is None else dynamics)
        if f not in best or score[0] > best[f][0]:
            best[f] = score
    return best


def write_outputs(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``redundancy.json`` and ``redundancy.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "redundancy.json"
    json_path.write_text(json.dumps(summary, indent=1, allow_nan=True))
    return [json_path, plot_curves(summary, out / "redundancy.png")]


# ------------------------------------------------------------------ command line
TWIN_SETTINGS = ("default", "relaxation-rich")


def twin_overrides(setting: str, grid: int | None = None) -> dict[str, Any]:
    """Twin settings for ``--twin-setting`` and ``--grid``."""
    from envs.data.twin import RELAXATION_RICH

    if setting not in TWIN_SETTINGS:
        raise ValueError(f"twin setting {setting!r} is not one of {list(TWIN_SETTINGS)}")
    overrides: dict[str, Any] = dict(RELAXATION_RICH) if setting == "relaxation-rich" else {}
    if grid is not None:
        overrides["grid"] = (grid, grid)
    return overrides


def standardise_channels(
    data: np.ndarray, truth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``data`` (and ``truth``, on the same scale) divided by each spectral channel's spatial
    standard deviation in ``data`` (channels that are constant in space are left as they are).

    The R^2 pools every channel's sums of squares, so in a file of images in different units
    (height in metres beside phase in degrees) the channel with the largest numbers is the whole
    score; on a common scale every channel counts alike."""
    with warnings.catch_warnings():  # an all-NaN channel's spread is NaN: left unscaled below
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanstd(data.astype(np.float64), axis=(0, 1), keepdims=True)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    scaled = (data / spread).astype(np.float32)
    return scaled, None if truth is None else (truth / spread).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the summary it wrote."""
    parser = argparse.ArgumentParser(
        prog="python -m studies.redundancy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default="twin", help="'twin', 'twin:SEED' or a data file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--twin-setting",
        choices=TWIN_SETTINGS,
        default="default",
        help="twin only: 'relaxation-rich' is envs.data.twin.RELAXATION_RICH",
    )
    parser.add_argument("--grid", type=int, default=None, help="twin only: an N x N grid")
    parser.add_argument(
        "--experiments",
        default=",".join(EXPERIMENTS),
        help="comma-separated experiments to run (time experiments need a time axis)",
    )
    parser.add_argument(
        "--reconstructors",
        default=",".join(SPATIAL_RECONSTRUCTORS),
        help="comma-separated names for the pixel experiment",
    )
    parser.add_argument(
        "--combined-reconstructors",
        default=",".join(COMBINED_RECONSTRUCTORS),
        help="comma-separated names for the combined experiment (gp is slow there: add it "
        "explicitly)",
    )
    parser.add_argument(
        "--short-read-reconstructors",
        default=",".join(SHORT_READ_RECONSTRUCTORS),
        help="comma-separated names for the combined experiment with short reads",
    )
    parser.add_argument(
        "--fractions",
        default=",".join(str(f) for f in FRACTIONS),
        help="comma-separated kept fractions for the single-axis experiments",
    )
    parser.add_argument(
        "--standardise-channels",
        action="store_true",
        help="divide every spectral channel by its spatial standard deviation first (files whose "
        "channels carry different units, where one channel's variance would fill every score)",
    )
    from envs.instruments.memory import MEMORY_SETTINGS  # numpy only

    parser.add_argument(
        "--memory",
        choices=MEMORY_SETTINGS,
        default="auto",
        help="the sample's memory: auto (a twin's designs are simulated, each pixel running its "
        "program from its as-grown state; a file is replayed), on, or off (the data's own "
        "values, as a sample without memory gives them)",
    )
    parser.add_argument(
        "--program-map",
        metavar="SEEDS",
        help="comma-separated training twin seeds: learn what each first visit of the combined "
        "designs reads (reconstruct.program_map) on these twins, with the studied twin's "
        "settings, and reconstruct every combined design a second time with the partial "
        "pixels' values mapped (rows NAME+map); needs the memory simulated",
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # The one place this module touches envs for data.
    from envs.data.sources import open_data, parse_spec
    from envs.instruments.cost import CostModel
    from envs.instruments.memory import TwinMemoryInstrument, instrument_for, memory_setting

    is_twin = parse_spec(args.data).is_twin
    if not is_twin and (args.twin_setting != "default" or args.grid is not None):
        parser.error("--twin-setting and --grid apply to the twin only")
    overrides = twin_overrides(args.twin_setting, args.grid) if is_twin else {}
    dataset = open_data(args.data, **overrides)
    print(dataset.summary())
    data, truth = dataset.data, dataset.truth
    cost = CostModel().for_axes(dataset.axes)
    try:
        instrument = instrument_for(dataset, cost, memory_setting(args.memory))
    except ValueError as err:
        parser.error(str(err))
    simulated = isinstance(instrument, TwinMemoryInstrument)
    if simulated and args.standardise_channels:
        parser.error("--standardise-channels rescales the data, not what a simulated sample "
                     "gives: use it with --memory off")
    if args.standardise_channels:
        data, truth = standardise_channels(data, truth)
    map_seeds = _map_seeds(parser, args, dataset, simulated)
    study = RedundancyStudy(
        data,
        truth,
        reconstructors=_names(args.reconstructors),
        combined_reconstructors=_names(args.combined_reconstructors),
        short_read_reconstructors=_names(args.short_read_reconstructors),
        fractions=[float(f) for f in args.fractions.split(",")],
        seed=args.seed,
        device=args.device,
        cost=cost,
        experiments=_names(args.experiments),
        # Each pixel of a design runs one program from its as-grown state.
        program_values=instrument.measure_first_visit if simulated else None,
    )
    if map_seeds:
        study.program_map = _fitted_program_map(
            study.first_visit_programs(), map_seeds, overrides, progress=not args.quiet
        )
    for name, reason in study.skipped.items():
        print(f"skipping {name}: {reason}")
    for experiment in study.not_run:
        print(f"not running {experiment}: the data has no time axis")
    study.run(progress=not args.quiet)
    summary = {
        "data": args.data,
        "dataset": dataset.summary(),
        "twin_setting": args.twin_setting if is_twin else None,
        "twin_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "standardised_channels": args.standardise_channels,
        "sample": "with memory: each pixel's program simulated from its as-grown state"
        if simulated
        else "without memory: the data's own values",
        "program_map_seeds": map_seeds,
        **study.summary(),
    }
    paths = write_outputs(summary, args.out)
    print(format_table(summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return summary


def _map_seeds(
    parser: argparse.ArgumentParser, args: argparse.Namespace, dataset: Any, simulated: bool
) -> list[int]:
    """The training twin seeds of ``--program-map`` (empty without it), checked: a map needs
    the memory simulated, and neither the studied twin nor a held-out twin may teach it."""
    if not args.program_map:
        return []
    from envs.data.sources import HELD_OUT_SEED_START
    from envs.instruments.memory import twin_of

    if not simulated:
        parser.error("--program-map corrects what a sample with memory reads: it needs a twin "
                     "with its memory simulated (--memory auto or on)")
    try:
        seeds = [int(seed) for seed in _names(args.program_map)]
    except ValueError:
        parser.error(f"--program-map takes comma-separated twin seeds, got {args.program_map!r}")
    studied = twin_of(dataset)[0]
    if studied in seeds or any(not 0 <= seed < HELD_OUT_SEED_START for seed in seeds):
        parser.error(f"--program-map seeds must be training twins other than the studied one "
                     f"({studied}), in [0, {HELD_OUT_SEED_START})")
    return seeds


def _fitted_program_map(
    programs: Sequence[Program], seeds: Sequence[int], overrides: dict[str, Any], progress: bool
) -> ProgramMap:
    """A :class:`ProgramMap` of ``programs`` learned on every pixel of the twins ``seeds`` (with
    the studied twin's settings ``overrides``)."""
    from envs.data.sources import open_data
    from envs.instruments.memory import first_visit_pairs

    pieces: dict[Program, list[tuple[np.ndarray, np.ndarray]]] = {p: [] for p in programs}
    for seed in tqdm(seeds, desc="program map", disable=not progress):
        twin = open_data(f"twin:{seed}", **overrides)
        for program, pair in first_visit_pairs(twin, programs).items():
            pieces[program].append(pair)
    pairs = {
        program: (np.concatenate([a for a, _ in got]), np.concatenate([s for _, s in got]))
        for program, got in pieces.items()
    }
    return ProgramMap().fit(pairs)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


if __name__ == "__main__":
    main()
