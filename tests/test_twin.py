"""Tests for the relaxation-PFM twin (envs.data.twin) and the realism statistics (studies.realism).

The realism tests run on the default 60 x 60 twin with the thresholds of the project's
foundation issue; the statistics themselves are first checked on fields whose answers are known.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import lfilter

from envs.data.dataset import DataError, Dataset
from envs.data.twin import (
    A_DOMAIN,
    C_DOWN,
    C_UP,
    TwinConfig,
    alternating_pulses,
    make_twin,
    representative_pixels,
    twin_dataset,
)
from reconstruct.metrics import r2_score
from studies.realism import (
    autocorrelation_by_distance,
    components_for_share,
    interpolation_r2,
    map_indices,
    realism_report,
    spatial_statistics,
    spectral_variance_shares,
)

SMALL = TwinConfig(grid=(24, 24), n_times=16)


@pytest.fixture(scope="module")
def twin():
    """The default twin (seed 0), shared by the realism tests."""
    return make_twin(0)


# --------------------------------------------------------------------------- the statistics


def test_white_noise_is_spatially_uncorrelated() -> None:
    image = np.random.default_rng(1).standard_normal((60, 60))
    stats = spatial_statistics(image)
    assert stats.uncorrelated_fraction > 0.9
    assert abs(stats.lag1_autocorrelation) < 0.05


def test_smooth_field_is_correlated_over_its_length() -> None:
    image = ndimage.gaussian_filter(np.random.default_rng(2).standard_normal((80, 80)), 3.0)
    stats = spatial_statistics(image)
    assert stats.uncorrelated_fraction < 0.1
    assert stats.lag1_autocorrelation > 0.9
    assert 2.0 < stats.correlation_length_px < 15.0


def test_nugget_is_recovered_from_a_mixture() -> None:
    # A separable AR(1) field has an exponential-like autocorrelation, as domain maps do.
    rng = np.random.default_rng(3)
    rho = np.exp(-1.0 / 3.0)
    correlated = lfilter([1.0], [1.0, -rho], rng.standard_normal((140, 140)), axis=0)
    correlated = lfilter([1.0], [1.0, -rho], correlated, axis=1)[20:120, 20:120]
    correlated /= correlated.std()
    alone = spatial_statistics(correlated)
    mixed = spatial_statistics(correlated + rng.standard_normal(correlated.shape))
    assert alone.uncorrelated_fraction < 0.1
    assert mixed.uncorrelated_fraction == pytest.approx(0.5, abs=0.1)  # half the variance
    assert mixed.correlation_length_px == pytest.approx(alone.correlation_length_px, rel=0.3)
    assert 1.5 < alone.correlation_length_px < 4.0


def test_autocorrelation_ignores_missing_pixels() -> None:
    image = ndimage.gaussian_filter(np.random.default_rng(4).standard_normal((50, 50)), 2.0)
    holed = image.copy()
    holed[np.random.default_rng(5).random(image.shape) < 0.1] = np.nan
    full, partial = autocorrelation_by_distance(image, 5), autocorrelation_by_distance(holed, 5)
    assert full[0] == pytest.approx(1.0)
    np.testing.assert_allclose(partial, full, atol=0.05)


def test_spectral_shares_of_an_exact_rank_two_tensor() -> None:
    rng = np.random.default_rng(6)
    tensor = np.einsum("xyk,kvt->xyvt", rng.normal(size=(10, 12, 2)), rng.normal(size=(2, 4, 5)))
    shares = spectral_variance_shares(tensor, 4)
    assert shares[0] < 0.99
    assert shares[1] == pytest.approx(1.0, abs=1e-9)
    assert components_for_share(tensor, 0.95) <= 2
    noise = rng.normal(size=(10, 12, 4, 5))
    assert components_for_share(noise, 0.95) > 4


def test_interpolation_r2_separates_smooth_from_rough() -> None:
    rng = np.random.default_rng(7)
    smooth = ndimage.gaussian_filter(rng.standard_normal((40, 40, 3)), (4.0, 4.0, 0.0))
    rough = rng.standard_normal((40, 40, 3))
    assert interpolation_r2(smooth, 0.2, seed=0) > 0.9
    assert interpolation_r2(rough, 0.2, seed=0) < 0.1


def test_statistics_reject_bad_input() -> None:
    with pytest.raises(DataError, match="2-D map"):
        spatial_statistics(np.zeros((3, 4, 5)))
    with pytest.raises(DataError, match="constant"):
        spatial_statistics(np.ones((10, 10)))
    with pytest.raises(DataError, match=">= 3 axes"):
        spectral_variance_shares(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="fraction"):
        interpolation_r2(np.zeros((5, 5, 2)), 1.5)


# --------------------------------------------------------------------------- the twin's contract


def test_default_twin_shape_axes_and_provenance(twin) -> None:
    dataset = twin.dataset
    assert isinstance(dataset, Dataset)
    assert dataset.shape == (60, 60, 16, 128)
    assert dataset.axis_names == ["x", "y", "voltage", "time"]
    assert [a.unit for a in dataset.axes] == ["um", "um", "V", "s"]
    np.testing.assert_allclose(dataset.axis("voltage").values, alternating_pulses(16, 0.5, 8.0))
    np.testing.assert_allclose(dataset.axis("time").values, 0.002 * np.arange(1, 129))
    assert dataset.quantity == "piezoresponse" and dataset.source == "twin"
    assert dataset.attrs["seed"] == 0
    assert json.loads(json.dumps(dataset.attrs)) == dataset.attrs
    assert TwinConfig(**dataset.attrs["config"]) == TwinConfig()
    assert dataset.truth is not None and np.isfinite(dataset.truth).all()


def test_default_pulses_alternate_and_grow() -> None:
    volts = alternating_pulses(16, 0.5, 8.0)
    assert np.all(np.sign(volts[::2]) > 0) and np.all(np.sign(volts[1::2]) < 0)
    assert np.all(np.diff(np.abs(volts)) > 0)


def test_a_few_whole_pixels_are_missing(twin) -> None:
    lost = np.isnan(twin.dataset.data).all(axis=(2, 3))
    partial = np.isnan(twin.dataset.data).any(axis=(2, 3)) & ~lost
    assert lost.sum() == TwinConfig().n_nan_pixels
    assert not partial.any()


def test_hidden_parameters_lie_in_their_physical_ranges(twin) -> None:
    params = twin.params
    labels = params["domain"]
    assert set(np.unique(labels)) == {C_UP, C_DOWN, A_DOMAIN}
    assert 1.5 <= params["threshold"].min() and params["threshold"].max() <= 5.5
    assert 2.0 < np.median(params["threshold"]) < 5.0
    assert 0.01 <= params["tau"].min() and params["tau"].max() <= 0.3
    assert 0.3 <= params["beta"].min() and params["beta"].max() <= 1.0
    near_wall, far = params["wall_proximity"] > 0.5, params["wall_proximity"] < 0.05
    c_domain = labels != A_DOMAIN
    # Walls: lower threshold, more back-switching, stronger response than the domain interior.
    assert np.median(params["threshold"][near_wall]) < np.median(params["threshold"][far]) - 0.5
    assert params["back_switching"][near_wall].mean() > params["back_switching"][far].mean()
    assert np.median(params["strength"][near_wall & c_domain]) > np.median(
        params["strength"][far & c_domain]
    )
    # a-domains respond weakly.
    assert np.median(params["strength"][labels == A_DOMAIN]) < 0.5 * np.median(
        params["strength"][labels == C_UP]
    )


def test_noise_is_one_to_three_percent_of_the_signal_range(twin) -> None:
    dataset, params = twin.dataset, twin.params
    span = dataset.attrs["signal_range"]
    expected = dataset.truth * params["gain"][..., None, None] + params["offset"][..., None, None]
    residual = (dataset.data - expected)[np.isfinite(dataset.data)]
    robust_std = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    assert 0.01 <= robust_std / span <= 0.03


# --------------------------------------------------------------------------- physics


def test_responses_change_sign_between_domains(twin) -> None:
    truth, params = twin.dataset.truth, twin.params
    first_pulse = truth[:, :, 0, -1]  # +0.5 V: below every threshold
    interior = params["wall_proximity"] < 0.2
    assert np.all(first_pulse[(params["domain"] == C_UP) & interior] > 0)
    assert np.all(first_pulse[(params["domain"] == C_DOWN) & interior] < 0)


def test_pixels_switch_above_threshold_and_not_below(twin) -> None:
    truth, params = twin.dataset.truth, twin.params
    volts = twin.dataset.axis("voltage").values
    c_up = params["domain"] == C_UP
    firm = params["back_switching"] < 0.4  # most of a switch survives the relaxation
    seen_below = seen_above = 0
    strongest_so_far = np.zeros(c_up.shape)
    for k, v in enumerate(volts):
        if v >= 0:
            continue
        strongest_so_far = np.maximum(strongest_so_far, abs(v))
        below = c_up & (strongest_so_far < params["threshold_down"] - 3 * params["width"])
        above = c_up & firm & (abs(v) > params["threshold_down"] + 3 * params["width"])
        late = truth[:, :, k, -1]
        assert np.all(late[below] > 0), f"pulse {k} ({v} V) switched pixels below threshold"
        assert np.all(late[above] < 0), f"pulse {k} ({v} V) left pixels above threshold unswitched"
        seen_below += int(below.sum())
        seen_above += int(above.sum())
    assert seen_below > 100 and seen_above > 100


def test_pulse_effect_depends_on_earlier_pulses() -> None:
    gentle = (0.5, -0.5, 0.5, -0.5)
    switching = (0.5, -7.0, 0.5, -0.5)
    base = dict(grid=(24, 24), n_times=16, n_voltages=4)
    a = make_twin(2, TwinConfig(voltages=gentle, **base))
    b = make_twin(2, TwinConfig(voltages=switching, **base))
    np.testing.assert_array_equal(a.dataset.truth[:, :, 0], b.dataset.truth[:, :, 0])
    # Pulses 2 and 3 are identical in both sequences, yet the state they meet differs.
    c_up = a.params["domain"] == C_UP
    late_a, late_b = a.dataset.truth[:, :, 2, -1], b.dataset.truth[:, :, 2, -1]
    assert np.mean(late_b[c_up] < late_a[c_up] - 0.2) > 0.5


def test_relaxation_is_a_stretched_exponential(twin) -> None:
    truth, params = twin.dataset.truth, twin.params
    times = twin.dataset.axis("time").values
    switch_pulse = 5  # -3 V: switches the pixels with low thresholds
    change = truth[:, :, switch_pulse, 0] - truth[:, :, switch_pulse, -1]
    i, j = np.unravel_index(
        np.argmax(np.abs(change) * (params["back_switching"] > 0.3)), change.shape
    )
    late = times >= 0.02  # the fast electrostatic part has gone by then
    kernel = np.exp(-((times / params["tau"][i, j]) ** params["beta"][i, j]))
    observed = truth[i, j, switch_pulse, late] - truth[i, j, switch_pulse, -1]
    expected = kernel[late] - kernel[-1]
    assert np.abs(observed).max() > 0.05
    assert abs(np.corrcoef(observed, expected)[0, 1]) > 0.999  # sign: direction of switch


def test_wall_pixels_are_found(twin) -> None:
    picks = representative_pixels(twin)
    assert set(picks) == {"c-domain", "wall", "a-domain"}
    labels, proximity = twin.params["domain"], twin.params["wall_proximity"]
    assert labels[picks["c-domain"]] == C_UP and labels[picks["a-domain"]] == A_DOMAIN
    assert proximity[picks["wall"]] == proximity.max()


# --------------------------------------------------------------------------- realism thresholds


def test_truth_is_low_rank_along_the_spectral_unfolding(twin) -> None:
    shares = spectral_variance_shares(twin.dataset.truth, 8)
    assert shares[-1] >= 0.95


def test_truth_explains_the_noisy_data(twin) -> None:
    assert r2_score(twin.dataset.data, twin.dataset.truth, spatial_axes=2) >= 0.97


def test_maps_are_partly_rough_and_correlated_over_a_few_pixels(twin) -> None:
    data = twin.dataset.data
    stats = [spatial_statistics(data[:, :, k, j]) for k, j in map_indices(data.shape[2:])]
    for s in stats:
        assert 0.10 <= s.uncorrelated_fraction <= 0.60, s
    assert 2.0 <= np.median([s.correlation_length_px for s in stats]) <= 8.0
    # Real PbTiO3 switching maps keep a lag-1 autocorrelation of about 0.45: not smooth.
    assert np.median([s.lag1_autocorrelation for s in stats]) < 0.7


def test_linear_interpolation_from_a_fifth_of_pixels_is_not_enough(twin) -> None:
    assert interpolation_r2(twin.dataset.data, 0.2, seed=0) < 0.90


def test_realism_report_holds_every_statistic() -> None:
    report = realism_report(twin_dataset(1, **vars(SMALL)))
    for key in (
        "components_for_95pct",
        "share_top_8",
        "truth_explains_data",
        "lag1_autocorrelation",
        "uncorrelated_fraction",
        "correlation_length_px",
        "interp_r2_20pct",
        "interp_r2_20pct_vs_truth",
    ):
        assert key in report


# --------------------------------------------------------------------------- seeds and settings


def test_same_seed_reproduces_exactly() -> None:
    a, b = make_twin(5, SMALL), make_twin(5, SMALL)
    np.testing.assert_array_equal(a.dataset.data, b.dataset.data)  # NaNs in the same places
    np.testing.assert_array_equal(a.dataset.truth, b.dataset.truth)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_different_seeds_give_different_layouts() -> None:
    layouts = [make_twin(seed, SMALL).params["domain"] for seed in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.mean(layouts[i] != layouts[j]) > 0.05


def test_grid_and_axes_are_settings() -> None:
    config = TwinConfig(grid=(24, 30), n_voltages=8, n_times=20, read_interval_s=0.005)
    dataset = make_twin(0, config).dataset
    assert dataset.shape == (24, 30, 8, 20)
    np.testing.assert_allclose(dataset.axis("time").values[:2], [0.005, 0.010])
    assert twin_dataset(
        0, grid=(24, 30), n_voltages=8, n_times=20, read_interval_s=0.005
    ).shape == (
        24,
        30,
        8,
        20,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"grid": (2, 60)}, "grid"),
        ({"n_times": 0}, "n_times"),
        ({"voltages": (1.0, -1.0)}, "n_voltages"),
        ({"read_interval_s": 0.0}, "positive"),
        ({"tau_range_s": (0.3, 0.01)}, "tau_range_s"),
        ({"noise_level": -0.1}, "noise_level"),
        ({"n_nan_pixels": 10_000}, "n_nan_pixels"),
    ],
)
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TwinConfig(**settings)


def test_unknown_setting_and_bad_seed_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown twin setting.*valid settings"):
        twin_dataset(0, gird=(10, 10))
    with pytest.raises(ValueError, match="seed"):
        make_twin(-1, SMALL)


def test_command_line_writes_file_and_figure(tmp_path: Path) -> None:
    pytest.importorskip("envs.data.loaders")
    out, plot = tmp_path / "twin.h5", tmp_path / "twin.png"
    result = subprocess.run(
        [sys.executable, "-m", "envs.data.twin", "--seed", "3", "--grid", "24", "24"]
        + ["--out", str(out), "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0 and plot.stat().st_size > 0
    from envs.data.loaders import load_dataset

    loaded = load_dataset(out)
    expected = make_twin(3, TwinConfig(grid=(24, 24))).dataset
    np.testing.assert_array_equal(loaded.data, expected.data)


def test_the_overview_labels_every_map():
    """Every map has its scale and unit, the domains their names, the title is a sentence."""
    import matplotlib.pyplot as plt

    from envs.data.twin import DOMAIN_NAMES, overview_figure

    sample = make_twin(0, TwinConfig(grid=(12, 12), n_times=16))
    fig = overview_figure(sample)
    try:
        labels = {ax.get_ylabel() for ax in fig.axes} | {ax.get_xlabel() for ax in fig.axes}
        quantity = f"{sample.dataset.quantity} ({sample.dataset.unit})"
        assert {quantity, "V", "fraction", "ms", "dimensionless"} <= labels
        legends = [text.get_text() for ax in fig.axes if ax.get_legend()
                   for text in ax.get_legend().get_texts()]
        assert set(DOMAIN_NAMES.values()) <= set(legends)
        title = fig._suptitle.get_text()
        assert title.startswith("Synthetic relaxation-PFM twin, seed 0: 12 x 12 pixels")
    finally:
        plt.close(fig)
