"""Training curves of a ``train.py`` run from its TensorBoard logs, as one PNG.

Panels against env steps: the training episodes' return (normalised AUC, sampled actions) and the
periodic held-out evaluation's return (greedy actions), the policy's entropy, the size of each
update (approximate KL and clip fraction) and the critic's explained variance. An optional
``--reference`` draws a horizontal line on the return panel (e.g. the held-out evaluation return
of the heuristic the policy starts from).

Examples
--------
    python -m studies.ppo_curves runs/ppo/tb        # writes runs/ppo/training_curves.png
    python -m studies.ppo_curves runs/ppo/tb --reference 0.459 --title "default run" \\
        --out docs/ppo_training_curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: (panel title, [(tag, label, transform)]) for each panel.
PANELS = [
    (
        "return (normalised AUC)",
        [
            ("rollout/ep_rew_mean", "training episodes (sampled)", None),
            ("eval/mean_reward", "held-out evaluation (greedy)", None),
        ],
    ),
    ("policy entropy (nats)", [("train/entropy_loss", "entropy", np.negative)]),
    (
        "update size",
        [
            ("train/approx_kl", "approx. KL", None),
            ("train/clip_fraction", "clip fraction", None),
        ],
    ),
    ("critic", [("train/explained_variance", "explained variance", None)]),
]


def read_scalars(logdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag under ``logdir`` (all its runs, step order): ``tag -> (steps, values)``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    files = sorted(logdir.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {logdir}")
    merged: dict[str, dict[int, float]] = {}
    for run in sorted({f.parent for f in files}):
        accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                merged.setdefault(tag, {})[int(event.step)] = float(event.value)
    return {
        tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
        for tag, points in merged.items()
    }


def plot_training_curves(
    logdir: str | Path,
    out: str | Path,
    reference: float | None = None,
    reference_label: str = "heuristic start",
    title: str = "",
) -> Path:
    """Write the training-curve figure of the run logged under ``logdir`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(logdir)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (panel, series) in zip(axes.flat, PANELS, strict=True):
        for tag, label, transform in series:
            if tag not in scalars:
                continue
            steps, values = scalars[tag]
            values = transform(values) if transform is not None else values
            marker = "o" if tag.startswith("eval/") else None
            ax.plot(steps, values, label=label, marker=marker, markersize=4)
        if panel.startswith("return") and reference is not None:
            ax.axhline(reference, color="k", linestyle="--", linewidth=1, label=reference_label)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("env steps")
    fig.suptitle(title or f"PPO training curves ({Path(logdir)})")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logdir", help="a run's tb/ folder (e.g. runs/ppo/tb)")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG to write (default: training_curves.png in the run folder, beside LOGDIR)",
    )
    parser.add_argument("--reference", type=float, default=None, help="a return to draw as a line")
    parser.add_argument("--reference-label", default="heuristic start")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        out = args.out or Path(args.logdir).resolve().parent / "training_curves.png"
        path = plot_training_curves(
            args.logdir, out, args.reference, args.reference_label, args.title
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
