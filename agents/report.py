"""Tables, files and figures for an evaluation: what ``evaluate.py`` prints and writes."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np

from agents.evaluation import AgentSummary, Trace

CHALLENGE_TARGET = "0.90"
CHALLENGE_GAIN = 0.25


def _fmt(triple: tuple[float, float, float], scale: float = 1.0, digits: int = 3) -> str:
    mean, low, high = triple
    if math.isnan(mean):
        return "-"
    if low == high:
        return f"{mean * scale:.{digits}g}"
    return f"{mean * scale:.{digits}g} [{low * scale:.{digits}g}, {high * scale:.{digits}g}]"


def format_table(summaries: list[AgentSummary], targets: list[str]) -> str:
    """A fixed-width table: one row per (data, agent)."""
    header = ["data", "agent", "AUC"]
    for t in targets:
        header += [f"h to R2>={t}", f"gain@{t}", f"reached@{t}"]
    header += ["measurements", "ms/decision", "final R2", "R2 vs truth"]
    rows = [header]
    for s in summaries:
        row = [s.data, s.agent, _fmt(s.auc)]
        for t in targets:
            row += [
                _fmt(s.seconds_to[t], 1 / 3600),
                _fmt(s.gain_at[t]),
                f"{s.reached[t]}/{s.n_seeds}",
            ]
        row += [
            _fmt(s.n_measurements, digits=4),
            f"{s.decision_seconds_median * 1e3:.2g}",
            _fmt(s.final_r2),
            _fmt(s.final_r2_truth),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def challenge_lines(summaries: list[AgentSummary]) -> list[str]:
    """One verdict per (data, agent): does it save >= 25 % of the raster time at R^2 >= 0.90,
    algorithm time included, on every seed's mean?"""
    lines = []
    for s in summaries:
        mean, low, _ = s.gain_at[CHALLENGE_TARGET]
        if s.reached[CHALLENGE_TARGET] < s.n_seeds:
            verdict = (
                f"NOT MET (R^2 >= 0.90 reached on {s.reached[CHALLENGE_TARGET]}/{s.n_seeds} seeds "
                f"within the budget)"
            )
        elif mean >= CHALLENGE_GAIN:
            verdict = f"MET (saves {mean:.1%} of the raster time; 95 % interval from {low:.1%})"
        else:
            verdict = f"NOT MET (saves {mean:.1%} of the raster time)"
        lines.append(
            f"challenge (>= 25 % time saved at R^2 >= 0.90) on {s.data}, {s.agent}: {verdict}"
        )
    return lines


def write_results(out: Path, summaries: list[AgentSummary], config: dict) -> None:
    """``results.json`` (configuration and every statistic) and ``results.csv`` (flat, one row
    per agent and dataset)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "results": [s.as_dict() for s in summaries]}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    fields: list[str] = []
    rows = []
    for s in summaries:
        row: dict[str, object] = {"data": s.data, "agent": s.agent, "n_seeds": s.n_seeds}
        for stat in ("auc", "n_measurements", "final_r2", "final_r2_truth"):
            row.update(_triple_columns(stat, getattr(s, stat)))
        for t in s.seconds_to:
            row.update(_triple_columns(f"seconds_to_{t}", s.seconds_to[t]))
            row.update(_triple_columns(f"gain_at_{t}", s.gain_at[t]))
            row[f"reached_{t}"] = s.reached[t]
        row["decision_seconds_median"] = s.decision_seconds_median
        row["raster_seconds"] = s.raster_seconds
        fields += [k for k in row if k not in fields]
        rows.append(row)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_episodes(out: Path, traces: list[tuple[str, Trace]], targets: list[float]) -> None:
    """``episodes.csv``: one row per (data, agent, seed) with that episode's AUC, seconds to and
    gain at each target (empty where not reached), final R^2, measurements and summed decision
    seconds. Paired comparisons (the same seeds under two agents) need these, not the means."""
    out.mkdir(parents=True, exist_ok=True)
    fields = ["data", "agent", "seed", "auc"]
    for t in targets:
        fields += [f"seconds_to_{t:.2f}", f"gain_at_{t:.2f}"]
    fields += ["final_r2", "n_measurements", "decision_seconds"]
    with open(out / "episodes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for data, trace in traces:
            row: dict[str, object] = {
                "data": data,
                "agent": trace.agent,
                "seed": trace.seed,
                "auc": trace.auc(),
            }
            for t in targets:
                seconds = trace.seconds_to(t)
                row[f"seconds_to_{t:.2f}"] = "" if math.isnan(seconds) else seconds
                row[f"gain_at_{t:.2f}"] = "" if math.isnan(seconds) else trace.gain_at(t)
            row["final_r2"] = float(trace.r2[-1])
            row["n_measurements"] = trace.n_measurements
            row["decision_seconds"] = float(np.sum(trace.decision_seconds))
            writer.writerow(row)


def _triple_columns(name: str, triple: tuple[float, float, float]) -> dict[str, float]:
    """Columns ``name``, ``name_lo``, ``name_hi`` for a (mean, low, high) statistic."""
    return dict(zip([name, f"{name}_lo", f"{name}_hi"], triple, strict=True))


def plot_curves(
    path: Path, traces_by_agent: dict[str, list[Trace]], title: str, targets: list[float]
) -> None:
    """Accuracy against charged hours, one line per agent (mean over seeds) with its 95 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    raster_hours = None
    for agent, traces in traces_by_agent.items():
        horizon = max(tr.budget_seconds for tr in traces)
        grid = np.linspace(0.0, horizon, 400)
        # Step curve: accuracy holds its value until the next measurement; before the first
        # point (initial design) it is undefined.
        curves = np.stack([_step_values(tr.seconds, tr.r2, grid) for tr in traces])
        with warnings.catch_warnings():  # before the initial design every value is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
        line = ax.plot(
            grid / 3600, mean, label=agent, lw=1.6, ls="--" if "privileged" in agent else "-"
        )[0]
        if len(traces) > 1:
            from scipy import stats

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                spread = np.nanstd(curves, axis=0, ddof=1)
            half = stats.t.ppf(0.975, len(traces) - 1) * spread / np.sqrt(len(traces))
            ax.fill_between(
                grid / 3600, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0
            )
        raster_hours = traces[0].raster_seconds / 3600
    for t in targets:
        ax.axhline(t, color="grey", lw=0.8, ls=":")
    if raster_hours is not None:
        ax.axvline(raster_hours, color="black", lw=0.8, ls=":", label="full raster time")
    ax.set_xlabel("charged time (h): instrument + algorithm")
    ax.set_ylabel("R$^2$ against the measured tensor")
    ax.set_ylim(max(-0.1, ax.get_ylim()[0]), 1.0)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _step_values(seconds: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(seconds, grid, side="right") - 1
    out = values[np.clip(idx, 0, None)].astype(float)
    out[idx < 0] = np.nan
    return out


def plot_reconstructions(
    path: Path, traces_by_agent: dict[str, list[Trace]], truth_map: np.ndarray | None
) -> None:
    """For each agent (first seed): blocks measured per pixel and the final reconstructed map,
    next to the reference map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = list(traces_by_agent)
    fig, axes = plt.subplots(
        2, len(agents) + 1, figsize=(2.6 * (len(agents) + 1), 5.4), dpi=100, squeeze=False
    )
    first = [traces_by_agent[a][0] for a in agents]
    maps = [tr.final_map for tr in first if tr.final_map is not None]
    reference = truth_map if truth_map is not None else maps[0]
    vmin, vmax = np.nanpercentile(reference, [1, 99])
    axes[0, 0].imshow(reference, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    axes[0, 0].set_title("reference", fontsize=9)
    axes[1, 0].axis("off")
    for col, (agent, tr) in enumerate(zip(agents, first, strict=True), start=1):
        axes[0, col].imshow(tr.final_map, cmap="RdBu_r", vmin=vmin, vmax=vmax)
        axes[0, col].set_title(f"{agent}\nR$^2$={tr.r2[-1]:.3f}", fontsize=8)
        axes[1, col].imshow(tr.measured_map, cmap="viridis")
        axes[1, col].set_title("blocks measured", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
