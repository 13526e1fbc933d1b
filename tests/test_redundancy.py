"""Tests for the redundancy study (studies.redundancy) on tiny tensors."""

import json

import numpy as np
import pytest

from reconstruct.metrics import dynamics_r2, r2_score
from studies.redundancy import (
    RedundancyStudy,
    Trial,
    axis_interpolation_weights,
    format_table,
    interpolate_along_axis,
    main,
    standardise_channels,
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
        short_read_reconstructors=("lowrank",),
        fractions=(0.25, 0.5, 0.75),
        seed=3,
        device="cpu",
        short_read_segments=(2, 3),
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
        "combined",
        "combined_short_reads",
    }
    for t in study.trials:
        assert 0 < t.fraction_kept < 1
        assert np.isfinite(t.r2_measured) and t.r2_measured <= 1
        assert t.r2_truth is not None and t.r2_truth <= 1
        assert t.dynamics_measured is not None and t.dynamics_measured <= 1
        assert t.dynamics_truth is not None and t.dynamics_truth <= 1
    pixels = {
        (t.reconstructor, round(t.fraction_kept, 1)): t.r2_measured
        for t in study.trials
        if t.experiment == "pixels"
    }
    assert pixels[("linear", 0.8)] > 0.95 > pixels[("mean", 0.8)]
    assert pixels[("linear", 0.8)] > pixels[("linear", 0.2)]


def test_time_truncation_keeps_the_instrument_time_of_its_reads(study: RedundancyStudy) -> None:
    # 20 ms pulse + r reads x 2 ms per voltage, against the whole curve's 6 reads.
    for t in study.trials:
        if t.experiment == "time_truncation":
            reads = t.setting["n_kept"]
            assert t.fraction_kept == pytest.approx((0.02 + 0.002 * reads) / (0.02 + 0.012))
            assert t.setting["fraction_of_reads"] == pytest.approx(reads / 6)


def test_short_reads_cost_what_they_read(study: RedundancyStudy) -> None:
    n_pixels, v = 10 * 9, 4
    trials = [t for t in study.trials if t.experiment == "combined_short_reads"]
    assert {t.setting["n_segments"] for t in trials} == {2, 3}
    assert {t.setting["block_size"] for t in trials} == {1, 2, 4}
    assert {t.reconstructor for t in trials} == {"lowrank"}
    for t in trials:
        reads = 6 // t.setting["n_segments"]
        assert t.setting["reads"] == reads
        n_full = round(t.setting["full_share"] * n_pixels)
        partial = t.setting["block_size"] / v * (0.02 + 0.002 * reads) / (0.02 + 0.012)
        assert t.fraction_kept == pytest.approx((n_full + (n_pixels - n_full) * partial) / n_pixels)
    # Reading whole curves at the partial pixels costs more and is the plain combined design.
    whole = [t for t in study.trials if t.experiment == "combined"]
    assert min(t.fraction_kept for t in whole) > min(t.fraction_kept for t in trials)


def test_max_dropped_reads_the_curves() -> None:
    s = RedundancyStudy(np.zeros((4, 4, 2)) + np.arange(16.0).reshape(4, 4, 1), fractions=(0.5,))
    s.trials = [
        Trial("combined", "linear", 0.1, 0.92, None, 0.0),  # designs: the cheapest passing one
        Trial("combined", "linear", 0.3, 0.85, None, 0.0),
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
    assert s.max_dropped(0.90)["combined"]["linear"] == 0.9
    # Without a time axis there is no dynamics criterion to pass.
    assert s.criterion is None and s.max_dropped(0.90, with_dynamics=True) == {}


def test_dynamics_scores_on_a_tiny_twin() -> None:
    pytest.importorskip("envs.data.twin")
    from envs.data.sources import open_data
    from envs.data.twin import RELAXATION_RICH

    twin = open_data("twin", grid=(8, 8), **RELAXATION_RICH)
    s = RedundancyStudy(twin.data, twin.truth, fractions=(0.25,), device="cpu",
                        experiments=("time_truncation",))
    trials = s.run(progress=False)
    assert len(trials) == 1
    estimate = interpolate_along_axis(twin.data, 3, np.array(trials[0].setting["kept"]))
    # The truth is scored where the data holds entries, as the dynamics criterion does.
    truth = np.where(np.isfinite(twin.data), twin.truth, np.nan)
    assert trials[0].dynamics_measured == pytest.approx(dynamics_r2(twin.data, estimate))
    assert trials[0].dynamics_truth == pytest.approx(dynamics_r2(truth, estimate))
    assert trials[0].r2_measured == pytest.approx(r2_score(twin.data, estimate, spatial_axes=2))
    criterion = s.summary()["dynamics_criterion"]
    assert criterion["reference"] == "truth"
    assert criterion["floor"] == pytest.approx(dynamics_r2(truth, twin.data) - 0.05)
    passed = s.passes(trials[0], 0.0, with_dynamics=True)
    assert passed == (trials[0].dynamics_truth >= criterion["floor"])


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
        "measured@0.90", "measured@0.95", "truth@0.90", "truth@0.95",
        "with_dynamics@0.90", "with_dynamics@0.95",
    }
    pngs = [p for p in paths if p.suffix == ".png"]
    assert [p.name for p in pngs] == ["redundancy.png"] and pngs[0].stat().st_size > 1000
    table = format_table(summary)
    assert "combined_short_reads" in table and "with_dynamics@0.90" in table


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 3 axes"):
        RedundancyStudy(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fractions"):
        RedundancyStudy(np.zeros((4, 4, 2)), fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="truth shape"):
        RedundancyStudy(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="unknown experiments"):
        RedundancyStudy(np.zeros((4, 4, 2)), experiments=("time_subsampling",))


def test_unavailable_reconstructor_is_skipped() -> None:
    s = RedundancyStudy(np.zeros((4, 4, 2)), reconstructors=("linear", "kriging"))
    assert s.reconstructors == ["linear"] and "kriging" in s.skipped


def test_command_line_on_a_file(tmp_path, capsys) -> None:
    pytest.importorskip("envs.data.loaders")
    data, _ = tiny_field()
    file = tmp_path / "cube.npy"
    np.save(file, data[..., 0])  # a 3-axis file: no time experiments
    out = tmp_path / "out"
    summary = main(["--data", str(file), "--out", str(out), "--reconstructors", "mean,linear",
                    "--combined-reconstructors", "linear", "--fractions", "0.5", "--quiet"])
    assert summary["combined_reconstructors"] == ["linear"]
    assert (out / "redundancy.json").is_file() and (out / "redundancy.png").is_file()
    assert not summary["has_truth"]
    # No time axis: no time experiments, no dynamics scores, no dynamics criterion.
    assert summary["not_run"] == ["time_truncation", "combined_short_reads"]
    assert {t["experiment"] for t in summary["trials"]} == {
        "pixels", "voltages_random", "voltages_regular", "combined"
    }
    assert all(t["dynamics_measured"] is None and t["dynamics_truth"] is None
               for t in summary["trials"])
    assert summary["dynamics_criterion"] is None
    assert not any(k.startswith("with_dynamics") for k in summary["max_fraction_dropped"])
    printed = capsys.readouterr().out
    assert "largest fraction" in printed and "no time axis" in printed


def test_twin_setting_reaches_the_twin(tmp_path, monkeypatch) -> None:
    pytest.importorskip("envs.data.twin")
    import envs.data.sources

    opened = {}
    original = envs.data.sources.open_data

    def spy(spec, **kwargs):
        opened.update(kwargs)
        return original(spec, **kwargs)

    monkeypatch.setattr(envs.data.sources, "open_data", spy)
    summary = main(["--data", "twin", "--out", str(tmp_path), "--grid", "6", "--twin-setting",
                    "relaxation-rich", "--experiments", "time_truncation", "--fractions", "0.5",
                    "--quiet"])
    assert opened == {"wall_creep": 5.0, "grid": (6, 6)}
    assert summary["twin_overrides"] == {"wall_creep": 5.0, "grid": [6, 6]}
    assert summary["shape"] == [6, 6, 16, 128]
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "cube.npy"), "--out", str(tmp_path), "--twin-setting",
              "relaxation-rich"])


def test_standardised_channels_count_alike() -> None:
    data, truth = tiny_field()
    data, truth = data[..., 0] * np.array([1e-9, 1.0, 50.0, 1.0]), truth[..., 0]
    data[..., 3] = 2.0  # constant in space: left as it is
    scaled, scaled_truth = standardise_channels(data, truth)
    np.testing.assert_allclose(np.nanstd(scaled[..., :3], axis=(0, 1)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scaled[..., 3], 2.0)
    # The truth goes on the data's scale.
    expected = truth[..., 2] / np.nanstd(data[..., 2])
    np.testing.assert_allclose(scaled_truth[..., 2], expected, rtol=1e-4, atol=1e-6)


def test_program_values_feed_what_each_pixel_reads() -> None:
    """With ``program_values`` each pixel's kept entries are what its program gives (here a
    marker: the data plus 1 at the pixel's kept voltages), and the scores stay against the
    data."""
    data, truth = tiny_field()
    programs = []

    def shifted(pixel, voltages, reads):
        programs.append((pixel, tuple(voltages), reads))
        n_reads = data.shape[3] if reads is None else reads
        return data.reshape(-1, *data.shape[2:])[pixel, voltages, :n_reads] + 1.0

    plain = RedundancyStudy(data, truth, fractions=(0.5,), device="cpu",
                            experiments=("voltages_regular", "time_truncation"))
    simulated = RedundancyStudy(data, truth, fractions=(0.5,), device="cpu",
                                experiments=("voltages_regular", "time_truncation"),
                                program_values=shifted)
    for a, b in zip(plain.run(progress=False), simulated.run(progress=False), strict=True):
        assert a.setting["kept"] == b.setting["kept"]
        assert b.r2_measured < a.r2_measured  # the marker moved what was read
    n_pixels = data.shape[0] * data.shape[1]
    voltage_programs, time_programs = programs[:n_pixels], programs[n_pixels:]
    kept = tuple(plain.trials[0].setting["kept"])
    assert voltage_programs == [(p, kept, None) for p in range(n_pixels)]
    assert time_programs == [(p, (0, 1, 2, 3), 3) for p in range(n_pixels)]
    # Interpolating the marked tensor is what the study scored.
    marked = data.copy()
    marked[:, :, list(kept)] += 1.0
    estimate = interpolate_along_axis(marked, 2, np.array(kept))
    assert simulated.trials[0].r2_measured == pytest.approx(
        r2_score(data, estimate, spatial_axes=2)
    )


def test_a_twin_with_memory_runs_each_program_from_its_as_grown_state(tmp_path) -> None:
    pytest.importorskip("envs.data.twin")
    common = ["--data", "twin", "--grid", "6", "--experiments", "voltages_regular,time_truncation",
              "--fractions", "0.5", "--quiet", "--device", "cpu"]
    remembering = main([*common, "--out", str(tmp_path / "on")])
    replayed = main([*common, "--memory", "off", "--out", str(tmp_path / "off")])
    assert remembering["sample"].startswith("with memory")
    assert replayed["sample"].startswith("without memory")
    by_experiment = {
        name: [t["r2_measured"] for s in (remembering, replayed) for t in s["trials"]
               if t["experiment"] == name]
        for name in ("voltages_regular", "time_truncation")
    }
    # Half the pulses alone read other values than the whole sequence gave at them; the whole
    # sequence read short leaves the state almost as the full reads do.
    on, off = by_experiment["voltages_regular"]
    assert on < off - 0.05
    on, off = by_experiment["time_truncation"]
    assert on == pytest.approx(off, abs=0.01)
    with pytest.raises(SystemExit):  # a file has no memory to simulate
        data, _ = tiny_field()
        np.save(tmp_path / "cube.npy", data)
        main(["--data", str(tmp_path / "cube.npy"), "--memory", "on", "--out", str(tmp_path)])


def test_a_program_map_reconstructs_each_combined_design_again(tmp_path, capsys) -> None:
    common = ["--data", "twin", "--grid", "10", "--experiments", "combined",
              "--combined-reconstructors", "mean,lowrank", "--quiet", "--device", "cpu"]
    summary = main([*common, "--program-map", "1,2", "--out", str(tmp_path / "map")])
    assert summary["program_map_seeds"] == [1, 2]
    methods = [t["reconstructor"] for t in summary["trials"]]
    assert methods.count("lowrank+map") == methods.count("lowrank") > 0
    by_design: dict = {}
    for t in summary["trials"]:
        key = (t["setting"]["full_share"], t["setting"]["block_size"])
        by_design.setdefault(key, {})[t["reconstructor"]] = t["r2_measured"]
    # The same design, its first visits' values mapped: the scores differ (the map is applied).
    assert all(d["lowrank+map"] != d["lowrank"] for d in by_design.values())
    for bad in (["--memory", "off", "--program-map", "1"],  # nothing to correct
                ["--program-map", "0"],  # the studied twin itself
                ["--program-map", "100001"],  # a held-out twin
                ["--program-map", "one"]):
        with pytest.raises(SystemExit):
            main([*common, *bad, "--out", str(tmp_path / "bad")])
    assert "training twins other than the studied one (0)" in capsys.readouterr().err


def test_a_program_map_needs_a_sample_with_memory() -> None:
    from reconstruct.program_map import ProgramMap

    data, truth = tiny_field()
    with pytest.raises(ValueError, match="needs program_values"):
        RedundancyStudy(data, truth, program_map=ProgramMap())
