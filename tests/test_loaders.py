"""Tests for envs.data.loaders: every file layout it reads, the save/load round trip, and bad
input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import envs.data.sources
from envs.data.dataset import Axis, DataError, Dataset
from envs.data.loaders import load_dataset, save_dataset
from envs.data.sources import open_data

# ---------------------------------------------------------------------------------------------
# Fixture-file builders (small files written into pytest's tmp_path)
# ---------------------------------------------------------------------------------------------


def _tensor(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _write_nsid_channels(
    path: Path, images: dict[str, np.ndarray], units: dict[str, str] | None = None
) -> None:
    """pyNSID-like file: one group per channel, each dataset labelled and with x/y scales."""
    units = units or {}
    with h5py.File(path, "w") as h5:
        for i, (quantity, image) in enumerate(images.items()):
            group = h5.create_group(f"Measurement_000/Channel_{i}/Channel_{i}")
            ds = group.create_dataset(f"Channel_{i}", data=image)
            ds.attrs.update(quantity=quantity, units=units.get(quantity, "m"), data_type="IMAGE")
            for axis, (name, size) in enumerate(zip(("x", "y"), image.shape, strict=True)):
                scale = group.create_dataset(name, data=np.arange(size) * 1e-8)
                scale.attrs.update(units="m", dimension_type="SPATIAL")
                scale.make_scale(name)
                ds.dims[axis].attach_scale(scale)
                ds.dims[axis].label = name
            meta = group.create_group("original_metadata")
            meta.attrs.update(ScanRate=1.5, ImagingMode="PFM")


def _write_nsid_tensor(path: Path, data: np.ndarray, dims: list[tuple[str, str, str, np.ndarray]]):
    """pyNSID-like file with one N-d dataset; dims: (label, dimension_type, units, values)."""
    with h5py.File(path, "w") as h5:
        group = h5.create_group("Measurement_000/Channel_000")
        ds = group.create_dataset("BE", data=data)
        ds.attrs.update(quantity="amplitude", units="V")
        for axis, (label, kind, unit, values) in enumerate(dims):
            scale = group.create_dataset(label, data=values)
            scale.attrs.update(units=unit, dimension_type=kind)
            scale.make_scale(label)
            ds.dims[axis].attach_scale(scale)
            ds.dims[axis].label = label


def _write_h5(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    with h5py.File(path, "w") as h5:
        for name, array in arrays.items():
            ds = h5.create_dataset(name, data=array)
            for key, value in (attrs or {}).get(name, {}).items():
                ds.attrs[key] = value


# ---------------------------------------------------------------------------------------------
# .npy / .npz
# ---------------------------------------------------------------------------------------------


def test_npy_keeps_nan_and_gets_index_axes(tmp_path: Path) -> None:
    data = _tensor((4, 5, 6)).astype(np.float64)
    data[1, 2] = np.nan
    np.save(tmp_path / "a.npy", data)
    ds = load_dataset(tmp_path / "a.npy")
    assert ds.shape == (4, 5, 6)
    assert ds.data.dtype == np.float32
    assert np.isnan(ds.data[1, 2]).all() and ds.measured_mask.sum() == 4 * 5 * 6 - 6
    assert ds.axis_names == ["x", "y", "spectral_0"]
    np.testing.assert_array_equal(ds.axes[2].values, np.arange(6))
    assert ds.axes[2].unit == "index"
    assert ds.source == str(tmp_path / "a.npy") and ds.attrs["layout"] == "npy"


def test_npy_axis_names(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 2, 4)))
    ds = load_dataset(tmp_path / "a.npy", axis_names=["r", "c", "voltage", "time"])
    assert ds.axis_names == ["r", "c", "voltage", "time"]


def test_npz_single_array_and_key(tmp_path: Path) -> None:
    a, b = _tensor((3, 4, 5), 1), _tensor((3, 4, 6), 2)
    np.savez(tmp_path / "one.npz", response=a)
    np.testing.assert_array_equal(load_dataset(tmp_path / "one.npz").data, a)
    np.savez(tmp_path / "two.npz", first=a, second=b)
    ds = load_dataset(tmp_path / "two.npz", dataset_path="second")
    np.testing.assert_array_equal(ds.data, b)
    assert ds.path == "second" and ds.attrs["layout"] == "npz"


def test_npz_relaxation_vectors(tmp_path: Path) -> None:
    volts = np.linspace(-3, 3, 4)
    np.savez(tmp_path / "r.npz", response=_tensor((3, 3, 4, 5)), bias=volts)
    ds = load_dataset(tmp_path / "r.npz")
    assert ds.axis_names[2] == "voltage"
    np.testing.assert_array_equal(ds.axis("voltage").values, volts)


def test_npz_several_candidates_lists_them(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", first=_tensor((3, 4, 5)), second=_tensor((3, 4, 6)))
    with pytest.raises(DataError, match=r"2 candidate tensors.*dataset_path") as err:
        load_dataset(tmp_path / "two.npz")
    assert "first (3, 4, 5)" in str(err.value) and "second (3, 4, 6)" in str(err.value)


def test_npz_missing_key_lists_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", response=_tensor((3, 4, 5)))
    with pytest.raises(DataError, match=r"no dataset 'nope'.*\n.*response \(3, 4, 5\)"):
        load_dataset(tmp_path / "one.npz", dataset_path="nope")


# ---------------------------------------------------------------------------------------------
# HDF5: explicit path, single tensor, relaxation layout
# ---------------------------------------------------------------------------------------------


def test_h5_single_tensor_found_automatically(tmp_path: Path) -> None:
    data = _tensor((4, 4, 3, 2))
    _write_h5(tmp_path / "s.h5", {"group/cube": data}, {"group/cube": {"units": "pm", "gain": 2}})
    ds = load_dataset(tmp_path / "s.h5")
    np.testing.assert_array_equal(ds.data, data)
    assert ds.path == "/group/cube" and ds.unit == "pm"
    assert ds.attrs["h5_attrs"] == {"units": "pm", "gain": 2}
    assert ds.attrs["source_file"] == str(tmp_path / "s.h5")


def test_h5_explicit_path_among_several(tmp_path: Path) -> None:
    a, b = _tensor((3, 3, 4), 1), _tensor((3, 3, 5), 2)
    _write_h5(tmp_path / "m.h5", {"a": a, "sub/b": b})
    ds = load_dataset(tmp_path / "m.h5", dataset_path="/sub/b", axis_names=["x", "y", "f"])
    np.testing.assert_array_equal(ds.data, b)
    assert ds.axis_names == ["x", "y", "f"]
    # A group as dataset_path narrows the search to that group.
    np.testing.assert_array_equal(load_dataset(tmp_path / "m.h5", dataset_path="sub").data, b)


def test_h5_relaxation_layout_attaches_voltage_and_time(tmp_path: Path) -> None:
    volts, times = np.array([1.0, -1.5, 2.0, -2.5]), np.arange(7) * 2e-3
    data = _tensor((5, 6, 4, 7))
    _write_h5(
        tmp_path / "relax.h5",
        {"response": data, "voltage": volts, "time": times},
        {"voltage": {"units": "V"}, "time": {"units": "s"}},
    )
    ds = load_dataset(tmp_path / "relax.h5")
    assert ds.axis_names == ["x", "y", "voltage", "time"]
    np.testing.assert_array_equal(ds.axis("voltage").values, volts)
    np.testing.assert_array_equal(ds.axis("time").values, times)
    assert ds.axis("voltage").unit == "V" and ds.axis("time").unit == "s"
    assert ds.attrs["axis_sources"] == {"voltage": "/voltage", "time": "/time"}


def test_h5_relaxation_voltage_axis_moved_first(tmp_path: Path) -> None:
    """A file stored as (x, y, time, voltage) is read as (x, y, voltage, time)."""
    data = _tensor((3, 4, 7, 5))
    _write_h5(tmp_path / "tv.h5", {"resp": data, "dc_bias": np.arange(5.0), "t": np.arange(7.0)})
    ds = load_dataset(tmp_path / "tv.h5")
    assert ds.axis_names == ["x", "y", "voltage", "time"]
    np.testing.assert_array_equal(ds.data, np.transpose(data, (0, 1, 3, 2)))
    assert ds.attrs["file_axis_order"] == ["x", "y", "time", "voltage"]


def test_h5_axis_names_attach_vectors_of_that_name(tmp_path: Path) -> None:
    data = _tensor((3, 3, 4, 6))
    _write_h5(tmp_path / "n.h5", {"d": data, "pulse": np.arange(4.0) + 10, "read": np.arange(6.0)})
    ds = load_dataset(tmp_path / "n.h5", axis_names=["x", "y", "pulse", "read"])
    np.testing.assert_array_equal(ds.axis("pulse").values, np.arange(4.0) + 10)


def test_h5_voltage_vector_length_mismatch(tmp_path: Path) -> None:
    _write_h5(tmp_path / "bad.h5", {"response": _tensor((3, 3, 4, 7)), "voltage": np.arange(5.0)})
    with pytest.raises(DataError, match=r"voltage vector '/voltage' has 5 entries.*\(3, 3, 4, 7\)"):
        load_dataset(tmp_path / "bad.h5")


def test_h5_named_vector_length_mismatch(tmp_path: Path) -> None:
    _write_h5(tmp_path / "bad.h5", {"d": _tensor((3, 3, 4)), "energy": np.arange(5.0)})
    with pytest.raises(DataError, match=r"'/energy' has 5 entries but axis 2 \('energy'\)"):
        load_dataset(tmp_path / "bad.h5", axis_names=["x", "y", "energy"])


# ---------------------------------------------------------------------------------------------
# HDF5: pyNSID / sidpy layout
# ---------------------------------------------------------------------------------------------


def _three_channels(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    images = {q: _tensor((6, 5), i) for i, q in enumerate(["Height", "Amplitude", "Phase"])}
    path = tmp_path / "nsid.h5"
    _write_nsid_channels(path, images, units={"Phase": "deg"})
    return path, images


def test_nsid_channels_stack(tmp_path: Path) -> None:
    path, images = _three_channels(tmp_path)
    ds = load_dataset(path)
    assert ds.shape == (6, 5, 3)
    assert ds.axis_names == ["x", "y", "channel"]
    np.testing.assert_array_equal(ds.data[..., 2], images["Phase"])
    np.testing.assert_allclose(ds.axis("x").values, np.arange(6) * 1e-8)
    assert ds.axis("x").unit == "m"
    assert [c["quantity"] for c in ds.attrs["channels"]] == ["Height", "Amplitude", "Phase"]
    assert ds.unit == "mixed" and ds.attrs["layout"] == "nsid"
    assert ds.attrs["original_metadata"] == {"ScanRate": 1.5, "ImagingMode": "PFM"}


@pytest.mark.parametrize("channel", [1, "Amplitude", "amplitude", "Channel_1"])
def test_nsid_channel_by_index_or_name(tmp_path: Path, channel: int | str) -> None:
    path, images = _three_channels(tmp_path)
    ds = load_dataset(path, channel=channel)
    assert ds.shape == (6, 5, 1)
    np.testing.assert_array_equal(ds.data[..., 0], images["Amplitude"])
    assert ds.quantity == "Amplitude" and ds.unit == "m"
    assert ds.axis("channel").values.tolist() == [1.0]


def test_nsid_single_image_gets_channel_axis(tmp_path: Path) -> None:
    _write_nsid_channels(tmp_path / "one.h5", {"Height": _tensor((4, 7))})
    ds = load_dataset(tmp_path / "one.h5")
    assert ds.shape == (4, 7, 1) and ds.path == "/Measurement_000/Channel_0/Channel_0/Channel_0"


def test_nsid_unknown_channel_lists_channels(tmp_path: Path) -> None:
    path, _ = _three_channels(tmp_path)
    with pytest.raises(DataError, match=r"no channel named 'Topo'.*\n.*0: Channel_0 \(Height\)"):
        load_dataset(path, channel="Topo")
    with pytest.raises(DataError, match=r"channel 7 out of range.*3 channels"):
        load_dataset(path, channel=7)


def test_nsid_images_of_different_shapes_need_a_choice(tmp_path: Path) -> None:
    _write_nsid_channels(tmp_path / "mix.h5", {"Height": _tensor((4, 4)), "Phase": _tensor((4, 5))})
    with pytest.raises(DataError, match=r"2 pyNSID datasets that cannot be stacked.*channel="):
        load_dataset(tmp_path / "mix.h5")
    assert load_dataset(tmp_path / "mix.h5", channel="Phase").shape == (4, 5, 1)


def test_nsid_tensor_spatial_axes_moved_first(tmp_path: Path) -> None:
    data = _tensor((8, 4, 5))  # stored as (frequency, x, y)
    freqs = np.linspace(300e3, 320e3, 8)
    dims = [
        ("frequency", "SPECTRAL", "Hz", freqs),
        ("x", "SPATIAL", "m", np.arange(4.0)),
        ("y", "SPATIAL", "m", np.arange(5.0)),
    ]
    _write_nsid_tensor(tmp_path / "be.h5", data, dims)
    ds = load_dataset(tmp_path / "be.h5")
    assert ds.axis_names == ["x", "y", "frequency"]
    np.testing.assert_array_equal(ds.data, np.transpose(data, (1, 2, 0)))
    np.testing.assert_array_equal(ds.axis("frequency").values, freqs)
    assert ds.axis("frequency").unit == "Hz"


def test_nsid_scale_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    _write_nsid_tensor(
        path,
        _tensor((4, 5, 3)),
        [
            ("x", "SPATIAL", "m", np.arange(4.0)),
            ("y", "SPATIAL", "m", np.arange(5.0)),
            ("v", "SPECTRAL", "V", np.arange(3.0)),
        ],
    )
    with h5py.File(path, "a") as h5:  # replace the voltage scale by one of the wrong length
        ds, group = h5["Measurement_000/Channel_000/BE"], h5["Measurement_000/Channel_000"]
        ds.dims[2].detach_scale(group["v"])
        del group["v"]
        scale = group.create_dataset("v", data=np.arange(9.0))
        scale.make_scale("v")
        ds.dims[2].attach_scale(scale)
    with pytest.raises(DataError, match=r"axis vector '.*/v' has 9 entries but axis 2 \('v'\)"):
        load_dataset(path)


# ---------------------------------------------------------------------------------------------
# Complex responses
# ---------------------------------------------------------------------------------------------

_AMP = np.full((3, 3, 4), 2.0)
_PHASE = np.full((3, 3, 4), np.pi / 3)
_VIEWS = {
    "real": 2.0 * np.cos(np.pi / 3),
    "imag": 2.0 * np.sin(np.pi / 3),
    "amplitude": 2.0,
    "phase": np.pi / 3,
}


@pytest.mark.parametrize("view", list(_VIEWS))
def test_complex_views(tmp_path: Path, view: str) -> None:
    _write_h5(tmp_path / "c.h5", {"z": _AMP * np.exp(1j * _PHASE)})
    ds = load_dataset(tmp_path / "c.h5", complex_view=view)
    np.testing.assert_allclose(ds.data, _VIEWS[view], rtol=1e-6)
    assert ds.attrs["complex_view"] == view


@pytest.mark.parametrize("view", ["real", "phase"])
def test_amplitude_phase_pair_combined(tmp_path: Path, view: str) -> None:
    _write_h5(
        tmp_path / "p.h5",
        {"amplitude": _AMP, "phase": np.rad2deg(_PHASE), "voltage": np.arange(4.0)},
        {"phase": {"units": "deg"}},
    )
    ds = load_dataset(tmp_path / "p.h5", complex_view=view)
    np.testing.assert_allclose(ds.data, _VIEWS[view], rtol=1e-6)
    assert ds.attrs["complex_sources"] == ["/amplitude", "/phase"]


def test_compound_real_imag_and_npy_complex(tmp_path: Path) -> None:
    z = _AMP * np.exp(1j * _PHASE)
    compound = np.empty(z.shape, dtype=[("r", "<f4"), ("i", "<f4")])
    compound["r"], compound["i"] = z.real, z.imag
    _write_h5(tmp_path / "cmp.h5", {"z": compound})
    np.testing.assert_allclose(
        load_dataset(tmp_path / "cmp.h5", complex_view="amplitude").data, 2.0, rtol=1e-6
    )
    np.save(tmp_path / "z.npy", z)
    np.testing.assert_allclose(load_dataset(tmp_path / "z.npy").data, _VIEWS["real"], rtol=1e-6)


def test_bad_complex_view(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 3)))
    with pytest.raises(DataError, match=r"complex_view='abs' is not one of.*amplitude"):
        load_dataset(tmp_path / "a.npy", complex_view="abs")


# ---------------------------------------------------------------------------------------------
# Project layout: save / load round trip
# ---------------------------------------------------------------------------------------------


def _example_dataset(with_truth: bool = True) -> Dataset:
    data = _tensor((5, 4, 3, 6))
    data[1, 2] = np.nan
    data[0, 0, 1, 3] = np.nan
    axes = [
        Axis("x", np.arange(5) * 0.1, "um"),
        Axis("y", np.arange(4) * 0.1, "um"),
        Axis("voltage", np.array([1.0, -2.0, 3.5]), "V"),
        Axis("time", np.arange(6) * 2e-3, "s"),
    ]
    return Dataset(
        data=data,
        axes=axes,
        quantity="piezoresponse",
        unit="pm/V",
        source="twin",
        path="seed=3",
        attrs={"seed": 3, "noise": 0.02, "params": {"tau_ms": [10, 300]}, "name": "t"},
        truth=_tensor((5, 4, 3, 6), 9) if with_truth else None,
    )


@pytest.mark.parametrize("with_truth", [True, False])
def test_save_load_round_trip(tmp_path: Path, with_truth: bool) -> None:
    original = _example_dataset(with_truth)
    written = save_dataset(original, tmp_path / "sub" / "rt.h5")
    loaded = load_dataset(written)
    np.testing.assert_array_equal(loaded.data, original.data)  # NaN positions included
    assert np.array_equal(np.isnan(loaded.data), np.isnan(original.data))
    assert loaded.axes == original.axes
    assert (loaded.quantity, loaded.unit, loaded.source, loaded.path) == (
        original.quantity,
        original.unit,
        original.source,
        original.path,
    )
    assert loaded.attrs == original.attrs
    if with_truth:
        np.testing.assert_array_equal(loaded.truth, original.truth)
    else:
        assert loaded.truth is None


def test_saved_layout_by_dataset_path(tmp_path: Path) -> None:
    """Naming the saved group or its data tensor reads the whole saved dataset; other paths not."""
    original = _example_dataset()
    save_dataset(original, tmp_path / "rt.h5")
    with h5py.File(tmp_path / "rt.h5", "a") as h5:
        h5["extra"] = _tensor((2, 2, 2))
    for dataset_path in ("/dataset", "/dataset/data"):
        loaded = load_dataset(tmp_path / "rt.h5", dataset_path=dataset_path)
        np.testing.assert_array_equal(loaded.truth, original.truth)
        assert loaded.attrs == original.attrs
    assert load_dataset(tmp_path / "rt.h5").shape == original.shape
    assert load_dataset(tmp_path / "rt.h5", dataset_path="/extra").shape == (2, 2, 2)


def test_saved_layout_is_self_describing(tmp_path: Path) -> None:
    save_dataset(_example_dataset(), tmp_path / "rt.h5")
    with h5py.File(tmp_path / "rt.h5") as h5:
        data = h5["dataset/data"]
        assert data.dtype == np.float32 and data.compression == "lzf"
        assert [d.label for d in data.dims] == ["x", "y", "voltage", "time"]
        assert data.dims[2][0].attrs["unit"] == "V"


def test_save_numpy_attrs_become_json(tmp_path: Path) -> None:
    original = _example_dataset()
    original.attrs = {"gain": np.float32(2.5), "pulses": np.arange(3)}
    loaded = load_dataset(save_dataset(original, tmp_path / "np.h5"))
    assert loaded.attrs == {"gain": 2.5, "pulses": [0, 1, 2]}


def test_save_rejects_unserialisable_attrs(tmp_path: Path) -> None:
    original = _example_dataset()
    original.attrs = {"bad": object()}
    with pytest.raises(DataError, match="JSON-like"):
        save_dataset(original, tmp_path / "x.h5")


# ---------------------------------------------------------------------------------------------
# open_data
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_twin(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Stand-in for the twin generator behind ``envs.data.sources.open_data``, recording its
    calls."""
    calls: list[dict] = []

    def twin_dataset(seed: int = 0, **kwargs: object) -> Dataset:
        calls.append({"seed": seed, **kwargs})
        return Dataset(np.full((2, 2, 2), float(seed)), source="twin")

    monkeypatch.setattr(envs.data.sources, "twin_dataset", twin_dataset)
    return calls


def test_open_data_twin_specs(fake_twin: list[dict]) -> None:
    assert open_data("twin").data[0, 0, 0] == 0.0
    assert open_data("twin:17", dataset_path=None, n_pixels=4).data[0, 0, 0] == 17.0
    assert fake_twin == [{"seed": 0}, {"seed": 17, "n_pixels": 4}]


@pytest.mark.parametrize("spec", ["twin:", "twin:-1", "twin:abc"])
def test_open_data_bad_twin_spec(fake_twin: list[dict], spec: str) -> None:
    with pytest.raises(DataError, match="expected 'twin' or 'twin:SEED'"):
        open_data(spec)


def test_open_data_twin_rejects_file_options(fake_twin: list[dict]) -> None:
    with pytest.raises(DataError, match=r"\['channel'\] apply to data files"):
        open_data("twin:1", channel=2)


def test_open_data_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 4)))
    ds = open_data(str(tmp_path / "a.npy"), axis_names=["x", "y", "f"])
    assert ds.axis_names == ["x", "y", "f"]


# ---------------------------------------------------------------------------------------------
# Bad input: one clear DataError each
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found: .*nothing\.h5"):
        load_dataset(tmp_path / "nothing.h5")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"unknown file extension '\.csv'.*\.npy, \.npz"):
        load_dataset(tmp_path / "data.csv")


def test_corrupt_h5(tmp_path: Path) -> None:
    (tmp_path / "broken.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        load_dataset(tmp_path / "broken.h5")


def test_missing_dataset_path_lists_datasets(tmp_path: Path) -> None:
    _write_h5(tmp_path / "m.h5", {"grp/cube": _tensor((3, 3, 3)), "voltage": np.arange(3.0)})
    with pytest.raises(DataError, match=r"no dataset '/grp/cub'") as err:
        load_dataset(tmp_path / "m.h5", dataset_path="/grp/cub")
    assert "/grp/cube (3, 3, 3) float32" in str(err.value)
    assert "/voltage (3,) float64" in str(err.value)
    assert str(tmp_path / "m.h5") in str(err.value)


def test_several_candidate_tensors_listed(tmp_path: Path) -> None:
    _write_h5(tmp_path / "m.h5", {"a": _tensor((3, 3, 3)), "b/c": _tensor((3, 3, 2, 2))})
    with pytest.raises(DataError, match=r"2 candidate tensors; choose one with") as err:
        load_dataset(tmp_path / "m.h5")
    assert "/a (3, 3, 3)" in str(err.value) and "/b/c (3, 3, 2, 2)" in str(err.value)


@pytest.mark.parametrize("shape", [(5, 6), (7,)])
def test_fewer_than_three_axes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "a.npy", np.ones(shape))
    with pytest.raises(DataError, match=rf"shape \({shape[0]},.*fewer than 3 axes"):
        load_dataset(tmp_path / "a.npy")
    _write_h5(tmp_path / "a.h5", {"img": np.ones(shape)})
    with pytest.raises(DataError, match="fewer than 3 axes"):
        load_dataset(tmp_path / "a.h5")


def test_h5_only_images_no_tensor(tmp_path: Path) -> None:
    _write_h5(tmp_path / "imgs.h5", {"a": np.ones((4, 4)), "b": np.ones((4, 4))})
    with pytest.raises(DataError, match=r"no tensor with at least 3 axes.*\n.*/a \(4, 4\)"):
        load_dataset(tmp_path / "imgs.h5")


def test_non_numeric_data(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([[["a"]]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="non-numeric"):
        load_dataset(tmp_path / "obj.npy")
    np.save(tmp_path / "str.npy", np.full((2, 2, 2), "x"))
    with pytest.raises(DataError, match=r"non-numeric data \(dtype <U1\)"):
        load_dataset(tmp_path / "str.npy")
    _write_h5(tmp_path / "s.h5", {"labels": np.full((2, 2, 2), b"abc")})
    with pytest.raises(DataError, match=r"'/labels' holds non-numeric data"):
        load_dataset(tmp_path / "s.h5")


def test_all_nan(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.full((3, 3, 3), np.nan))
    with pytest.raises(DataError, match=r"nan\.npy: .*no finite value"):
        load_dataset(tmp_path / "nan.npy")


def test_wrong_number_of_axis_names(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 3)))
    with pytest.raises(DataError, match=r"2 axis names \[.x., .y.\] given for a tensor with 3"):
        load_dataset(tmp_path / "a.npy", axis_names=["x", "y"])


def test_axis_names_as_one_string(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 3)))
    with pytest.raises(DataError, match="axis_names must be a list of names"):
        load_dataset(tmp_path / "a.npy", axis_names="xyz")


def test_channel_on_single_tensor_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _tensor((3, 3, 3)))
    with pytest.raises(DataError, match="channel= applies to files with several channel images"):
        load_dataset(tmp_path / "a.npy", channel=0)


# ---------------------------------------------------------------------------------------------
# Real shared files
# ---------------------------------------------------------------------------------------------


def test_real_pto_nsid_file(shared_data: Path) -> None:
    path = shared_data / "PTO_Funakubo0001.h5"
    ds = load_dataset(path)
    assert ds.shape == (256, 256, 4)
    assert ds.axis_names == ["x", "y", "channel"]
    assert [c["quantity"] for c in ds.attrs["channels"]] == [
        "HeightRetrace",
        "AmplitudeRetrace",
        "DeflectionRetrace",
        "PhaseRetrace",
    ]
    assert ds.axis("x").unit == "m" and ds.axis("x").values[-1] > 0
    phase = load_dataset(path, channel="PhaseRetrace")
    assert phase.shape == (256, 256, 1) and phase.unit == "deg"
    np.testing.assert_array_equal(phase.data[..., 0], ds.data[..., 3])
    assert len(ds.attrs["original_metadata"]) > 100


def test_real_bepfm_npy_pair(shared_data: Path) -> None:
    full = load_dataset(shared_data / "bepfm_32x32x102.npy")
    sparse = load_dataset(shared_data / "bepfm_32x32x102_sparse.npy")
    assert full.shape == sparse.shape == (32, 32, 102)
    assert full.measured_mask.all()
    measured_pixels = sparse.measured_mask.all(axis=-1)
    assert 0.25 < measured_pixels.mean() < 0.35  # the README says 70.6 % of pixels are NaN
    # Whole pixels are missing, never part of a spectrum.
    assert np.array_equal(sparse.measured_mask.any(axis=-1), measured_pixels)
