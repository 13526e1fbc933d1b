"""Reconstruction benchmark: update and refit times, accuracy, and growth with grid size.

Run ``python -m benchmarks.reconstruction --out bench.json``. On the (60, 60, 16, 128) twin, for
each reconstructor and for 10, 20 and 40 % of pixels measured with full spectra, it reports the
median time of an incremental update (one pixel with its full spectrum; one block at one pixel),
of the fast R^2 right after a one-block update, and of a full refit (basis and hyperparameters
included; warm-started from the previous hyperparameters as in use, and cold: the full grid
search), with the R^2 reached against the measured tensor and the noise-free truth. It then
measures how the spatial GP's update time and memory grow with the grid (60^2, 120^2, 240^2),
what the tiled approximation costs in accuracy against the exact GP at 120^2, and compares two
models of partial spectra.

``--refits`` runs only the refit benchmark (:func:`bench_refits`): in the state an acquisition
episode is in at 10, 20 and 40 % of all blocks measured, the blocking refit, the longest and
99th-percentile step of a deferred refit, its install step and how long that waited for the
refit's thread, and the per-measurement update, in milliseconds and as ratios to a yardstick
timed in the same run.
Everything runs on one thread (``torch.set_num_threads(1)``): the one-core numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reconstruct.base import BlockLayout
from reconstruct.gp import GPHyperparameters, SpatialGP, TiledSpatialGP, grid_coords
from reconstruct.lowrank import LowRankCompletion, LowRankGP
from reconstruct.metrics import r2_score
from reconstruct.scoring import ReferenceScorer


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def bench_reconstructor(
    cls: type[LowRankGP], data: np.ndarray, truth: np.ndarray, order: np.ndarray,
    fraction: float, layout: BlockLayout, shape: tuple[int, int], spectral: tuple[int, ...],
    repeats: int,
) -> dict[str, float]:
    """Times and accuracy of one reconstructor at one fraction of pixels measured."""
    n_pixels = shape[0] * shape[1]
    n_fill = int(fraction * n_pixels)
    nb = layout.n_blocks
    rec = cls(shape, spectral, layout, device="cpu", refit_growth=1e9)  # refits only when asked
    for p in order[:n_fill]:
        rec.add_many([int(p)] * nb, range(nb), data[p])
    refit_ms = _median_ms(rec.refit, repeats=5)  # as in use: warm-started hyperparameters

    def cold_refit() -> None:
        rec._fitted_hyper = None  # the full grid search of the hyperparameters
        rec.refit()

    refit_cold_ms = _median_ms(cold_refit, repeats=5)
    reference = torch.as_tensor(data)
    scorer = ReferenceScorer(reference)
    scorer.score(rec)  # makes the reference's terms once, as the environment does
    queue = iter(order[n_fill:])

    def add_pixel() -> None:
        p = int(next(queue))
        rec.add_many([p] * nb, range(nb), data[p])

    def add_block() -> None:
        p = int(next(queue))
        rec.add(p, 0, data[p, 0])

    pixel_ms = _median_ms(add_pixel, repeats)
    block_ms = _median_ms(add_block, repeats)
    r2_times = []  # R^2 right after a one-block update, as in an environment step
    for _ in range(repeats):
        add_block()
        r2_times.append(_median_ms(lambda: scorer.score(rec), 1))
    r2_ms = float(np.median(r2_times))
    estimate = rec.estimate_blocks()
    return {
        "fraction": fraction,
        "update_full_pixel_ms": pixel_ms,
        "update_one_block_ms": block_ms,
        "fast_r2_ms": r2_ms,
        "refit_ms": refit_ms,
        "refit_cold_ms": refit_cold_ms,
        "k": rec.basis.k if rec.basis is not None else 0,
        "lengthscale": rec.hyper.lengthscale,
        "white": rec.hyper.white,
        "r2_data": r2_score(reference, estimate),
        "r2_truth": r2_score(torch.as_tensor(truth), estimate),
    }


def _yardstick_ms(repeats: int = 7) -> float:
    """Median time of one 1024 x 1024 float64 matrix product: the machine's speed in the same
    run, so that ratios to it compare across machines and loads."""
    a = torch.randn(1024, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return _median_ms(lambda: a @ a, repeats)


def _episode_state(
    rec: LowRankGP, data: np.ndarray, fraction: float, stride: int, order: np.ndarray
) -> list[tuple[int, int]]:
    """Fill ``rec`` as an acquisition episode does: every block of the pixels on a grid of
    ``stride`` (the environment's initial design), then single (pixel, block) measurements in
    the seeded ``order`` until ``fraction`` of all blocks are measured. Returns the remaining
    (pixel, block) pairs in order."""
    shape = rec.spatial_shape
    nb = rec.n_blocks
    usable = np.isfinite(data).all(axis=2)  # (P, nb): lost blocks cannot be measured
    grid = [i * shape[1] + j for i in range(stride // 2, shape[0], stride)
            for j in range(stride // 2, shape[1], stride) if usable[i * shape[1] + j].all()]
    rec.add_many([p for p in grid for _ in range(nb)], [b for _ in grid for b in range(nb)],
                 [data[p, b] for p in grid for b in range(nb)])
    target = int(fraction * rec.n_pixels * nb)
    pairs = [divmod(int(a), nb) for a in order if usable.reshape(-1)[a]]
    pairs = [(p, b) for p, b in pairs if not rec.measured[p, b]]
    for i, (p, b) in enumerate(pairs):
        if rec.n_measured >= target:
            return pairs[i:]
        rec.add(p, b, data[p, b])
    return []


def bench_refits(
    data: np.ndarray, layout: BlockLayout, shape: tuple[int, int], spectral: tuple[int, ...],
    fractions: tuple[float, ...] = (0.1, 0.2, 0.4), lag: float = 0.2, repeats: int = 20,
    seed: int = 0, stride: int = 6,
) -> dict[str, Any]:
    """Refit and update times of :class:`LowRankGP` in an episode's state, one thread.

    At each fraction of blocks measured: ``refit_ms``, a blocking refit with the R^2 after it
    (median of 3; hyperparameters warm-started as in use); ``update_ms``, the median step of
    one block plus the R^2 (the per-measurement update); then a deferred refit is made due and
    installed ``ceil(lag * n)`` steps later: ``deferred_max_step_ms`` is the longest of those
    steps and ``deferred_p99_step_ms`` their 99th percentile, ``deferred_install_step_ms`` the
    one that installs it (its wait included), ``deferred_install_wait_ms`` how long that step
    waited for the refit's thread (inside :meth:`_DeferredRefit.finish`, before bringing in
    the ``deferred_install_caught_up`` arrivals the thread had not reached), with
    ``deferred_median_step_ms`` beside them (the refit's thread shares the CPU meanwhile).
    Ratios divide by ``yardstick_ms`` (:func:`_yardstick_ms`), timed in the same run."""
    order = np.random.default_rng(seed).permutation(shape[0] * shape[1] * layout.n_blocks)
    reference = torch.as_tensor(data)
    yardstick = _yardstick_ms()
    rows = []
    for fraction in fractions:
        rec = LowRankGP(shape, spectral, layout, device="cpu", refit_mode="blocking",
                        refit_lag=lag, seed=seed)
        pairs = iter(_episode_state(rec, data, fraction, stride, order))
        measured, observed = rec.n_measured, int(rec.measured.any(1).sum())
        rec.refit()
        scorer = ReferenceScorer(reference)
        scorer.score(rec)  # the reference's terms, made once per episode

        def refit(rec: LowRankGP = rec, scorer: ReferenceScorer = scorer) -> None:
            rec.refit()
            scorer.score(rec)

        refit_ms = _median_ms(refit, 3)

        def step(
            rec: LowRankGP = rec, pairs: Any = pairs, scorer: ReferenceScorer = scorer
        ) -> None:
            p, b = next(pairs)
            rec.add(p, b, data[p, b])
            scorer.score(rec)

        update_ms = _median_ms(step, repeats)
        rec.refit_mode, rec.refit_growth = "deferred", 1.0  # the next measurement starts one
        rec._n_at_refit = rec.n_measured
        step()
        assert rec._pending is not None
        rec.refit_growth = 1.5
        pending = rec._pending
        times = []
        while rec._pending is not None:
            times.append(_median_ms(step, 1))
        row = {
            "fraction": fraction, "measured": measured, "observed_pixels": observed,
            "refit_ms": refit_ms, "update_ms": update_ms,
            "deferred_steps": len(times),
            "deferred_max_step_ms": max(times),
            "deferred_p99_step_ms": float(np.percentile(times, 99)),
            "deferred_install_step_ms": times[-1],
            "deferred_install_wait_ms": pending.waited_s * 1e3,
            "deferred_install_caught_up": pending.caught_up,
            "deferred_median_step_ms": float(np.median(times)),
        }
        row.update({f"{key[:-3]}_ratio": row[key] / yardstick for key in list(row)
                    if key.endswith("_ms")})
        rows.append(row)
        print(f"  {fraction:4.0%} ({row['measured']} blocks, {row['observed_pixels']} pixels): "
              f"refit {refit_ms:.0f} ms, update {update_ms:.2f} ms, deferred "
              f"({len(times)} steps): longest step {row['deferred_max_step_ms']:.1f} ms, p99 "
              f"{row['deferred_p99_step_ms']:.1f} ms, install step "
              f"{row['deferred_install_step_ms']:.1f} ms (waited "
              f"{row['deferred_install_wait_ms']:.2f} ms for the thread, brought in "
              f"{pending.caught_up} arrivals), median step "
              f"{row['deferred_median_step_ms']:.2f} ms (yardstick {yardstick:.1f} ms)")
    return {"yardstick": "1024 x 1024 float64 matmul", "yardstick_ms": yardstick, "lag": lag,
            "rows": rows}


def bench_grid_sizes(sizes: list[int], fraction: float, repeats: int, k: int = 8) -> list[dict]:
    """Spatial-GP update time and factor memory at ``fraction`` observed, per grid side."""
    rows = []
    hyper = GPHyperparameters(3.0, 0.3)
    for side in sizes:
        rng = np.random.default_rng(side)
        n_pixels = side * side
        n_obs = int(fraction * n_pixels)
        pixels = rng.choice(n_pixels, n_obs + repeats, replace=False)
        values = rng.normal(size=(n_obs + repeats, k))
        gp: SpatialGP | TiledSpatialGP
        gp = SpatialGP(grid_coords((side, side)), k, hyper, device="cpu") if side <= 64 else (
            TiledSpatialGP((side, side), k, hyper, device="cpu")
        )
        start = time.perf_counter()
        gp.rebuild(pixels[:n_obs], values[:n_obs], 0.05)
        rebuild_s = time.perf_counter() - start
        pending = iter(zip(pixels[n_obs:].tolist(), values[n_obs:], strict=True))
        add_ms = _median_ms(lambda gp=gp, pending=pending: gp.add(*next(pending), 0.05), repeats)
        tiles = gp.tiles if isinstance(gp, TiledSpatialGP) else [gp]
        factor_mb = sum(t._at.element_size() * t._at.numel() for t in tiles) / 2**20
        rows.append({
            "side": side, "model": type(gp).__name__, "observations": n_obs,
            "update_ms": add_ms, "rebuild_s": rebuild_s, "factor_MiB": factor_mb,
        })
        print(f"  grid {side}^2 ({type(gp).__name__}): update {add_ms:.2f} ms, "
              f"rebuild {rebuild_s:.2f} s, factor {factor_mb:.0f} MiB")
    return rows


def tiled_vs_exact(side: int, fraction: float, k: int = 4) -> dict[str, float]:
    """Accuracy the tiled approximation costs against the exact GP on a ``side^2`` grid."""
    rng = np.random.default_rng(0)
    hyper = GPHyperparameters(3.0, 0.3)
    n_pixels = side * side
    pixels = rng.choice(n_pixels, int(fraction * n_pixels), replace=False)
    values = rng.normal(size=(pixels.size, k))
    exact = SpatialGP(grid_coords((side, side)), k, hyper, device="cpu")
    exact.rebuild(pixels, values, 0.05)
    tiled = TiledSpatialGP((side, side), k, hyper, device="cpu")
    tiled.rebuild(pixels, values, 0.05)
    diff = tiled.mean - exact.mean
    return {
        "side": side,
        "mean_max_abs_diff": float(diff.abs().max()),
        "mean_rms_diff_over_rms": float(
            diff.pow(2).mean().sqrt() / exact.mean.pow(2).mean().sqrt()
        ),
        "variance_max_abs_diff": float((tiled.variance - exact.variance).abs().max()),
    }


def compare_partial_models(
    data: np.ndarray, order: np.ndarray, layout: BlockLayout, shape: tuple[int, int],
    spectral: tuple[int, ...], full_fraction: float = 0.05, seed: int = 0,
) -> dict[str, float]:
    """Low-rank GP vs independent per-block GPs sharing its kernel, on ``full_fraction`` fully
    measured pixels plus one random block at every other usable pixel."""
    rng = np.random.default_rng(seed)
    nb = layout.n_blocks
    n_full = int(full_fraction * shape[0] * shape[1])
    rec = LowRankGP(shape, spectral, layout, device="cpu")
    measured = np.zeros((data.shape[0], nb), dtype=bool)
    for p in order[:n_full]:
        rec.add_many([int(p)] * nb, range(nb), data[p])
        measured[p] = True
    for p in order[n_full:]:
        b = int(rng.integers(nb))
        rec.add(int(p), b, data[p, b])
        measured[p, b] = True
    rec.refit()
    reference = torch.as_tensor(data)
    per_block = np.empty_like(data, dtype=np.float64)
    for b in range(nb):
        pix = np.nonzero(measured[:, b])[0]
        vals = data[pix, b].astype(np.float64)
        gp = SpatialGP(grid_coords(shape), data.shape[2], rec.hyper,
                       prior_mean=vals.mean(0), device="cpu")
        gp.rebuild(pix, vals, 1e-4)
        per_block[:, b] = gp.mean.numpy()
    per_block[measured] = data[measured]
    return {
        "full_fraction": full_fraction,
        "lowrank_gp_r2": r2_score(reference, rec.estimate_blocks()),
        "per_block_gp_r2": r2_score(reference, torch.as_tensor(per_block)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--seed", type=int, default=0, help="twin seed and sampling seed")
    parser.add_argument("--blocks", type=int, default=4, help="voltage blocks per spectrum")
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per median")
    parser.add_argument("--sizes", default="60,120,240", help="grid sides for the scaling run")
    parser.add_argument("--skip-scaling", action="store_true", help="only the 60^2 twin runs")
    parser.add_argument("--refits", action="store_true",
                        help="only the refit benchmark (blocking, deferred, update)")
    parser.add_argument("--lag", type=float, default=0.2, help="refit_lag of deferred refits")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from envs.data.twin import make_twin  # reconstruct never imports envs at module level

    dataset = make_twin(args.seed).dataset
    shape, spectral = dataset.data.shape[:2], dataset.data.shape[2:]
    layout = BlockLayout(spectral[0], args.blocks)
    data = np.asarray(layout.to_blocks(dataset.data), dtype=np.float32)
    truth = np.asarray(layout.to_blocks(dataset.truth), dtype=np.float32)
    usable = np.nonzero(np.isfinite(data).all(axis=(1, 2)))[0]  # lost pixels cannot be measured
    order = np.random.default_rng(args.seed).permutation(usable)
    # NaN pixels of the measured tensor are ignored by R^2; the model never sees them.
    results: dict[str, Any] = {"shape": [*shape, *spectral], "blocks": args.blocks, "runs": []}
    if args.refits:
        results["refits"] = bench_refits(data, layout, shape, spectral, lag=args.lag,
                                         repeats=args.repeats, seed=args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        return results
    for cls in (LowRankGP, LowRankCompletion):
        for fraction in (0.1, 0.2, 0.4):
            row = {"reconstructor": cls.name, **bench_reconstructor(
                cls, data, truth, order, fraction, layout, shape, spectral, args.repeats)}
            results["runs"].append(row)
            print(f"{cls.name:8s} {fraction:4.0%}: pixel {row['update_full_pixel_ms']:.2f} ms, "
                  f"block {row['update_one_block_ms']:.2f} ms, r2 {row['fast_r2_ms']:.2f} ms, "
                  f"refit {row['refit_ms']:.0f} ms (cold {row['refit_cold_ms']:.0f} ms), "
                  f"R^2 data {row['r2_data']:.3f} truth {row['r2_truth']:.3f} (k={row['k']})")
    results["partial_spectra"] = compare_partial_models(data, order, layout, shape, spectral)
    print("partial spectra:", results["partial_spectra"])
    if not args.skip_scaling:
        sizes = [int(s) for s in args.sizes.split(",")]
        results["scaling"] = bench_grid_sizes(sizes, 0.2, args.repeats)
        results["tiled_vs_exact"] = tiled_vs_exact(120, 0.2)
        print("tiled vs exact:", results["tiled_vs_exact"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
