"""Does a reconstructor's reported uncertainty match its actual error?

Every uncertainty-led policy steers by :meth:`~reconstruct.Reconstructor.uncertainty` (the
predictive variance of each (pixel, voltage block), averaged over the block's features), and a
live experiment stops on it. This study measures how well that variance matches the squared
error the reconstruction actually makes.

Designs. Each design starts from the environment's initial design (every block of the pixels on
a sparse grid of stride ``--initial-stride``) and then adds blocks chosen by a policy from
:mod:`agents.catalog`: ``random`` (uniform (pixel, block) picks, the default) or e.g.
``gp-uncertainty-per-second`` (the blocks an uncertainty-led policy would choose). At each stage
(a fraction of all blocks taken, ``--fractions``) the reconstructor is scored as it stands. A
stage below the initial design's share is scored at the initial design; ``measured %`` says
what was really taken.

Pixel kinds. Blocks are split by what the reconstructor knows of their pixel:

``empty``
    unmeasured blocks of pixels with nothing measured;
``partial``
    unmeasured blocks of pixels with some block measured;
``unmeasured``
    both together;
``measured``
    measured blocks (their reported variance is 0 by contract; their error against the
    noise-free truth is the noise floor that an unmeasured block's error against the data also
    carries).

Numbers per kind. ``ratio`` = mean predicted variance / mean squared error, against the measured
data in block layout (``data``, what the reconstructor predicts, noise included) and, where the
dataset has one, against the noise-free truth (``truth``). ``rank`` = Spearman rank correlation,
block by block, between the predicted standard deviation and the actual RMS error. Entries whose
measured value is NaN are left out (a block with none left is not scored).

Target. Ratio against the data within [0.67, 1.5] at every stage for ``empty`` and ``partial``
pixels, and rank correlation at least 0.5 over all unmeasured blocks; the table marks each row
``ok`` or ``OUT`` with the criterion missed. Over several twins, a row pools them (sums of
predicted variance and of squared errors over every twin's blocks), shows the range of the
twins' own ratios and the median of their ranks, and counts the twins inside the target.

Outputs (in ``--out``): ``calibration.json`` (settings, one row per dataset x design x stage x
kind, and the pooled rows), ``calibration.csv`` (the per-dataset rows),
``calibration_summary.csv`` (the pooled rows) and ``calibration.png`` (ratio on a log axis, and
rank correlation, against the fraction measured).

Examples
--------
    python -m studies.calibration --data twin --seeds 20 --grid 30 --reconstructor gp --out DIR
    python -m studies.calibration --data ../shared/data/bepfm_32x32x102.npy --blocks 6 --out DIR
    python -m studies.calibration --designs random,gp-uncertainty-per-second --out DIR
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from envs.command_line import OneLineParser, json_object, positive_int
from reconstruct import BlockLayout, Reconstructor
from reconstruct.metrics import rmse

#: Fractions of all (pixel, block) pairs measured at which the reconstructor is scored.
FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.10, 0.20, 0.40)
#: Target band of predicted variance / squared error, and the least acceptable rank correlation.
RATIO_BAND: tuple[float, float] = (0.67, 1.5)
MIN_RANK = 0.5
PIXEL_KINDS: tuple[str, ...] = ("empty", "partial", "unmeasured", "measured")
#: Kinds whose ratio must lie in the band, and the kind whose rank correlation is judged.
RATIO_KINDS: tuple[str, ...] = ("empty", "partial", "unmeasured")
RANK_KIND = "unmeasured"
REFERENCES: tuple[str, ...] = ("data", "truth")


# ------------------------------------------------------------------ one reconstruction scored
def block_rms_errors(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """``(P, n_blocks)`` RMS error of each block over its finite reference entries (NaN for a
    block with none), from ``(P, n_blocks, F_b)`` tensors."""
    finite = torch.isfinite(reference)
    squared = torch.where(finite, estimate - reference, 0.0).square()
    counts = finite.sum(-1)
    mean_squared = squared.sum(-1) / counts.clamp_min(1)
    return torch.where(counts > 0, mean_squared.sqrt(), torch.nan)


def rank_correlation(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Spearman correlation; NaN when either side is constant (no ranking to compare) or when
    there are fewer than 3 blocks."""
    if predicted.size < 3 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return math.nan
    return float(spearmanr(predicted, actual).statistic)


def kind_masks(measured: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(P, n_blocks)`` masks of each pixel kind (module notes) from the measured mask."""
    touched = measured.any(1, keepdim=True)
    return {
        "empty": ~measured & ~touched,
        "partial": ~measured & touched,
        "unmeasured": ~measured,
        "measured": measured,
    }


def calibration_stats(
    reconstructor: Reconstructor,
    reference_blocks: torch.Tensor,
    truth_blocks: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """Predicted variance against actual error for each pixel kind, as the reconstructor stands.

    Parameters
    ----------
    reconstructor
        Scored through ``estimate_blocks()``, ``uncertainty()`` and ``measured``.
    reference_blocks
        ``(P, n_blocks, F_b)`` measured data (NaN entries are left out).
    truth_blocks
        The noise-free truth in the same layout, or None.

    Returns
    -------
    dict
        Per kind: ``n_blocks`` scored, ``predicted_variance`` (their mean),
        ``sum_predicted_variance``; per reference (``data``, and ``truth`` when given)
        ``mse_REF``, ``ratio_REF``, ``rank_REF`` and the sums ``sse_REF``, ``entries_REF``
        that pooling over datasets needs. NaN where a kind has no block.
    """
    estimate = reconstructor.estimate_blocks().detach().to("cpu", torch.float64)
    variance = reconstructor.uncertainty().detach().to("cpu", torch.float64)
    references = {"data": reference_blocks.detach().to("cpu", torch.float64)}
    if truth_blocks is not None:
        references["truth"] = truth_blocks.detach().to("cpu", torch.float64)
    # The data's NaN blocks (lost pixels) are scored for no reference, so both see one set.
    scorable = torch.isfinite(references["data"]).any(-1)
    errors = {name: block_rms_errors(ref, estimate) for name, ref in references.items()}
    stats: dict[str, dict[str, Any]] = {}
    for kind, mask in kind_masks(reconstructor.measured.cpu()).items():
        selected = mask & scorable
        n_blocks = int(selected.sum())
        entry: dict[str, Any] = {
            "n_blocks": n_blocks,
            "sum_predicted_variance": float(variance[selected].sum()),
            "predicted_variance": float(variance[selected].mean()) if n_blocks else math.nan,
        }
        predicted_std = variance[selected].clamp_min(0).sqrt().numpy()
        for name, ref in references.items():
            sse, entries, mse, rank = 0.0, 0, math.nan, math.nan
            if n_blocks:
                entries = int(torch.isfinite(ref[selected]).sum())
                mse = rmse(ref[selected], estimate[selected]) ** 2
                sse = mse * entries
                rank = rank_correlation(predicted_std, errors[name][selected].numpy())
            entry.update(
                {
                    f"sse_{name}": sse,
                    f"entries_{name}": entries,
                    f"mse_{name}": mse,
                    f"ratio_{name}": _ratio(entry["predicted_variance"], mse),
                    f"rank_{name}": rank,
                }
            )
        stats[kind] = entry
    return stats


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN unless both are finite and the denominator positive
    (a measured block against its own data: 0 / 0)."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return math.nan
    return numerator / denominator


def target_misses(kind: str, ratio: float, rank: float) -> list[str]:
    """The criteria of the target that a row misses (empty: inside; module notes)."""
    misses = []
    if kind in RATIO_KINDS and not RATIO_BAND[0] <= ratio <= RATIO_BAND[1]:
        misses.append("ratio")
    if kind == RANK_KIND and not rank >= MIN_RANK:
        misses.append("rank")
    return misses


def target_mark(kind: str, n_blocks: int, ratio: float, rank: float) -> str:
    """``ok``, ``OUT (ratio, rank)``, or ``-`` for a kind the target does not judge or one
    with no block at this stage (e.g. no partly measured pixel yet)."""
    if n_blocks == 0 or (kind not in RATIO_KINDS and kind != RANK_KIND):
        return "-"
    misses = target_misses(kind, ratio, rank)
    return f"OUT ({', '.join(misses)})" if misses else "ok"


# ------------------------------------------------------------------ one design run
@dataclass(frozen=True)
class NamedDataset:
    """A dataset with the group it is pooled in (``data``, e.g. ``twin 30x30``) and its own
    name (``dataset``, e.g. ``twin:100000``)."""

    data: str
    dataset: str
    value: Any  # envs.Dataset


def stage_goals(fractions: Sequence[float], n_blocks_total: int) -> list[tuple[float, int]]:
    """``(fraction, blocks to have taken)`` in ascending order."""
    return [(f, math.ceil(f * n_blocks_total)) for f in sorted(fractions)]


def run_design(
    env: Any,
    policy: Any,
    fractions: Sequence[float],
    seed: int,
    progress: Any = None,
) -> Iterator[dict[str, Any]]:
    """Reset ``env`` (its initial design), let ``policy`` add blocks, and score each stage.

    Yields one dict per fraction: ``fraction_target``, ``fraction_measured`` (blocks taken,
    lost NaN blocks included, over all blocks) and ``kinds`` (:func:`calibration_stats`).
    """
    observation, info = env.reset(seed=seed)
    policy.reset(env, seed=seed)
    dataset = env.dataset
    truth_blocks = None
    if dataset.truth is not None:
        truth_blocks = env.layout.to_blocks(torch.from_numpy(dataset.truth))
    n_total = env.n_pixels * env.n_blocks
    for fraction, goal in stage_goals(fractions, n_total):
        while env.n_measurements < goal:
            action = policy.act(observation, np.asarray(info["action_mask"], dtype=bool))
            observation, _, terminated, truncated, info = env.step(action)
            if progress is not None:
                progress.update(1)
            if terminated or truncated:
                raise RuntimeError(
                    f"the episode ended at {env.n_measurements} of {goal} blocks (budget or "
                    "stop rule): the study sets no budget, so this is a bug"
                )
        yield {
            "fraction_target": fraction,
            "fraction_measured": env.n_measurements / n_total,
            "kinds": calibration_stats(env.reconstructor, env.reference_blocks, truth_blocks),
        }


def _reconstructor_kwargs(name: str, seed: int) -> dict[str, Any]:
    """The reconstructor's ``seed`` option set to the study's seed, where it has one."""
    from reconstruct.registry import reconstructor_class

    accepts_seed = "seed" in inspect.signature(reconstructor_class(name)).parameters
    return {"seed": seed} if accepts_seed else {}


def run_study(
    datasets: Sequence[NamedDataset],
    *,
    reconstructor: str = "gp",
    reconstructor_options: dict[str, Any] | None = None,
    designs: Sequence[str] = ("random",),
    fractions: Sequence[float] = FRACTIONS,
    n_blocks: int = 4,
    initial_stride: int = 6,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every design on every dataset; return one flat row per dataset x design x stage x
    kind (the columns of :data:`ROW_COLUMNS`)."""
    from agents.catalog import make_policy
    from envs.acquisition.factory import EnvConfig, make_env

    settings = EnvConfig(
        reconstructor=reconstructor,
        reconstructor_kwargs={
            **_reconstructor_kwargs(reconstructor, seed), **(reconstructor_options or {})
        },
        device=device,
        n_blocks=n_blocks,
        initial_stride=initial_stride,
        # Stages are set by the blocks taken, never by seconds: a budget far beyond any stage.
        budget_fraction=1e6,
    )
    rows: list[dict[str, Any]] = []
    with tqdm(total=0, desc="blocks chosen", disable=not progress, leave=False) as bar:
        for index, named in enumerate(datasets):
            # One seed per dataset, from the study's seed: designs differ between twins.
            episode_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            for design in designs:
                policy = make_policy(design)
                config = settings.replace(data=named.value, **policy.env_settings())
                env = make_env(config)
                # The bar counts the blocks policies choose, after each initial design.
                last_goal = stage_goals(fractions, env.n_pixels * env.n_blocks)[-1][1]
                bar.total += max(last_goal - env.initial_pixels.size * env.n_blocks, 0)
                bar.refresh()
                for stage in run_design(env, policy, fractions, episode_seed, bar):
                    for kind, stats in stage["kinds"].items():
                        rows.append(
                            {
                                "data": named.data,
                                "dataset": named.dataset,
                                "design": design,
                                "fraction_target": stage["fraction_target"],
                                "fraction_measured": stage["fraction_measured"],
                                "kind": kind,
                                **stats,
                            }
                        )
                env.close()
    return rows


# ------------------------------------------------------------------ pooling over datasets
def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per data group x design x stage x kind: pooled ratios (sums over the group's
    datasets), the range of the datasets' own ratios, median ranks and the datasets inside the
    target."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["data"], row["design"], row["fraction_target"], row["kind"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (data, design, fraction, kind), members in groups.items():
        n_blocks = sum(m["n_blocks"] for m in members)
        predicted = _ratio(sum(m["sum_predicted_variance"] for m in members), n_blocks)
        pooled: dict[str, Any] = {
            "data": data,
            "design": design,
            "fraction_target": fraction,
            "fraction_measured": float(np.mean([m["fraction_measured"] for m in members])),
            "kind": kind,
            "n_datasets": len(members),
            "n_blocks": n_blocks,
            "predicted_variance": predicted if n_blocks else math.nan,
        }
        for ref in REFERENCES:
            if f"sse_{ref}" not in members[0]:
                continue
            mse = _ratio(
                sum(m[f"sse_{ref}"] for m in members), sum(m[f"entries_{ref}"] for m in members)
            )
            ratios = np.array([m[f"ratio_{ref}"] for m in members], dtype=float)
            ranks = np.array([m[f"rank_{ref}"] for m in members], dtype=float)
            finite = ratios[np.isfinite(ratios)]
            pooled.update(
                {
                    f"mse_{ref}": mse,
                    f"ratio_{ref}": _ratio(pooled["predicted_variance"], mse),
                    f"ratio_{ref}_min": float(finite.min()) if finite.size else math.nan,
                    f"ratio_{ref}_max": float(finite.max()) if finite.size else math.nan,
                    f"rank_{ref}": _nan_median(ranks),
                }
            )
        pooled["target"] = target_mark(kind, n_blocks, pooled["ratio_data"], pooled["rank_data"])
        pooled["datasets_inside"] = sum(
            target_mark(kind, m["n_blocks"], m["ratio_data"], m["rank_data"]) == "ok"
            for m in members
        )
        summary.append(pooled)
    return summary


def _nan_median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


# ------------------------------------------------------------------ table, files, figure
def _number(value: float, width: int, digits: int = 3) -> str:
    return f"{value:>{width}.{digits}g}" if math.isfinite(value) else f"{'-':>{width}}"


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """The pooled rows as text, one per data group x design x stage x kind."""
    header = (
        f"{'data':<22} {'design':<18} {'stage':>5} {'meas%':>6} {'kind':<10} {'blocks':>7} "
        f"{'mse':>8} {'ratio':>7} {'[min':>7} {'max]':>7} {'rank':>6} {'mse.tr':>8} "
        f"{'r.truth':>7} {'rk.tr':>6}  target"
    )
    lines = [
        "mse, ratio = mean squared error, and mean predicted variance / mse, against the "
        "measured data (.tr: against the noise-free truth; on measured blocks mse.tr is the "
        f"noise floor); [min max]: range over datasets; rank: median over datasets; "
        f"target: ratio in [{RATIO_BAND[0]}, "
        f"{RATIO_BAND[1]}] for {', '.join(RATIO_KINDS)}, rank >= {MIN_RANK} over {RANK_KIND}",
        header,
        "-" * len(header),
    ]
    for row in summary:
        inside = (
            f" {row['datasets_inside']}/{row['n_datasets']}"
            if row["n_datasets"] > 1 and row["target"] != "-"
            else ""
        )
        lines.append(
            f"{row['data'][:22]:<22} {row['design'][:18]:<18} {row['fraction_target']:>5.0%} "
            f"{100 * row['fraction_measured']:>6.1f} {row['kind']:<10} {row['n_blocks']:>7d} "
            f"{_number(row['mse_data'], 8)} {_number(row['ratio_data'], 7)} "
            f"{_number(row['ratio_data_min'], 7)} {_number(row['ratio_data_max'], 7)} "
            f"{_number(row['rank_data'], 6, 2)} {_number(row.get('mse_truth', math.nan), 8)} "
            f"{_number(row.get('ratio_truth', math.nan), 7)} "
            f"{_number(row.get('rank_truth', math.nan), 6, 2)}  {row['target']}{inside}"
        )
    return "\n".join(lines)


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_calibration(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Ratio (log axis, target band shaded, whiskers: range over datasets) and rank correlation
    against the fraction measured; colour per data group and kind, marker per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    fig, (ratio_ax, rank_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    ratio_ax.axhspan(*RATIO_BAND, color="tab:green", alpha=0.15, label="target band")
    rank_ax.axhline(MIN_RANK, color="tab:green", lw=1, ls="--", label=f"target {MIN_RANK}")
    lines: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in summary:
        if row["kind"] in RATIO_KINDS[:2] or row["kind"] == RANK_KIND:
            lines.setdefault((row["data"], row["kind"], row["design"]), []).append(row)
    colours = {key[:2]: f"C{i}" for i, key in enumerate(dict.fromkeys(k[:2] for k in lines))}
    markers = {d: m for d, m in zip(dict.fromkeys(k[2] for k in lines), "os^vD", strict=False)}
    for (data, kind, design), points in lines.items():
        points = sorted(points, key=lambda r: r["fraction_measured"])
        x = np.array([p["fraction_measured"] for p in points])
        style = {"color": colours[data, kind], "marker": markers.get(design, "o")}
        label = f"{data}, {kind}" + (f", {design}" if len(markers) > 1 else "")
        if kind != RANK_KIND:
            ratio = np.array([p["ratio_data"] for p in points])
            # Whiskers from the pooled ratio to the datasets' extremes (clipped: with one
            # dataset both are the same number up to round-off).
            spread = np.array(
                [
                    [p["ratio_data"] - p["ratio_data_min"], p["ratio_data_max"] - p["ratio_data"]]
                    for p in points
                ]
            ).T
            ratio_ax.errorbar(
                x,
                ratio,
                yerr=np.clip(np.nan_to_num(spread), 0, None),
                capsize=3,
                label=label,
                **style,
            )
        rank_ax.plot(x, [p["rank_data"] for p in points], label=label, **style)
    ratio_ax.set_yscale("log")
    ratio_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ratio_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ratio_ax.yaxis.set_minor_formatter(NullFormatter())
    ratio_ax.axhline(1.0, color="grey", lw=0.8)
    ratio_ax.set_ylabel("mean predicted variance / mean squared error")
    ratio_ax.set_title("calibration over unmeasured blocks (against the data)")
    rank_ax.set_ylabel("Spearman: predicted std vs RMS error")
    rank_ax.set_title("ranking of blocks")
    rank_ax.set_ylim(-0.2, 1.0)
    # Limits from the stages, not the data drawn: a panel may have no finite point at all.
    measured = [row["fraction_measured"] for row in summary]
    for ax in (ratio_ax, rank_ax):
        ax.set_xscale("log")
        ax.set_xlim(min(measured) / 1.3, max(measured) * 1.3)
        ax.set_xticks(sorted(set(measured)))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("fraction of blocks measured")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    settings: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    out_dir: str | Path,
) -> list[Path]:
    """Write the JSON, both CSVs and the figure into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "calibration.json"
    report = {"settings": settings, "rows": list(rows), "summary": list(summary)}
    json_path.write_text(json.dumps(report, indent=1, allow_nan=True))
    rows_path, summary_path = out / "calibration.csv", out / "calibration_summary.csv"
    _write_csv(rows, rows_path)
    _write_csv(summary, summary_path)
    return [json_path, rows_path, summary_path, plot_calibration(summary, out / "calibration.png")]


# ------------------------------------------------------------------ command line
def _fractions(text: str) -> list[float]:
    values = [float(t) for t in text.split(",") if t.strip()]
    outside = [v for v in values if not 0 < v < 1]
    if not values or outside:
        raise argparse.ArgumentTypeError(
            f"every fraction must lie in (0, 1), got {outside or 'none'}"
        )
    return values


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def open_datasets(
    specs: Sequence[str], n_seeds: int, grid: int, n_times: int | None
) -> list[NamedDataset]:
    """The datasets of the data specs: plain ``twin`` is ``n_seeds`` held-out twins."""
    from envs.data.sources import held_out_seeds, open_data, parse_spec

    twin_settings: dict[str, Any] = {"grid": (grid, grid)}
    if n_times:
        twin_settings["n_times"] = n_times
    datasets = []
    for spec in specs:
        parsed = parse_spec(spec)
        if not parsed.is_twin:
            datasets.append(NamedDataset(Path(spec).name, Path(spec).name, open_data(spec)))
            continue
        seeds = held_out_seeds(n_seeds) if parsed.seed is None else [parsed.seed]
        group = (
            f"twin {grid}x{grid}" if parsed.seed is None else f"twin:{parsed.seed} {grid}x{grid}"
        )
        for seed in seeds:
            name = f"twin:{seed}"
            datasets.append(NamedDataset(group, name, open_data(name, **twin_settings)))
    return datasets


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point; returns the pooled rows it printed."""
    parser = OneLineParser(
        prog="python -m studies.calibration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", nargs="+", default=["twin"], help="data specs: 'twin', 'twin:SEED', a data file"
    )
    parser.add_argument("--seeds", type=positive_int, default=5, help="held-out twins for 'twin'")
    parser.add_argument("--grid", type=positive_int, default=30, help="twin grid side, pixels")
    parser.add_argument("--n-times", type=positive_int, default=None, help="twin read-outs")
    parser.add_argument("--reconstructor", default="gp", help="reconstructor name")
    parser.add_argument(
        "--reconstructor-options", type=json_object, default={}, metavar="JSON",
        help='options of the reconstructor, e.g. \'{"error_calibration": "online"}\'',
    )
    parser.add_argument("--blocks", type=positive_int, default=4, help="voltage blocks")
    parser.add_argument(
        "--designs", type=_names, default=["random"], help="comma-separated policy names"
    )
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=list(FRACTIONS),
        help="comma-separated fractions of blocks measured, each in (0, 1)",
    )
    parser.add_argument(
        "--initial-stride", type=int, default=6, help="initial design grid stride (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', ...")
    parser.add_argument("--out", default="runs/calibration", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from agents.catalog import make_policy
    from envs.data.dataset import DataError
    from envs.data.sources import parse_spec
    from reconstruct.registry import check_reconstructor_options, reconstructor_names

    for spec in args.data:
        try:
            parsed = parse_spec(spec)
        except DataError as err:
            parser.error(f"argument --data: {err}")
        if not parsed.is_twin and not Path(parsed.path).is_file():
            parser.error(f"argument --data: no such file {spec!r}")
    if args.reconstructor not in reconstructor_names():
        parser.error(
            f"argument --reconstructor: unknown {args.reconstructor!r}; choose one of "
            f"{reconstructor_names()}"
        )
    try:
        check_reconstructor_options(args.reconstructor, args.reconstructor_options)
    except ValueError as err:
        parser.error(f"argument --reconstructor-options: {err}")
    for design in args.designs:
        try:
            make_policy(design)
        except ValueError as err:
            parser.error(f"argument --designs: {err}")
    if args.initial_stride < 0:
        parser.error(f"argument --initial-stride: must be >= 0, got {args.initial_stride}")
    try:
        datasets = open_datasets(args.data, args.seeds, args.grid, args.n_times)
    except (DataError, OSError) as err:
        parser.error(f"argument --data: {err}")
    for named in datasets:
        try:  # the layout itself says which block counts a voltage axis allows
            BlockLayout(named.value.spectral_shape[0], args.blocks)
        except ValueError as err:
            parser.error(f"argument --blocks: {named.dataset}: {err}")
    settings = {k: v for k, v in vars(args).items() if k != "quiet"}
    rows = run_study(
        datasets,
        reconstructor=args.reconstructor,
        reconstructor_options=args.reconstructor_options,
        designs=args.designs,
        fractions=args.fractions,
        n_blocks=args.blocks,
        initial_stride=args.initial_stride,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    summary = summarise(rows)
    paths = write_outputs(settings, rows, summary, args.out)
    print(format_table(summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return summary


if __name__ == "__main__":
    main()
