"""The calibration study: known answers on a stub, runs on tiny twins, its command line."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from envs.data.sources import open_data
from reconstruct import BlockLayout, Reconstructor
from studies.calibration import (
    NamedDataset,
    calibration_stats,
    main,
    run_study,
    summarise,
    target_mark,
)

GRID = (6, 5)  # 30 pixels
LAYOUT = BlockLayout(4, 2)  # 2 blocks of 2 voltages; 3 read-outs: 6 features per block


class KnownErrorReconstructor(Reconstructor):
    """Estimate = reference + a fixed error whose size differs block by block; the reported
    variance is ``scale`` times each unmeasured block's true mean squared error."""

    name = "known-error"

    def __init__(self, reference: torch.Tensor, measured: torch.Tensor, scale: float) -> None:
        super().__init__(GRID, (4, 3), LAYOUT, device="cpu", dtype=torch.float64)
        rng = np.random.default_rng(0)
        sizes = torch.as_tensor(rng.uniform(0.1, 3.0, size=(*measured.shape, 1)))
        error = sizes * torch.as_tensor(rng.normal(size=tuple(reference.shape)))
        self.measured = measured.clone()
        keep = measured[..., None]
        self._estimate = torch.where(keep, reference, reference.nan_to_num() + error)
        variance = (self._estimate - reference).square().nanmean(-1)
        self._variance = scale * torch.where(measured, 0.0, variance)

    def reset(self) -> None:
        pass

    def add(self, pixel, block, values) -> None:
        raise NotImplementedError

    def estimate_blocks(self) -> torch.Tensor:
        return self._estimate

    def uncertainty(self) -> torch.Tensor:
        return self._variance


def _known_case(scale: float):
    """Pixels 0-9 unmeasured, 10-19 block 0 only, 20-29 complete; a truth one noise away."""
    rng = np.random.default_rng(1)
    truth = torch.as_tensor(rng.normal(size=(30, 2, 6)))
    noise = 0.1 * torch.as_tensor(rng.normal(size=(30, 2, 6)))
    reference = truth + noise
    measured = torch.zeros(30, 2, dtype=torch.bool)
    measured[10:20, 0] = True
    measured[20:] = True
    return KnownErrorReconstructor(reference, measured, scale), reference, truth, noise


def test_variance_equal_to_the_squared_error_gives_ratio_one_and_rank_one():
    stub, reference, truth, noise = _known_case(scale=1.0)
    stats = calibration_stats(stub, reference, truth)
    assert stats["empty"]["n_blocks"] == 20
    assert stats["partial"]["n_blocks"] == 10
    assert stats["unmeasured"]["n_blocks"] == 30
    for kind in ("empty", "partial", "unmeasured"):
        assert stats[kind]["ratio_data"] == pytest.approx(1.0)
        assert stats[kind]["rank_data"] == pytest.approx(1.0)
        assert target_mark(kind, 1, stats[kind]["ratio_data"], stats[kind]["rank_data"]) == "ok"
    # Measured blocks: no reported variance, no error against the data (0 / 0 is no ratio),
    # and the noise against the truth.
    measured = stats["measured"]
    assert measured["n_blocks"] == 30
    assert measured["predicted_variance"] == 0.0 and measured["mse_data"] == 0.0
    assert math.isnan(measured["ratio_data"])
    expected_noise = float(noise[stub.measured].square().mean())
    assert measured["mse_truth"] == pytest.approx(expected_noise)


def test_variance_ten_times_too_small_gives_ratio_a_tenth_and_is_outside_the_target():
    stub, reference, _, _ = _known_case(scale=0.1)
    stats = calibration_stats(stub, reference)
    for kind in ("empty", "partial", "unmeasured"):
        assert stats[kind]["ratio_data"] == pytest.approx(0.1)
        assert stats[kind]["rank_data"] == pytest.approx(1.0)  # the ranking is still right
        assert "ratio_truth" not in stats[kind]  # no truth given, none scored
    assert target_mark("empty", 20, 0.1, 1.0) == "OUT (ratio)"
    assert target_mark("unmeasured", 30, 1.0, 0.2) == "OUT (rank)"
    assert target_mark("partial", 0, math.nan, math.nan) == "-"  # nothing to judge yet
    assert target_mark("measured", 30, math.nan, math.nan) == "-"


def test_blocks_without_measured_values_are_left_out():
    stub, reference, _, _ = _known_case(scale=1.0)
    reference = reference.clone()
    reference[3] = torch.nan  # a lost pixel: both its blocks are unmeasured and unscorable
    stats = calibration_stats(stub, reference)
    assert stats["empty"]["n_blocks"] == 18
    assert stats["empty"]["ratio_data"] == pytest.approx(1.0)


def test_pooling_sums_over_datasets():
    rows = []
    for dataset, scale in (("a", 1.0), ("b", 0.1)):
        stub, reference, _, _ = _known_case(scale)
        for kind, stats in calibration_stats(stub, reference).items():
            rows.append(
                {
                    "data": "both",
                    "dataset": dataset,
                    "design": "stub",
                    "fraction_target": 0.5,
                    "fraction_measured": 0.5,
                    "kind": kind,
                    **stats,
                }
            )
    pooled = {row["kind"]: row for row in summarise(rows)}
    empty = pooled["empty"]
    assert empty["n_datasets"] == 2 and empty["n_blocks"] == 40
    assert empty["ratio_data"] == pytest.approx(0.55)  # same errors, variances 1x and 0.1x
    assert (empty["ratio_data_min"], empty["ratio_data_max"]) == pytest.approx((0.1, 1.0))
    assert empty["datasets_inside"] == 1


def _tiny_twins(n: int, grid: int = 10) -> list[NamedDataset]:
    return [
        NamedDataset(
            f"twin {grid}", f"twin:{seed}", open_data(f"twin:{seed}", grid=(grid, grid), n_times=4)
        )
        for seed in range(100_000, 100_000 + n)
    ]


def test_random_design_on_tiny_twins_is_seeded_and_covers_every_block():
    datasets = _tiny_twins(2)
    kwargs = dict(reconstructor="idw", fractions=(0.3, 0.1), seed=3, device="cpu", progress=False)
    rows = run_study(datasets, **kwargs)
    assert rows == run_study(datasets, **kwargs)
    assert [r["fraction_target"] for r in rows[::4]] == [0.1, 0.3, 0.1, 0.3]
    for row in rows:
        assert row["fraction_measured"] >= row["fraction_target"]
        assert row["design"] == "random"
    first_stage = rows[:4]
    kinds = {r["kind"]: r for r in first_stage}
    n_lost = int(np.isnan(datasets[0].value.data).all(axis=(2, 3)).sum()) * 4
    assert (
        kinds["empty"]["n_blocks"] + kinds["partial"]["n_blocks"] + kinds["measured"]["n_blocks"]
        == 100 * 4 - n_lost
    )
    assert (
        kinds["unmeasured"]["n_blocks"] == kinds["empty"]["n_blocks"] + kinds["partial"]["n_blocks"]
    )
    assert math.isfinite(kinds["empty"]["ratio_truth"])


def test_gp_on_a_tiny_twin_with_a_policy_design():
    rows = run_study(
        _tiny_twins(1),
        reconstructor="gp",
        designs=("random", "gp-uncertainty-per-second"),
        fractions=(0.3, 0.5),
        initial_stride=2,  # 25 complete pixels: the GP has its spectral basis from the start
        device="cpu",
        progress=False,
    )
    assert {r["design"] for r in rows} == {"random", "gp-uncertainty-per-second"}
    for row in rows:
        if row["kind"] in ("empty", "partial", "unmeasured") and row["n_blocks"]:
            assert row["predicted_variance"] > 0
            assert 0 < row["ratio_data"] < math.inf


def test_command_line_writes_table_json_csv_and_figure(tmp_path, capsys):
    out = tmp_path / "calibration"
    argv = ["--data", "twin", "--seeds", "2", "--grid", "8", "--n-times", "4"]
    argv += ["--reconstructor", "mean", "--fractions", "0.1,0.3", "--out", str(out), "--quiet"]
    summary = main(argv)
    printed = capsys.readouterr().out
    assert "twin 8x8" in printed and "target" in printed
    report = json.loads((out / "calibration.json").read_text())
    assert report["settings"]["seeds"] == 2
    assert len(report["rows"]) == 2 * 2 * 4  # twins x stages x kinds
    with open(out / "calibration.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["dataset"] for r in rows} == {"twin:100000", "twin:100001"}
    with open(out / "calibration_summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(summary) == 2 * 4
    assert (out / "calibration.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--data", "no/such/file.npy"], "--data"),
        (["--seeds", "0"], "--seeds"),
        (["--fractions", "0.1,1.5"], "--fractions"),
        (["--fractions", "0"], "--fractions"),
        (["--reconstructor", "nonsense"], "--reconstructor"),
        (["--designs", "nonsense"], "--designs"),
        (["--blocks", "17"], "--blocks"),  # more blocks than the twin's 16 voltages
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_option(argv, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--grid", "8", "--n-times", "4", "--out", str(tmp_path), "--quiet"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and option in message, message


def test_real_file_runs_without_a_truth(shared_data, tmp_path):
    path = shared_data / "bepfm_32x32x102.npy"
    summary = main(
        ["--data", str(path), "--blocks", "6", "--reconstructor", "idw", "--fractions", "0.05"]
        + ["--out", str(tmp_path), "--quiet"]
    )
    kinds = {row["kind"]: row for row in summary}
    assert kinds["empty"]["data"] == path.name
    assert math.isfinite(kinds["empty"]["ratio_data"]) and "ratio_truth" not in kinds["empty"]
