"""Which measurement programs read the standard sequence's values on a sample that remembers.

``python -m studies.memory_programs --out memory_programs.json`` measures noise-free twins
(``--grid`` 30, seeds ``--seeds`` 3 4, the default and the relaxation-rich setting) with
:class:`envs.instruments.memory.TwinMemoryInstrument`, every pixel in raster order, and scores
each block a program reads against the standard tensor (the whole pulse sequence applied to a
pristine pixel, ``Dataset.truth``): R^2 per block with the project's convention
(:func:`reconstruct.metrics.r2_score`, pixels as the spatial axis) and the same on the
relaxation part alone (each curve minus its time mean, :func:`reconstruct.metrics.dynamics_r2`).
The programs (``n`` blocks of :class:`reconstruct.base.BlockLayout`, ``--blocks`` 2 4 8):

- ``alone spread n`` / ``alone contiguous n``: each block measured alone at a pristine pixel
  (one fresh sample per block);
- ``completed spread n`` / ``completed contiguous n``: every pixel completed block by block in
  block order, either ``in place`` (a pixel's blocks one after another, the tip staying: 0.1 s
  of settling between them) or ``in rounds`` (block 0 at every pixel, then block 1, ...: about
  an hour between two visits of a pixel);
- ``whole sequence``: all pulses in one measurement (the replay's assumption, exact by
  construction);
- ``cut 8 then rest n``: contiguous blocks in place, the first read for 8 of its reads only,
  the next in full; and ``whole sequence, 8 reads``: every pulse read for 8 reads.

With ``--relax both`` (default) every program runs with the relaxation between visits modelled
and without it (the next visit meeting the state of the last read), which measures what the
model of the wait changes. Results go to stdout as a table and to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.command_line import OneLineParser, positive_int
from envs.data.twin import RELAXATION_RICH, TwinConfig, make_twin
from envs.instruments.cost import CostModel
from envs.instruments.memory import TwinMemoryInstrument
from reconstruct.base import BlockLayout
from reconstruct.metrics import dynamics_r2, r2_score

SETTINGS: dict[str, dict[str, Any]] = {"default": {}, "relaxation-rich": RELAXATION_RICH}
#: Reads of a cut window (of 128).
CUT_READS = 8


def score(truth: np.ndarray, voltages: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """R^2 and dynamics R^2 of ``values`` ``(P, len(voltages), reads)`` against the standard
    tensor ``truth`` ``(P, V, T)`` at those voltages and reads."""
    reference = truth[:, voltages, : values.shape[2]]
    return {
        "r2": r2_score(reference, values),
        "dynamics_r2": dynamics_r2(reference, values, spatial_axes=1),
    }


def measure_program(
    instrument: TwinMemoryInstrument,
    truth: np.ndarray,
    blocks: list[np.ndarray],
    order: str,
    reads: list[int | None],
) -> list[dict[str, float]]:
    """Measure ``blocks`` (with read counts ``reads``) at every pixel from a pristine sample,
    ``order`` ``"in place"`` (pixel by pixel) or ``"in rounds"`` (block by block); score each."""
    instrument.reset_state()
    n_pixels = truth.shape[0]
    got: list[list[np.ndarray]] = [[None] * n_pixels for _ in blocks]  # type: ignore[list-item]
    visits = (
        [(p, b) for p in range(n_pixels) for b in range(len(blocks))]
        if order == "in place"
        else [(p, b) for b in range(len(blocks)) for p in range(n_pixels)]
    )
    for p, b in visits:
        got[b][p] = instrument.measure(p, blocks[b], reads[b])[0]
    return [score(truth, v, np.stack(g)) for v, g in zip(blocks, got, strict=True)]


def programs(n_blocks_list: list[int]) -> list[tuple[str, list[np.ndarray], str, list, bool]]:
    """``(name, blocks, order, reads, alone)`` of every program (see the module docstring)."""
    out: list[tuple[str, list[np.ndarray], str, list, bool]] = []
    every = np.arange(16)
    for n in n_blocks_list:
        for scheme in ("spread", "contiguous"):
            layout = BlockLayout(16, n, scheme)
            blocks = [layout.voltages(b) for b in range(n)]
            out.append((f"alone {scheme} {n}", blocks, "in place", [None] * n, True))
            for order in ("in place", "in rounds"):
                out.append((f"completed {scheme} {n} {order}", blocks, order, [None] * n, False))
    out.append(("whole sequence", [every], "in place", [None], False))
    for n in n_blocks_list:
        blocks = [BlockLayout(16, n, "contiguous").voltages(b) for b in range(n)]
        reads = [CUT_READS] + [None] * (n - 1)
        out.append((f"cut {CUT_READS} then rest {n}", blocks, "in place", reads, False))
    out.append((f"whole sequence, {CUT_READS} reads", [every], "in place", [CUT_READS], False))
    return out


def run(
    seeds: list[int], grid: int, n_blocks_list: list[int], relax_modes: list[bool]
) -> list[dict[str, Any]]:
    """One row per (setting, seed, relax, program) with the score of every block."""
    rows = []
    for setting, overrides in SETTINGS.items():
        for seed in seeds:
            start = time.perf_counter()
            sample = make_twin(seed, TwinConfig(grid=(grid, grid), **overrides))
            truth = sample.dataset.truth.reshape(grid * grid, *sample.dataset.spectral_shape)
            for relax in relax_modes:
                instrument = TwinMemoryInstrument(
                    sample, CostModel(), effects=False, relax_between_visits=relax
                )
                for name, blocks, order, reads, alone in programs(n_blocks_list):
                    if alone:  # one pristine sample per block
                        scores = [
                            measure_program(instrument, truth, [block], order, reads[:1])[0]
                            for block in blocks
                        ]
                    else:
                        scores = measure_program(instrument, truth, blocks, order, reads)
                    rows.append(
                        {
                            "setting": setting,
                            "seed": seed,
                            "relax_between_visits": relax,
                            "program": name,
                            "blocks": [b.tolist() for b in blocks],
                            "reads": [r or int(truth.shape[2]) for r in reads],
                            "r2": [s["r2"] for s in scores],
                            "dynamics_r2": [s["dynamics_r2"] for s in scores],
                        }
                    )
            print(
                f"{setting} seed {seed}: {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if f"{lo:.3f}" == f"{hi:.3f}" else f"{lo:.3f} to {hi:.3f}"


def table(rows: list[dict[str, Any]], relax: bool) -> str:
    """Per program and setting, the range over seeds of the first block's R^2 and of the later
    blocks' R^2 (every block for programs measured alone), then of the dynamics R^2."""
    lines = [
        f"relaxation between visits {'modelled' if relax else 'off'}; ranges over seeds",
        f"{'program':<34} {'setting':<16} {'R2 block 0':>16} {'R2 later blocks':>18} "
        f"{'dyn R2 block 0':>16} {'dyn R2 later':>18}",
    ]
    names = list(dict.fromkeys(r["program"] for r in rows))
    for name in names:
        for setting in SETTINGS:
            chosen = [
                r for r in rows
                if r["program"] == name and r["setting"] == setting
                and r["relax_between_visits"] == relax
            ]
            if not chosen:
                continue
            cells = []
            for key in ("r2", "dynamics_r2"):
                if name.startswith("alone"):  # every block met a pristine pixel
                    first = [v for r in chosen for v in r[key]]
                    later: list[float] = []
                else:
                    first = [r[key][0] for r in chosen]
                    later = [v for r in chosen for v in r[key][1:]]
                cells += [_range(first), _range(later)]
            lines.append(
                f"{name:<34} {setting:<16} {cells[0]:>16} {cells[1]:>18} {cells[2]:>16} "
                f"{cells[3]:>18}"
            )
    return "\n".join(lines)


def write_json(path: Path, args: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``{"args": ..., "rows": [...]}`` with one row a line (diffs stay readable)."""
    lines = ",\n".join(json.dumps(row) for row in rows)
    path.write_text(f'{{"args": {json.dumps(args)},\n"rows": [\n{lines}\n]}}\n')


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m studies.memory_programs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4], help="twin seeds (3 4)")
    parser.add_argument("--grid", type=positive_int, default=30, help="pixels a side (30)")
    parser.add_argument(
        "--blocks", type=positive_int, nargs="+", default=[2, 4, 8], help="block counts (2 4 8)"
    )
    parser.add_argument(
        "--relax",
        choices=("on", "off", "both"),
        default="both",
        help="model the relaxation between visits: on, off or both (default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.grid < 4 or any(n > 16 for n in args.blocks) or any(s < 0 for s in args.seeds):
        parser.error("need --grid >= 4, --blocks of at most 16 and seeds >= 0")
    relax_modes = {"on": [True], "off": [False], "both": [True, False]}[args.relax]
    rows = run(args.seeds, args.grid, args.blocks, relax_modes)
    for relax in relax_modes:
        print(table(rows, relax))
        print()
    if args.out is not None:
        write_json(args.out, {**vars(args), "out": str(args.out)}, rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
