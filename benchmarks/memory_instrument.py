"""What simulating the sample's memory costs: a measurement against a replay and a GP update.

Run ``python -m benchmarks.memory_instrument`` (``--help`` for options). On a 30 x 30 twin it
times, per call (median over ``--repeats``):

- :class:`envs.instruments.memory.TwinMemoryInstrument` measuring one spread block (4 of 16
  voltages, 128 reads) and one whole pixel (16 voltages), with the twin's instrument effects and
  without, at pixels drawn at random (the whole pixels are measured after the blocks, at the
  same pixels, so they meet pulsed pixels and apply the block's voltages again: fresh noise);
- :class:`envs.instruments.instrument.ReplayInstrument` measuring the same programs;
- one ``add`` of a block to the ``"gp"`` reconstructor (:class:`reconstruct.lowrank.LowRankGP`)
  with ``--fill`` of the pixels already measured in full (no refit inside the timed calls).

It prints each time and its ratio to the GP update, all measured in one run on one thread;
``--out`` writes them as JSON. Compare ratios, not absolute times, across machines.
"""

from __future__ import annotations

import os

# One thread: the env runs one step at a time per process (benchmarks/environment.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from envs.data.twin import TwinConfig, make_twin  # noqa: E402
from envs.instruments.cost import CostModel  # noqa: E402
from envs.instruments.instrument import ReplayInstrument  # noqa: E402
from envs.instruments.memory import TwinMemoryInstrument  # noqa: E402
from reconstruct.base import BlockLayout  # noqa: E402
from reconstruct.registry import make_reconstructor  # noqa: E402


def median_ms(fn: Callable[[int], object], repeats: int) -> float:
    """Median wall time of ``fn(i)`` for ``i`` in ``range(repeats)``, in milliseconds."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def run(seed: int, grid: int, n_blocks: int, fill: float, repeats: int) -> dict[str, float]:
    """Median milliseconds of each operation (see the module docstring)."""
    torch.set_num_threads(1)
    sample = make_twin(seed, TwinConfig(grid=(grid, grid)))
    dataset = sample.dataset
    n_pixels = dataset.n_pixels
    layout = BlockLayout(dataset.spectral_shape[0], n_blocks, "spread")
    block = layout.voltages(0)
    every = np.arange(dataset.spectral_shape[0])
    rng = np.random.default_rng(seed)
    pixels = rng.integers(n_pixels, size=repeats)
    cost = CostModel().for_axes(dataset.axes)

    instruments = {
        "memory, effects": TwinMemoryInstrument(sample, cost),
        "memory, noise-free": TwinMemoryInstrument(sample, cost, effects=False),
        "replay": ReplayInstrument(dataset, cost),
    }
    times: dict[str, float] = {}
    for name, instrument in instruments.items():
        for label, program in ((f"{len(block)} voltages", block), ("16 voltages", every)):
            times[f"{name}: {label}"] = median_ms(
                lambda i, inst=instrument, v=program: inst.measure(int(pixels[i]), v), repeats
            )

    # The GP with a fill of whole pixels, then one block at a time on other pixels.
    recon = make_reconstructor(
        "gp", dataset.spatial_shape, dataset.spectral_shape, layout, device="cpu",
        refit_growth=1e9,  # refits only when asked: the timed calls are updates
    )
    blocks = layout.to_blocks(torch.from_numpy(np.nan_to_num(dataset.data))).numpy()
    order = rng.permutation(n_pixels)
    n_fill = int(fill * n_pixels)
    for p in order[:n_fill]:
        recon.add_many([int(p)] * n_blocks, range(n_blocks), blocks[p])
    recon.refit()
    queue = order[n_fill:]
    n_updates = min(repeats, len(queue))
    times["gp add (one block)"] = median_ms(
        lambda i: recon.add(int(queue[i]), 0, blocks[queue[i], 0]), n_updates
    )
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="twin seed (default 0)")
    parser.add_argument("--grid", type=int, default=30, help="grid side (default 30)")
    parser.add_argument("--blocks", type=int, default=4, help="spread blocks (default 4)")
    parser.add_argument(
        "--fill", type=float, default=0.2, help="pixels measured before the GP timing (0.2)"
    )
    parser.add_argument("--repeats", type=int, default=300, help="timed calls each (300)")
    parser.add_argument("--out", type=Path, default=None, help="write the times as JSON here")
    args = parser.parse_args(argv)
    times = run(args.seed, args.grid, args.blocks, args.fill, args.repeats)
    gp = times["gp add (one block)"]
    print(f"{args.grid} x {args.grid} twin, seed {args.seed}, {args.repeats} calls each")
    print(f"{'operation':<36} {'median ms':>10} {'/ gp add':>9}")
    for name, ms in times.items():
        print(f"{name:<36} {ms:>10.3f} {ms / gp:>9.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "median_ms": times}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
