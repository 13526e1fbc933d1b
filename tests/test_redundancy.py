"""Tests for the redundancy study (studies.redundancy) on tiny tensors."""

import json

import numpy as np
import pytest

from studies.redundancy import (
    RedundancyStudy,
    Trial,
    axis_interpolation_weights,
    format_table,
    interpolate_along_axis,
    main,
    write_outputs,
)

FAST = ("mean", "nearest", "linear")


def tiny_field(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(data, truth) of shape (10, 9, 4, 6): a smooth rank-2 field plus 1 % noise."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(10), np.arange(9), indexing="ij")
    maps = np.stack([np.sin(i / 3) + np.cos(j / 4), np.cos(i / 5 - j / 3)], axis=-1)
    t = np.linspace(0, 1, 6)
    spectra = np.stack(
        [np.outer([1, -1, 2, -2], np.exp(-3 * t)), np.outer([0.5, 1, -0.5, 1], 1 - t)]
    )
    truth = np.einsum("xyk,kvt->xyvt", maps, spectra)
    data = truth + 0.01 * np.ptp(truth) * rng.normal(size=truth.shape)
    data[3, 4] = np.nan  # one unreadable pixel
    return data.astype(np.float32), truth.astype(np.float32)


def test_axis_weights_interpolate_and_hold_ends() -> None:
    w = axis_interpolation_weights(7, np.array([1, 3, 5]))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w @ np.array([10.0, 30.0, 50.0]), [10, 10, 20, 30, 40, 50, 50])
    np.testing.assert_allclose(axis_interpolation_weights(4, np.array([2])), np.ones((4, 1)))
    with pytest.raises(ValueError, match="sorted, unique"):
        axis_interpolation_weights(4, np.array([2, 1]))


def test_interpolate_along_axis_is_exact_for_linear_profiles() -> None:
    ramp = np.arange(8.0)[None, None, None, :] * np.ones((3, 2, 4, 1))
    rebuilt = interpolate_along_axis(ramp, 3, np.array([0, 3, 7]))
    np.testing.assert_allclose(rebuilt, ramp)
    with_nan = ramp.copy()
    with_nan[0, 0, 0, 3] = np.nan
    assert np.isfinite(interpolate_along_axis(with_nan, 3, np.array([0, 3, 7]))).all()


@pytest.fixture(scope="module")
def study() -> RedundancyStudy:
    data, truth = tiny_field()
    run = RedundancyStudy(
        data,
        truth,
        reconstructors=FAST,
        combined_reconstructors=FAST,
        fractions=(0.25, 0.5, 0.75),
        seed=3,
        device="cpu",
    )
    run.run(progress=False)
    return run


def test_study_covers_every_experiment_with_sane_scores(study: RedundancyStudy) -> None:
    experiments = {t.experiment for t in study.trials}
    assert experiments == {
        "pixels",
        "voltages_random",
        "voltages_regular",
        "time_truncation",
        "time_subsampling",
        "combined",
    }
    for t in study.trials:
        assert 0 < t.fraction_kept < 1
        assert np.isfinite(t.r2_measured) and t.r2_measured <= 1
        assert t.r2_truth is not None and t.r2_truth <= 1
    pixels = {
        (t.reconstructor, round(t.fraction_kept, 1)): t.r2_measured
        for t in study.trials
        if t.experiment == "pixels"
    }
    assert pixels[("linear", 0.8)] > 0.95 > pixels[("mean", 0.8)]
    assert pixels[("linear", 0.8)] > pixels[("linear", 0.2)]
    # Keeping 4 of 6 evenly spread read-out times of a smooth relaxation loses little, and far
    # less than keeping the first 4.
    def best(experiment: str) -> float:
        return max(t.r2_truth for t in study.trials if t.experiment == experiment)

    assert best("time_subsampling") > max(0.9, best("time_truncation"))


def test_max_dropped_reads_the_curves() -> None:
    s = RedundancyStudy(np.zeros((4, 4, 2)) + np.arange(16.0).reshape(4, 4, 1), fractions=(0.5,))
    s.trials = [
        Trial("pixels", "linear", 0.2, 0.80, None, 0.0),
        Trial("pixels", "linear", 0.3, 0.93, None, 0.0),
        Trial("pixels", "linear", 0.5, 0.97, None, 0.0),
        Trial("pixels", "mean", 0.5, 0.10, None, 0.0),
        Trial("pixels", "nearest", 0.1, 0.95, None, 0.0),  # lucky dip below a failure
        Trial("pixels", "nearest", 0.5, 0.85, None, 0.0),
    ]
    at90 = s.max_dropped(0.90)["pixels"]
    assert at90 == {"linear": 0.7, "mean": None, "nearest": None}
    assert s.max_dropped(0.95)["pixels"]["linear"] == 0.5


def test_same_seed_same_result() -> None:
    data, truth = tiny_field()

    def scores(seed: int) -> list[float]:
        s = RedundancyStudy(data, truth, reconstructors=("nearest",), fractions=(0.3,), seed=seed,
                            device="cpu")
        return [t.r2_measured for t in s.run(progress=False)]

    assert scores(1) == scores(1)
    assert scores(1) != scores(2)


def test_outputs_are_written(study: RedundancyStudy, tmp_path) -> None:
    summary = study.summary()
    paths = write_outputs(summary, tmp_path)
    stored = json.loads((tmp_path / "redundancy.json").read_text())
    assert stored["has_truth"] and len(stored["trials"]) == len(study.trials)
    assert set(stored["max_fraction_dropped"]) == {
        "measured@0.90", "measured@0.95", "truth@0.90", "truth@0.95"
    }
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 6 and all(p.stat().st_size > 1000 for p in pngs)
    table = format_table(summary)
    assert "time_subsampling" in table and "truth@0.90" in table


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 3 axes"):
        RedundancyStudy(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fractions"):
        RedundancyStudy(np.zeros((4, 4, 2)), fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="truth shape"):
        RedundancyStudy(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))


def test_unavailable_reconstructor_is_skipped() -> None:
    s = RedundancyStudy(np.zeros((4, 4, 2)), reconstructors=("linear", "kriging"))
    assert s.reconstructors == ["linear"] and "kriging" in s.skipped


def test_command_line_on_a_file(tmp_path, capsys) -> None:
    pytest.importorskip("envs.loaders")
    data, _ = tiny_field()
    file = tmp_path / "cube.npy"
    np.save(file, data[..., 0])  # a 3-axis file: no time experiments
    out = tmp_path / "out"
    summary = main(["--data", str(file), "--out", str(out), "--reconstructors", "mean,linear",
                    "--combined-reconstructors", "linear", "--fractions", "0.5", "--quiet"])
    assert summary["combined_reconstructors"] == ["linear"]
    assert (out / "redundancy.json").is_file() and (out / "redundancy_pixels.png").is_file()
    assert not summary["has_truth"]
    assert not any(t["experiment"].startswith("time") for t in summary["trials"])
    assert "largest fraction" in capsys.readouterr().out
