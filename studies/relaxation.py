"""How much of the twin's signal is relaxation, and whether a full raster can recover it.

``python -m studies.relaxation --seeds 2`` generates the default twin and the twin with the
:data:`envs.data.twin.RELAXATION_RICH` settings, and prints per seed:

- the *relaxation share*: the spatial variance of the truth's relaxation part (each curve minus
  its time mean, :func:`reconstruct.metrics.relaxation_part`) over the spatial variance of the
  truth itself, i.e. how much of what a map shows is the relaxation;
- the dynamics R^2 (:func:`reconstruct.metrics.dynamics_r2`) of the full raster's measured
  curves against the truth, and of a reconstruction given every block (``--reconstructor``),
  against the truth: whether measuring everything recovers the relaxation at all.

Pixels the instrument lost (NaN) are left out. Results go to ``--out`` as JSON when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from envs.data.twin import RELAXATION_RICH, twin_dataset
from reconstruct.base import BlockLayout
from reconstruct.metrics import dynamics_r2, relaxation_part
from reconstruct.registry import make_reconstructor

SETTINGS = {"default": {}, "relaxation-rich": RELAXATION_RICH}


def relaxation_share(truth: np.ndarray) -> float:
    """Spatial variance of the relaxation part over the spatial variance of the tensor."""
    values = torch.as_tensor(truth, dtype=torch.float64)

    def spatial_variance(x: torch.Tensor) -> float:
        return float(((x - x.mean(dim=(0, 1), keepdim=True)) ** 2).sum())

    return spatial_variance(relaxation_part(values)) / spatial_variance(values)


def full_raster_reconstruction(data: np.ndarray, reconstructor: str, n_blocks: int) -> np.ndarray:
    """The reconstruction after every block of every usable pixel was measured."""
    layout = BlockLayout(data.shape[2], n_blocks)
    recon = make_reconstructor(reconstructor, data.shape[:2], data.shape[2:], layout, device="cpu")
    blocks = layout.to_blocks(torch.from_numpy(data)).numpy()  # (P, n_blocks, F_b)
    usable = np.flatnonzero(np.isfinite(blocks).all(axis=(1, 2)))
    pixels = np.repeat(usable, n_blocks)
    block_ids = np.tile(np.arange(n_blocks), usable.size)
    recon.add_many(pixels.tolist(), block_ids.tolist(), blocks[pixels, block_ids])
    return recon.estimate().detach().cpu().numpy()


def measure(seed: int, setting: str, grid: int, reconstructor: str, n_blocks: int) -> dict:
    dataset = twin_dataset(seed, grid=(grid, grid), **SETTINGS[setting])
    lost = ~np.isfinite(dataset.data)
    truth = np.where(lost, np.nan, dataset.truth)  # a lost pixel is scored nowhere
    estimate = full_raster_reconstruction(dataset.data, reconstructor, n_blocks)
    return {
        "setting": setting,
        "seed": seed,
        "relaxation_share": relaxation_share(dataset.truth),
        "raw_dynamics_r2_truth": dynamics_r2(truth, np.where(lost, 0.0, dataset.data)),
        "reconstruction_dynamics_r2_truth": dynamics_r2(truth, estimate),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.relaxation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=2, help="twin seeds 0, 1, ...")
    parser.add_argument("--grid", type=int, default=60, help="twin grid, pixels a side")
    parser.add_argument("--reconstructor", default="gp", help="reconstructor of the full raster")
    parser.add_argument("--blocks", type=int, default=4, help="voltage blocks")
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.grid < 4:
        print("error: --seeds must be >= 1 and --grid >= 4", file=sys.stderr)
        return 2
    rows = [
        measure(seed, setting, args.grid, args.reconstructor, args.blocks)
        for setting in SETTINGS
        for seed in range(args.seeds)
    ]
    print(f"{'setting':<16} {'seed':>4} {'relaxation share':>17} {'raw dyn R2':>11} "
          f"{'reconstructed dyn R2':>21}")  # fmt: skip
    for row in rows:
        raw, rebuilt = row["raw_dynamics_r2_truth"], row["reconstruction_dynamics_r2_truth"]
        print(
            f"{row['setting']:<16} {row['seed']:>4} {row['relaxation_share']:>17.4f} "
            f"{raw:>11.3f} {rebuilt:>21.3f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
