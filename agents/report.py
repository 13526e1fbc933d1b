"""Tables, files and figures for an evaluation: what ``evaluate.py`` prints and writes.

Intervals are 95 % intervals of the mean over seeds (:mod:`agents.statistics`); with one seed
there is none, and the tables show the mean alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np

from agents.baselines import RasterPolicy
from agents.evaluation import AT_MOST_ONE, AgentSummary, Failure, MapSlice, Trace, target_key
from agents.statistics import bootstrap_interval

#: The challenge: save at least CHALLENGE_GAIN of the full raster's time at R^2 >= CHALLENGE_TARGET.
CHALLENGE_TARGET = 0.90
CHALLENGE_GAIN = 0.25


def summary_targets(targets: list[float]) -> list[float]:
    """The targets to summarise: those asked for and the challenge's, which the verdicts and the
    compact table always need."""
    return sorted(set(targets) | {CHALLENGE_TARGET})


def _fmt(
    triple: tuple[float, float, float], scale: float = 1.0, digits: int = 3, fixed: bool = False
) -> str:
    """``mean [low, high]``; the mean alone where there is no interval (one seed) or it has no
    width; ``-`` where the mean is undefined (a seed never reached the target). ``digits`` are
    significant digits, or decimals with ``fixed`` (AUCs: columns line up)."""
    mean, low, high = triple
    if math.isnan(mean):
        return "-"
    spec = f".{digits}{'f' if fixed else 'g'}"
    if math.isnan(low) or low == high:
        return f"{mean * scale:{spec}}"
    return f"{mean * scale:{spec}} [{low * scale:{spec}}, {high * scale:{spec}}]"


def _percent(triple: tuple[float, float, float]) -> str:
    mean, low, high = triple
    if math.isnan(mean):
        return "-"
    if math.isnan(low) or low == high:
        return f"{mean:.1%}"
    return f"{mean:.1%} [{low:.1%}, {high:.1%}]"


def _columns(rows: list[list[str]], failures: list[Failure], lead: int) -> str:
    """Rows as fixed-width columns under a rule; each failure becomes a row whose first ``lead``
    cells name it and whose error runs on past the columns (it is not a column's width)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for f in failures:
        cells = [f.data, f.agent][-lead:]
        named = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=False))
        lines.append(f"{named}  {_failure_text(f)}")
    return "\n".join(lines)


def _seeds_phrase(counts: list[int]) -> str:
    """``"1 seed"``, ``"3 seeds"``, or ``"2/3 seeds"`` where agents ran on different numbers."""
    if not counts:
        return "no seeds"
    return f"{'/'.join(map(str, counts))} seed{'' if counts == [1] else 's'}"


def _failure_text(f: Failure) -> str:
    return f"FAILED on seed {f.seed} ({f.episodes_done} episodes before it): {f.error}"


def format_table(
    summaries: list[AgentSummary], targets: list[str], failures: list[Failure] = ()
) -> str:
    """The full fixed-width table, one row per (data, agent), every statistic (``table.txt``)."""
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
    return _columns(rows, list(failures), lead=2)


def format_compact_table(summaries: list[AgentSummary], failures: list[Failure] = ()) -> str:
    """What ``evaluate.py`` prints: per dataset, each agent's AUC, the time it saves at the
    challenge target and the hours it needs to reach it, with a legend; within 100 columns for
    the usual agent names."""
    key = target_key(CHALLENGE_TARGET)
    blocks = []
    for data in dict.fromkeys([s.data for s in summaries] + [f.data for f in failures]):
        group = [s for s in summaries if s.data == data]
        heading = f"{data}, {_seeds_phrase(sorted({s.n_seeds for s in group}))}"
        if not group:
            heading = f"{data}: no agent finished its episodes"
        dynamics = any(s.checks_dynamics for s in group)
        rows = [["agent", "AUC", f"time saved at R2>={key}", f"h to R2>={key}"]]
        if dynamics:
            rows[0].append("+ dynamics kept")
        for s in group:
            if s.reached[key] < s.n_seeds:
                saved = hours = f"reached {s.reached[key]}/{s.n_seeds}"
            else:
                saved, hours = _percent(s.gain_at[key]), _fmt(s.seconds_to[key], 1 / 3600)
            row = [s.agent, _fmt(s.auc, fixed=True), saved, hours]
            if dynamics:
                row.append(_dynamics_cell(s))
            rows.append(row)
        failed = [f for f in failures if f.data == data]
        blocks.append(heading + "\n" + _columns(rows, failed, lead=1))
    legend = [
        "AUC: area under R^2 against charged time over the budget (1 at best).",
        f"time saved: 1 - (time to R^2 >= {key}) / (full raster time), algorithm time included.",
        "[low, high]: 95 % interval of the mean over seeds (seeded percentile bootstrap: it never",
        "reaches past the seeds' own values, so few seeds make it narrow; none with one seed).",
    ]
    if any(s.checks_dynamics for s in summaries):
        legend += [
            f"+ dynamics kept: time saved until, beyond R^2 >= {key}, the dynamics R^2 (the",
            "relaxation part alone) is at least the full raster's minus 0.05 (against the truth",
            "where known; agents.evaluation.DynamicsCriterion).",
        ]
    legend.append("Every statistic at every target: table.txt, results.csv.")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(legend)


def challenge_lines(summaries: list[AgentSummary], failures: list[Failure] = ()) -> list[str]:
    """A heading and one verdict per (data, agent): does it save >= 25 % of the raster time at
    R^2 >= 0.90, with the relaxation kept where the data has a time axis (the dynamics
    criterion of :mod:`agents.evaluation`), algorithm time included, judged on the lower end
    of the 95 % interval?"""
    key = target_key(CHALLENGE_TARGET)
    gain = f"{CHALLENGE_GAIN * 100:g} %"
    lines = [
        f"challenge (>= {gain} time saved at R^2 >= {key}, and with a time axis the dynamics "
        f"R^2 at least the full raster's - 0.05), algorithm time included; MET when the lower "
        f"end of the 95 % interval over seeds is >= {gain}:"
    ]
    for s in summaries:
        lines.append(f"  {s.data}, {s.agent}: {_verdict(s, key)}")
        if s.agent == RasterPolicy.name and s.reached[key] == s.n_seeds:
            # The raster agent is not the full raster: its reconstruction reaches the target
            # before the scan ends, and the episode stops there.
            lines.append(
                "    (the raster order, stopped once its reconstruction reaches the target; "
                "the full raster, 100 %, scans to the end)"
            )
    for f in failures:
        lines.append(f"  {f.data}, {f.agent}: no verdict, {_failure_text(f)}")
    return lines


def _dynamics_cell(s: AgentSummary) -> str:
    if not s.checks_dynamics:
        return "no time axis"
    if s.reached_dynamics < s.n_seeds:
        return f"reached {s.reached_dynamics}/{s.n_seeds}"
    return _percent(s.gain_with_dynamics)


def _verdict(s: AgentSummary, key: str) -> str:
    if s.checks_dynamics:
        mean, low, high = s.gain_with_dynamics
        reached = s.reached_dynamics
        what = f"R^2 >= {key} with the dynamics kept"
    else:
        mean, low, high = s.gain_at[key]
        reached = s.reached[key]
        what = f"R^2 >= {key}"
    if reached < s.n_seeds:
        return f"NOT MET, {what} reached on {reached}/{s.n_seeds} seeds in the budget"
    if s.n_seeds == 1:
        return f"UNDECIDED, saves {mean:.1%} on its one seed: no interval (use 2 or more seeds)"
    saves = f"saves {mean:.1%} [{low:.1%}, {high:.1%}] of the raster time"
    if low >= CHALLENGE_GAIN:
        return f"MET, {saves}"
    return f"NOT MET, {saves}: lower end below {CHALLENGE_GAIN * 100:g} %"


def sample_label(memory: str, programs: str) -> str:
    """What an evaluation assumed about the sample, for every table, figure and results file:
    whether its measurements met a sample with memory, and which programs the env offered."""
    if programs == "sequence":
        return "sample with memory: each pixel's blocks measured in pulse order"
    if memory == "off":
        return "ASSUMES A SAMPLE WITHOUT MEMORY (free replay: any block, in any order)"
    return "free programs on a sample with memory (revisits read other values)"


def write_results(
    out: Path, summaries: list[AgentSummary], config: dict, failures: list[Failure] = ()
) -> None:
    """``results.json`` (configuration, every statistic and every failure) and ``results.csv``
    (flat, one row per agent and dataset; a failed agent's row holds its error)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config,
        "results": [s.as_dict() for s in summaries],
        "failures": [f.as_dict() for f in failures],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    fields: list[str] = ["data", "agent"]
    rows = []
    for s in summaries:
        row: dict[str, object] = {"data": s.data, "agent": s.agent, "n_seeds": s.n_seeds}
        if "programs" in config:
            row["sample"] = sample_label(config.get("memory", "auto"), config["programs"])
        for stat in ("auc", "n_measurements", "final_r2", "final_r2_truth"):
            row.update(_triple_columns(stat, getattr(s, stat)))
        for t in s.seconds_to:
            row.update(_triple_columns(f"seconds_to_{t}", s.seconds_to[t]))
            row.update(_triple_columns(f"gain_at_{t}", s.gain_at[t]))
            row[f"reached_{t}"] = s.reached[t]
        if s.checks_dynamics:
            row.update(_triple_columns("gain_with_dynamics", s.gain_with_dynamics))
            row["reached_dynamics"] = s.reached_dynamics
            row.update(_triple_columns("final_r2_dynamics", s.final_r2_dynamics))
            row["dynamics_floor"] = s.dynamics_floor
        row["decision_seconds_median"] = s.decision_seconds_median
        row["raster_seconds"] = s.raster_seconds
        fields += [k for k in row if k not in fields]
        rows.append(row)
    for f in failures:
        rows.append({"data": f.data, "agent": f.agent, "error": _failure_text(f)})
    if failures:
        fields.append("error")
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class EpisodeWriter:
    """``episodes.csv``: one row per (data, agent, seed) with that episode's AUC, seconds to and
    gain at each target (empty where not reached), final R^2, measurements and summed decision
    seconds. Paired comparisons (the same seeds under two agents) need these, not the means.

    Each row is written and flushed as its episode ends, so a run that fails or is stopped
    later keeps every episode that finished; the episode's whole trace goes to ``traces/``
    beside the file first (:func:`trace_path`), so that a resumed run
    (:func:`finished_episodes`) summarises and draws the episodes it does not run again.
    ``append`` continues an existing file (whose columns must be these).
    """

    def __init__(self, path: Path, targets: list[float], append: bool = False):
        self.keys = [target_key(t) for t in targets]
        self.targets = list(targets)
        fields = ["data", "agent", "seed", "auc"]
        for key in self.keys:
            fields += [f"seconds_to_{key}", f"gain_at_{key}"]
        fields += ["seconds_to_dynamics", "gain_with_dynamics", "r2_dynamics", "dynamics_floor"]
        fields += ["final_r2", "n_measurements", "decision_seconds"]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.traces = path.parent / TRACES_FOLDER
        self.traces.mkdir(exist_ok=True)
        continuing = append and path.is_file() and path.stat().st_size > 0
        if continuing:
            with open(path, newline="") as file:
                header = next(csv.reader(file), [])
            if header != fields:
                raise ValueError(
                    f"{path} has other columns than this run writes ({len(header)} against "
                    f"{len(fields)}): it cannot be continued"
                )
        self._file = open(path, "a" if continuing else "w", newline="")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, fieldnames=fields)
        if not continuing:
            self._writer.writeheader()
        self._file.flush()

    def write(self, data: str, trace: Trace) -> None:
        row: dict[str, object] = {
            "data": data,
            "agent": trace.agent,
            "seed": trace.seed,
            "auc": trace.auc(),
        }
        for target, key in zip(self.targets, self.keys, strict=True):
            seconds = trace.seconds_to(target)
            row[f"seconds_to_{key}"] = "" if math.isnan(seconds) else seconds
            row[f"gain_at_{key}"] = "" if math.isnan(seconds) else trace.gain_at(target)
        with_dynamics = trace.seconds_to_dynamics
        row["seconds_to_dynamics"] = "" if math.isnan(with_dynamics) else with_dynamics
        row["gain_with_dynamics"] = "" if math.isnan(with_dynamics) else trace.gain_with_dynamics()
        for name in ("r2_dynamics", "dynamics_floor"):
            value = getattr(trace, name)
            row[name] = "" if math.isnan(value) else value
        row["final_r2"] = float(trace.r2[-1])
        row["n_measurements"] = trace.n_measurements
        row["decision_seconds"] = float(np.sum(trace.decision_seconds))
        trace.save(trace_path(self.traces, data, trace.agent, trace.seed))
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


#: The folder beside ``episodes.csv`` that holds each episode's trace.
TRACES_FOLDER = "traces"


def trace_path(folder: Path, data: str, agent: str, seed: int) -> Path:
    """Where the trace of ``agent`` on ``data`` with ``seed`` is kept: a readable file name,
    made unique by a short hash of the exact names."""
    key = f"{data}\0{agent}\0{seed}"
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{data}_{agent}_{seed}").strip("_")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return folder / f"{slug}-{digest}.npz"


def finished_episodes(path: Path) -> dict[tuple[str, str, int], Trace]:
    """The episodes a run in progress has finished: the rows of its ``episodes.csv`` (at
    ``path``) whose trace is in ``traces/``, by ``(data, agent, seed)``, as traces.

    A row without its trace, a repeated row and a last line cut short (a run killed while
    writing it) are dropped from the file, so that continuing it writes each episode once."""
    if not path.is_file():
        return {}
    written = path.read_text().splitlines(keepends=True)
    lines = written
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # cut short: its episode runs again
    reader = csv.DictReader(lines)
    fields = reader.fieldnames
    kept, traces = [], {}
    for row in reader:
        try:
            key = (row["data"], row["agent"], int(row["seed"]))
        except (KeyError, TypeError, ValueError):
            continue
        stored = trace_path(path.parent / TRACES_FOLDER, *key)
        if key in traces or not stored.is_file():
            continue
        traces[key] = Trace.load(stored)
        kept.append(row)
    if fields and len(kept) + 1 != len(written):
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        partial.replace(path)
    return traces


def _triple_columns(name: str, triple: tuple[float, float, float]) -> dict[str, float]:
    """Columns ``name``, ``name_lo``, ``name_hi`` for a (mean, low, high) statistic."""
    return dict(zip([name, f"{name}_lo", f"{name}_hi"], triple, strict=True))


def _line_styles(agents: list[str]) -> list[dict]:
    """A colour and line style per agent that stay apart for many agents: the ten tab10
    colours, then the same colours dash-dotted and dotted; privileged agents dashed."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    styles = []
    for i, agent in enumerate(agents):
        dashes = "--" if "privileged" in agent else ["-", "-.", ":"][(i // len(colours)) % 3]
        styles.append({"color": colours[i % len(colours)], "ls": dashes})
    return styles


def plot_curves(
    path: Path, traces_by_agent: dict[str, list[Trace]], title: str, targets: list[float]
) -> None:
    """Accuracy against charged hours, one line per agent (mean over seeds) with the 95 %
    interval of that mean as a band, the targets and the full raster time marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    raster_hours = None
    n_seeds = sorted({len(traces) for traces in traces_by_agent.values()})
    for (agent, traces), style in zip(
        traces_by_agent.items(), _line_styles(list(traces_by_agent)), strict=True
    ):
        horizon = max(tr.budget_seconds for tr in traces)
        grid = np.linspace(0.0, horizon, 400)
        # Step curve: accuracy holds its value until the next measurement; before the first
        # point (initial design) it is undefined.
        curves = np.stack([_step_values(tr.seconds, tr.r2, grid) for tr in traces])
        with warnings.catch_warnings():  # before the initial design every value is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
        ax.plot(grid / 3600, mean, label=agent, lw=1.6, **style)
        if len(traces) > 1:
            _, low, high = bootstrap_interval(curves, AT_MOST_ONE)
            ax.fill_between(grid / 3600, low, high, color=style["color"], alpha=0.15, lw=0)
        raster_hours = traces[0].raster_seconds / 3600
    for t in targets:
        ax.axhline(t, color="grey", lw=0.8, ls=":")
        challenge = " (challenge)" if t == CHALLENGE_TARGET else ""
        ax.annotate(
            f"target R$^2$ = {target_key(t)}{challenge}",
            (0.0, t),
            xycoords=("axes fraction", "data"),
            xytext=(4, 2),
            textcoords="offset points",
            fontsize=8,
            color="dimgrey",
        )
    if raster_hours is not None:
        ax.axvline(raster_hours, color="black", lw=0.8, ls=":", label="full raster time")
    ax.set_xlabel("charged time (h): instrument + algorithm")
    ax.set_ylabel("R$^2$ against the measured tensor")
    ax.set_ylim(max(-0.1, ax.get_ylim()[0]), 1.0)
    ax.set_title(title)
    if n_seeds[-1] > 1:
        legend_title = (
            f"mean over {_seeds_phrase(n_seeds)}\nbands: 95 % interval of the mean\n"
            "(bootstrap over seeds)"
        )
    else:
        legend_title = "one seed: no bands"
    ax.legend(
        title=legend_title,
        title_fontsize=8,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
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
    path: Path, traces_by_agent: dict[str, list[Trace]], view: MapSlice, max_columns: int = 4
) -> None:
    """For each agent (its first seed): the final reconstructed map above the blocks measured
    per pixel, next to the reference map, in rows of at most ``max_columns`` panels, with one
    colour bar for the maps and one for the blocks; the title names the slice and the seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {agent: traces[0] for agent, traces in traces_by_agent.items() if traces}
    panels = ["reference", *first]
    columns = min(max_columns, len(panels))
    bands = math.ceil(len(panels) / columns)  # each band: a row of maps over a row of blocks
    height = 2.6 * 2 * bands + 0.6  # inches: panels and the title above them
    fig = plt.figure(figsize=(2.6 * columns + 1.3, height), dpi=100)
    # A narrow last column holds the colour bars: the maps' in its upper half, the blocks' in
    # its lower half.
    grid = fig.add_gridspec(
        2 * bands,
        columns + 1,
        width_ratios=[1] * columns + [0.07],
        wspace=0.15,
        hspace=0.35,
        top=1 - 0.75 / height,
        bottom=0.1 / height,
    )
    vmin, vmax = np.nanpercentile(view.reference, [1, 99])
    map_style = {"cmap": "RdBu_r", "vmin": vmin, "vmax": vmax}
    blocks_style = {"cmap": "viridis", "vmin": 0, "vmax": view.n_blocks}
    map_image = blocks_image = None
    for i, panel in enumerate(panels):
        band, column = divmod(i, columns)
        top = fig.add_subplot(grid[2 * band, column])
        bottom = fig.add_subplot(grid[2 * band + 1, column])
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        if panel == "reference":
            map_image = top.imshow(view.reference, **map_style)
            top.set_title(f"reference ({view.reference_name})", fontsize=9)
            bottom.text(
                0.5, 0.5, "every block\nmeasured", ha="center", va="center", fontsize=9,
                transform=bottom.transAxes,
            )  # fmt: skip
            bottom.set_frame_on(False)
            continue
        trace = first[panel]
        top.imshow(trace.final_map, **map_style)
        name = textwrap.fill(panel, 32, break_on_hyphens=True)  # the usual names: one line
        top.set_title(f"{name}\nR$^2$ = {trace.r2[-1]:.3f}", fontsize=9)
        blocks_image = bottom.imshow(trace.measured_map, **blocks_style)
        bottom.set_title("blocks measured", fontsize=8)
    halves = [grid[:bands, -1], grid[bands:, -1]] if bands > 1 else [grid[0, -1], grid[1, -1]]
    fig.colorbar(map_image, cax=fig.add_subplot(halves[0]), label=view.value_label)
    if blocks_image is not None:
        bar = fig.colorbar(
            blocks_image, cax=fig.add_subplot(halves[1]), label="blocks measured per pixel"
        )
        bar.set_ticks(range(view.n_blocks + 1))
    seeds = sorted({trace.seed for trace in first.values()})
    fig.suptitle(
        f"Final reconstructions at {view.label}; seed {', '.join(map(str, seeds))}",
        fontsize=10,
        y=1 - 0.15 / height,
    )
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
