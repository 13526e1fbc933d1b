"""How much of a pixel's unmeasured voltage blocks can its measured block determine?

A combined pixel x voltage subsample (a few pixels in full, one voltage block everywhere else)
can only be completed as well as one block predicts the others. This module measures that limit
directly, with *oracle* regressions that know more than any reconstructor could:

``own``
    The pixel's measured block (with the instrument's noise) -> the pixel's other blocks of the
    reference, a linear map fitted on half of the pixels (thousands of full spectra, where a
    subsample has a few dozen) and scored on the other half.
``own+neighbours``
    The same, with the mean *full reference spectrum* of the pixel's 8 neighbours added as
    input: what a reconstructor could know if every neighbour had been measured in full and
    without noise, far more than a 30 %-cost design gives it.
``knn``
    The ``own+neighbours`` inputs with a 5-nearest-neighbour average instead of the linear map,
    a check that a nonlinear predictor does not find what the linear one misses.

Inputs are each pixel's blocks reduced to their leading principal components (fitted on the
training half); the linear map is ridge regression. Scores are R^2 over the predicted blocks of
the held-out pixels (sum of squares around their per-feature mean, as
:func:`reconstruct.metrics.r2_score`), and ``whole pixel``: R^2 over all blocks when the measured
block is kept as measured and the others are predicted. With a noise-free ``truth`` the targets
are the truth; otherwise the measured data. Only interior pixels whose 3 x 3 neighbourhood is
finite take part.

``python -m studies.predictability --data twin|FILE [--blocks N] [--out FILE.json]
[--twin-setting NAME=VALUE ...]`` prints one row per block.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from reconstruct.base import BlockLayout

PREDICTORS: tuple[str, ...] = ("own", "own+neighbours", "knn")


def _whitened_pca(train: np.ndarray, components: int):
    """A function mapping rows to their leading ``components`` principal scores (unit
    variance on ``train``)."""
    mean = train.mean(0)
    _, sing, vt = np.linalg.svd(train - mean, full_matrices=False)
    q = min(components, int((sing > sing[0] * 1e-8).sum()))
    scale = np.sqrt(len(train)) / sing[:q]
    return lambda rows: (rows - mean) @ vt[:q].T * scale


def _ridge(features: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge weights (with an intercept column appended to ``features`` by the caller)."""
    gram = features.T @ features + ridge * len(features) * np.eye(features.shape[1])
    return np.linalg.solve(gram, features.T @ targets)


def _r2(predicted: np.ndarray, reference: np.ndarray) -> float:
    ss = ((reference - reference.mean(0)) ** 2).sum()
    return float(1.0 - ((predicted - reference) ** 2).sum() / ss) if ss > 0 else float("nan")


def _neighbour_mean(blocks: np.ndarray) -> np.ndarray:
    """``(X - 2, Y - 2, ...)`` mean of the 8 neighbours of every interior pixel."""
    x, y = blocks.shape[:2]
    total = np.zeros_like(blocks[1:-1, 1:-1])
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                total += blocks[1 + dx : x - 1 + dx, 1 + dy : y - 1 + dy]
    return total / 8.0


def block_predictability(
    data: np.ndarray,
    truth: np.ndarray | None = None,
    layout: BlockLayout | None = None,
    *,
    components: int = 16,
    ridge: float = 1e-3,
    neighbours_knn: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Oracle predictability of each block's pixel from one measured block (module notes).

    Parameters
    ----------
    data
        ``(X, Y, V, *rest)`` measured tensor (the measured block's values come from here).
    truth
        Optional noise-free tensor of the same shape (the targets when given).
    layout
        Voltage blocks (default: the default :class:`BlockLayout` with 4 blocks).
    components
        Principal components kept of each input.
    ridge
        Ridge penalty per training pixel on the whitened inputs.
    neighbours_knn
        Neighbours averaged by the ``knn`` predictor.
    seed
        Seeds the split of the pixels into halves.

    Returns
    -------
    dict
        ``blocks``: one entry per block with the R^2 of each predictor over the other blocks
        and over the whole pixel; ``mean``: their means over blocks; ``n_train``, ``n_test``.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim < 3 or min(data.shape[:2]) < 3:
        raise ValueError(f"need (X, Y, V, ...) with X, Y >= 3, got shape {data.shape}")
    reference = data if truth is None else np.asarray(truth, dtype=np.float64)
    if reference.shape != data.shape:
        raise ValueError(f"truth shape {reference.shape} differs from data shape {data.shape}")
    layout = layout or BlockLayout(data.shape[2], 4)
    x, y = data.shape[:2]
    nb = layout.n_blocks
    if nb < 2:
        raise ValueError("need at least 2 voltage blocks")
    measured = np.asarray(layout.to_blocks(data)).reshape(x, y, nb, -1)
    target = np.asarray(layout.to_blocks(reference)).reshape(x, y, nb, -1)
    around = _neighbour_mean(target.reshape(x, y, -1))
    finite = np.isfinite(measured).all((2, 3)) & np.isfinite(target).all((2, 3))
    whole_hood = np.ones((x - 2, y - 2), dtype=bool)
    for dx in (0, 1, 2):
        for dy in (0, 1, 2):
            whole_hood &= finite[dx : x - 2 + dx, dy : y - 2 + dy]
    own = measured[1:-1, 1:-1][whole_hood]  # (n, nb, F)
    tgt = target[1:-1, 1:-1][whole_hood]
    hood = around[whole_hood]
    n = len(own)
    if n < 8:
        raise ValueError(f"only {n} interior pixels with a finite neighbourhood; need >= 8")
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[: n // 2], order[n // 2 :]
    ones = np.ones((n, 1))
    per_block = []
    for b in range(nb):
        others = [o for o in range(nb) if o != b]
        y_train = tgt[train][:, others].reshape(len(train), -1)
        y_test = tgt[test][:, others].reshape(len(test), -1)
        own_scores = _whitened_pca(own[train, b], components)(own[:, b])
        hood_scores = _whitened_pca(hood[train], components)(hood)
        inputs = {
            "own": np.concatenate([own_scores, ones], 1),
            "own+neighbours": np.concatenate([own_scores, hood_scores, ones], 1),
        }
        predictions = {
            name: feats[test] @ _ridge(feats[train], y_train, ridge)
            for name, feats in inputs.items()
        }
        joint = inputs["own+neighbours"][:, :-1]
        _, nearest = cKDTree(joint[train]).query(joint[test], neighbours_knn)
        predictions["knn"] = y_train[nearest.reshape(len(test), -1)].mean(1)
        entry: dict[str, Any] = {"block": b, "voltages": layout.voltages(b).tolist()}
        whole_ref = tgt[test].reshape(len(test), -1)
        for name, predicted in predictions.items():
            whole = tgt[test].copy()
            whole[:, b] = own[test, b]
            whole[:, others] = predicted.reshape(len(test), nb - 1, -1)
            entry[name] = {
                "other_blocks": _r2(predicted, y_test),
                "whole_pixel": _r2(whole.reshape(len(test), -1), whole_ref),
            }
        per_block.append(entry)
    mean = {
        name: {
            part: float(np.mean([e[name][part] for e in per_block]))
            for part in ("other_blocks", "whole_pixel")
        }
        for name in PREDICTORS
    }
    return {
        "blocks": per_block,
        "mean": mean,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "targets": "measured" if truth is None else "truth",
    }


def format_table(result: dict[str, Any]) -> str:
    """One row per block: R^2 over the other blocks (whole pixel in brackets) per predictor."""
    header = f"{'block':<6} {'voltages':<16} " + " ".join(f"{p:>22}" for p in PREDICTORS)
    lines = [
        f"R^2 of a pixel's other blocks (whole pixel) against the {result['targets']}, "
        f"{result['n_train']} training / {result['n_test']} test pixels",
        header,
        "-" * len(header),
    ]
    rows = [*result["blocks"], {"block": "mean", "voltages": "", **result["mean"]}]
    for entry in rows:
        cells = " ".join(
            f"{entry[p]['other_blocks']:>13.3f} ({entry[p]['whole_pixel']:.3f})" for p in PREDICTORS
        )
        volts = _short_list(entry["voltages"])
        lines.append(f"{entry['block']!s:<6} {volts:<16} {cells}")
    return "\n".join(lines)


def _short_list(values: Sequence[int]) -> str:
    """``0,1,8,9``; long lists as ``0,6,...,96 (17)``."""
    if len(values) <= 6:
        return ",".join(str(v) for v in values)
    return f"{values[0]},{values[1]},...,{values[-1]} ({len(values)})"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the result it printed."""
    parser = argparse.ArgumentParser(
        prog="python -m studies.predictability", description=__doc__
    )
    parser.add_argument("--data", default="twin", help="'twin', 'twin:SEED' or a data file")
    parser.add_argument("--blocks", type=int, default=4, help="voltage blocks per spectrum")
    parser.add_argument("--components", type=int, default=16, help="principal components per input")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--out", default="", help="optional JSON file for the result")
    parser.add_argument(
        "--twin-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a twin setting (envs.data.twin.TwinConfig), e.g. pinning_disorder=0; repeatable",
    )
    args = parser.parse_args(argv)

    from envs.data.sources import open_data  # the one place this module touches envs

    settings = {}
    for item in args.twin_setting:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--twin-setting needs NAME=VALUE, got {item!r}")
        settings[name] = json.loads(value)
    dataset = open_data(args.data, **settings)
    print(dataset.summary())
    layout = BlockLayout(dataset.data.shape[2], args.blocks)
    result = block_predictability(
        dataset.data, dataset.truth, layout, components=args.components, seed=args.seed
    )
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"data": args.data, **result}, indent=1))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
