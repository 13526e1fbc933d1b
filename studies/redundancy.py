"""Redundancy study: how much of each axis can be left unmeasured at a given accuracy.

``python -m studies.redundancy --data twin|FILE --out DIR`` keeps a fraction of the data
along one axis (or a combination), reconstructs the rest, and scores the reconstruction with
R^2 (see :func:`reconstruct.metrics.r2_score`) against the measured tensor and, when the
dataset has a noise-free ``truth``, against the truth. Experiments:

``pixels``
    Random pixels with their full spectra; every reconstructor fills in the other pixels.
``voltages_random``, ``voltages_regular``
    Every pixel at a subset of the first spectral axis (random, or evenly spread); the dropped
    entries are interpolated along that axis in acquisition order (``axis-linear``). No pixel
    holds the dropped voltages, so spatial reconstructors cannot help here.
``time_truncation``, ``time_subsampling``
    Every pixel and voltage, but only the first reads (truncation) or evenly spread reads
    (subsampling) along the second spectral axis; the rest is interpolated along it
    (``axis-linear``; past the last kept read it holds the last value). Needs two spectral
    axes.
``combined``
    A fraction of pixels measured in full, and every other pixel at one voltage block of a few
    voltages spread over the sequence (the default :class:`~reconstruct.base.BlockLayout`, one
    block chosen at random per pixel); the reconstructors complete the rest (low-rank
    completion is the natural fit). The kept fraction is the share of the full tensor measured.

The study writes ``DIR/redundancy.json`` and one PNG of R^2 against the fraction kept per
experiment, and prints, per experiment and reconstructor, the largest fraction of the axis that
can be dropped while R^2 stays >= 0.90 and >= 0.95. Entries that are NaN in the data are never
measured (a pixel is skipped by a draw when its values there are not finite) and are ignored by
the scores. Every draw comes from one seeded generator, so a seed fixes the result.

This module never imports ``envs`` except inside :func:`main`, which loads the data.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from reconstruct.base import BlockLayout
from reconstruct.metrics import r2_score
from reconstruct.registry import make_reconstructor

FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
TARGETS: tuple[float, ...] = (0.90, 0.95)
SPATIAL_RECONSTRUCTORS: tuple[str, ...] = ("mean", "nearest", "idw", "linear", "gp", "lowrank")
# The GP reconstructor is left out of the combined experiment by default: with one partial
# block at most pixels it took 80-300 s per setting on the 60 x 60 twin (2 shared cores),
# against about 5 s for low-rank completion. Pass it explicitly to include it.
COMBINED_RECONSTRUCTORS: tuple[str, ...] = ("mean", "nearest", "idw", "linear", "lowrank")
# Share of pixels measured in full, and share of the voltage axis each other pixel gets.
COMBINED_FULL_SHARES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
# One-voltage blocks are left out: on the twin they scored below two- and four-voltage blocks
# at every cost tried, and low-rank completion took 20-80 s per setting with them.
COMBINED_VOLTAGE_SHARES: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2)
AXIS_METHOD = "axis-linear"


@dataclass
class Trial:
    """One reconstruction: what was kept, by which method, and how well it scored."""

    experiment: str
    reconstructor: str
    fraction_kept: float
    r2_measured: float
    r2_truth: float | None
    seconds: float
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
    """Scores estimates in image layout against the data and (optionally) the truth."""

    data: np.ndarray
    truth: np.ndarray | None

    def __call__(self, estimate: np.ndarray | torch.Tensor) -> tuple[float, float | None]:
        measured = r2_score(self.data, estimate, spatial_axes=2)
        truth = None if self.truth is None else r2_score(self.truth, estimate, spatial_axes=2)
        return measured, truth


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
        ``(X, Y, V, *rest)`` measured tensor; NaN marks unmeasured entries.
    truth
        Optional noise-free tensor of the same shape.
    reconstructors
        Names from :mod:`reconstruct.registry` for the ``pixels`` experiment; names whose
        module is not available are skipped and listed in ``skipped``.
    combined_reconstructors
        The same for the ``combined`` experiment.
    fractions
        Kept fractions tried along each single axis.
    seed
        Seed of every random draw.
    device
        Device of the reconstructors (``"auto"``: CUDA when present).
    reconstructor_options
        Extra keyword arguments per reconstructor name.
    """

    def __init__(
        self,
        data: np.ndarray,
        truth: np.ndarray | None = None,
        *,
        reconstructors: Sequence[str] = SPATIAL_RECONSTRUCTORS,
        combined_reconstructors: Sequence[str] = COMBINED_RECONSTRUCTORS,
        fractions: Sequence[float] = FRACTIONS,
        seed: int = 0,
        device: str | torch.device = "auto",
        reconstructor_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim < 3:
            raise ValueError(f"data must be (X, Y, V, ...) with at least 3 axes, got {data.shape}")
        if truth is not None and np.shape(truth) != data.shape:
            raise ValueError(f"truth shape {np.shape(truth)} differs from data shape {data.shape}")
        if not fractions or not all(0 < f < 1 for f in fractions):
            raise ValueError(f"fractions must be a non-empty list of values in (0, 1): {fractions}")
        self.data = data
        self.truth = None if truth is None else np.asarray(truth, dtype=np.float32)
        self.fractions = tuple(float(f) for f in fractions)
        self.seed = int(seed)
        self.device = device
        self.options = reconstructor_options or {}
        self.rng = np.random.default_rng(self.seed)
        self.score = _Scorer(self.data, self.truth)
        self.skipped: dict[str, str] = {}
        self.reconstructors = [n for n in reconstructors if self._available(n)]
        self.combined_reconstructors = [n for n in combined_reconstructors if self._available(n)]
        self.trials: list[Trial] = []

    def _available(self, name: str) -> bool:
        from reconstruct.registry import reconstructor_class

        try:
            reconstructor_class(name)
        except (ImportError, KeyError) as err:
            self.skipped[name] = str(err)
            return False
        return True

    # -------------------------------------------------------------- planning
    def plan(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (experiment, setting) the study will run, in order."""
        x, y, v = self.data.shape[:3]
        jobs: list[tuple[str, dict[str, Any]]] = []
        for f in self.fractions:
            jobs.append(("pixels", {"n_pixels": max(1, round(f * x * y))}))
        for count in _counts(v, self.fractions):
            jobs.append(("voltages_random", {"n_kept": count}))
            jobs.append(("voltages_regular", {"n_kept": count}))
        if self.data.ndim >= 4:
            for count in _counts(self.data.shape[3], self.fractions):
                jobs.append(("time_truncation", {"n_kept": count}))
                jobs.append(("time_subsampling", {"n_kept": count}))
        block_sizes = sorted({_divisor_near(v, s * v) for s in COMBINED_VOLTAGE_SHARES} - {v})
        for share in COMBINED_FULL_SHARES:
            for size in block_sizes:
                jobs.append(("combined", {"full_share": share, "block_size": size}))
        return jobs

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
            elif experiment == "time_subsampling":
                self._along_axis(experiment, 3, setting, random=False)
            else:
                self._combined(setting)
        return self.trials

    # -------------------------------------------------------------- experiments
    def _reconstruct(
        self,
        experiment: str,
        layout: BlockLayout,
        pixels: np.ndarray,
        blocks: np.ndarray,
        fraction: float,
        setting: dict[str, Any],
        names: Sequence[str],
    ) -> None:
        """Feed (pixel, block) measurements to each reconstructor in ``names``; score each."""
        spatial, spectral = self.data.shape[:2], self.data.shape[2:]
        block_data = np.asarray(layout.to_blocks(self.data))
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
            self._record(experiment, name, fraction, estimate, seconds, setting)

    def _record(
        self,
        experiment: str,
        method: str,
        fraction: float,
        estimate: np.ndarray | torch.Tensor,
        seconds: float,
        setting: dict[str, Any],
    ) -> None:
        r2_measured, r2_truth = self.score(estimate)
        self.trials.append(
            Trial(experiment, method, fraction, r2_measured, r2_truth, seconds, dict(setting))
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
        if truncate:
            kept = np.arange(count)
        elif random:
            kept = np.sort(self.rng.choice(length, count, replace=False))
        else:
            kept = _regular(length, count)
        start = time.perf_counter()
        estimate = interpolate_along_axis(self.data, axis, kept)
        seconds = time.perf_counter() - start
        setting = {**setting, "kept": kept.tolist()}
        self._record(experiment, AXIS_METHOD, kept.size / length, estimate, seconds, setting)

    def _combined(self, setting: dict[str, Any]) -> None:
        x, y, v = self.data.shape[:3]
        n_pixels = x * y
        layout = BlockLayout(v, v // setting["block_size"])  # the default, spread-out blocks
        scheme = getattr(layout, "effective_scheme", None)
        if scheme is not None:
            setting = {**setting, "block_scheme": scheme}
        order = self.rng.permutation(n_pixels)
        n_full = max(1, round(setting["full_share"] * n_pixels))
        full, partial = order[:n_full], order[n_full:]
        partial_blocks = self.rng.integers(0, layout.n_blocks, size=partial.size)
        pixels = np.concatenate([np.repeat(full, layout.n_blocks), partial])
        blocks = np.concatenate([np.tile(np.arange(layout.n_blocks), n_full), partial_blocks])
        fraction = (n_full * v + partial.size * layout.block_size) / (n_pixels * v)
        self._reconstruct(
            "combined", layout, pixels, blocks, fraction, setting, self.combined_reconstructors
        )

    # -------------------------------------------------------------- summaries
    def max_dropped(self, target: float, against: str = "measured") -> dict[str, dict[str, Any]]:
        """Per experiment and method, the largest tried fraction dropped (1 - kept) such that
        R^2 >= ``target`` at that kept fraction and at every larger one tried; None when no
        tried fraction qualifies. ``against`` is ``"measured"`` or ``"truth"``."""
        key = {"measured": "r2_measured", "truth": "r2_truth"}[against]
        curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for t in self.trials:
            score = getattr(t, key)
            if score is not None:
                curves.setdefault(t.experiment, {}).setdefault(t.reconstructor, []).append(
                    (t.fraction_kept, score)
                )
        table: dict[str, dict[str, Any]] = {}
        for experiment, methods in curves.items():
            table[experiment] = {}
            for method, points in methods.items():
                best = _smallest_safe_fraction(points, target)
                table[experiment][method] = None if best is None else round(1.0 - best, 4)
        return table

    def summary(self) -> dict[str, Any]:
        """Everything the JSON file holds."""
        tables = {
            f"{against}@{target:.2f}": self.max_dropped(target, against)
            for against in (("measured", "truth") if self.truth is not None else ("measured",))
            for target in TARGETS
        }
        return {
            "shape": list(self.data.shape),
            "seed": self.seed,
            "fractions": list(self.fractions),
            "reconstructors": self.reconstructors,
            "combined_reconstructors": self.combined_reconstructors,
            "skipped": self.skipped,
            "has_truth": self.truth is not None,
            "trials": [asdict(t) for t in self.trials],
            "max_fraction_dropped": tables,
        }


def _smallest_safe_fraction(points: list[tuple[float, float]], target: float) -> float | None:
    """The smallest kept fraction from which every kept fraction tried scores >= target.

    For ``combined`` several settings share a fraction-like cost; the best score at each kept
    fraction counts, since a designer would pick the best setting for that cost.
    """
    best: dict[float, float] = {}
    for fraction, score in points:
        best[fraction] = max(score, best.get(fraction, -np.inf))
    safe = None
    for fraction in sorted(best, reverse=True):
        if best[fraction] < target:
            break
        safe = fraction
    return safe


# ------------------------------------------------------------------ output
def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: per experiment and method, the largest fraction dropped at each
    target, against the measured data and (when present) the truth."""
    tables = summary["max_fraction_dropped"]
    columns = list(tables)
    rows = sorted({(e, m) for t in tables.values() for e, ms in t.items() for m in ms})
    header = f"{'experiment':<18} {'method':<12} " + " ".join(f"{c:>15}" for c in columns)
    lines = [
        "largest fraction that can be dropped with R^2 >= target (fraction of the axis; "
        "'-' = not reached at any fraction tried)",
        header,
        "-" * len(header),
    ]
    for experiment, method in rows:
        cells = []
        for column in columns:
            value = tables[column].get(experiment, {}).get(method)
            cells.append(f"{'-' if value is None else f'{value:.2f}':>15}")
        lines.append(f"{experiment:<18} {method:<12} " + " ".join(cells))
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per experiment: R^2 against the fraction kept, a line per method (solid against
    the measured data, dashed against the truth), with the target levels marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for trial in summary["trials"]:
        by_experiment.setdefault(trial["experiment"], []).append(trial)
    written = []
    for experiment, trials in by_experiment.items():
        fig, ax = plt.subplots(figsize=(6, 4.2))
        methods = sorted({t["reconstructor"] for t in trials})
        for i, method in enumerate(methods):
            colour = f"C{i}"
            points = _best_per_fraction([t for t in trials if t["reconstructor"] == method])
            fractions = sorted(points)
            measured = [points[f][0] for f in fractions]
            ax.plot(fractions, measured, "o-", color=colour, label=f"{method} (measured)")
            if summary["has_truth"]:
                truth = [points[f][1] for f in fractions]
                ax.plot(fractions, truth, "s--", color=colour, label=f"{method} (truth)")
        for target in TARGETS:
            ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("fraction of the full measurement kept")
        ax.set_ylabel("R$^2$")
        ax.set_title(experiment.replace("_", " "))
        ax.set_ylim(max(-0.2, ax.get_ylim()[0]), 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"redundancy_{experiment}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _best_per_fraction(trials: list[dict[str, Any]]) -> dict[float, tuple[float, float]]:
    """(R^2 measured, R^2 truth) of the best-scoring setting at each kept fraction."""
    best: dict[float, tuple[float, float]] = {}
    for t in trials:
        f = round(t["fraction_kept"], 6)
        score = (t["r2_measured"], np.nan if t["r2_truth"] is None else t["r2_truth"])
        if f not in best or score[0] > best[f][0]:
            best[f] = score
    return best


def write_outputs(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``redundancy.json`` and the PNG curves into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "redundancy.json"
    json_path.write_text(json.dumps(summary, indent=1, allow_nan=True))
    return [json_path, *plot_curves(summary, out)]


# ------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the summary it wrote."""
    parser = argparse.ArgumentParser(prog="python -m studies.redundancy", description=__doc__)
    parser.add_argument("--data", default="twin", help="'twin', 'twin:SEED' or a data file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
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
        "--fractions",
        default=",".join(str(f) for f in FRACTIONS),
        help="comma-separated kept fractions for the single-axis experiments",
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from envs.sources import open_data  # the one place this module touches envs

    dataset = open_data(args.data)
    print(dataset.summary())
    study = RedundancyStudy(
        dataset.data,
        dataset.truth,
        reconstructors=_names(args.reconstructors),
        combined_reconstructors=_names(args.combined_reconstructors),
        fractions=[float(f) for f in args.fractions.split(",")],
        seed=args.seed,
        device=args.device,
    )
    for name, reason in study.skipped.items():
        print(f"skipping {name}: {reason}")
    study.run(progress=not args.quiet)
    summary = {"data": args.data, "dataset": dataset.summary(), **study.summary()}
    paths = write_outputs(summary, args.out)
    print(format_table(summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return summary


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


if __name__ == "__main__":
    main()
