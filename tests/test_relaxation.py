"""The relaxation-rich twin setting and the study that measures it (studies.relaxation)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from envs.data.twin import RELAXATION_RICH, twin_dataset
from studies import relaxation


def test_without_creep_the_twin_is_what_it_always_was():
    """wall_creep = 0 is the default and draws nothing: the default twin is unchanged."""
    plain = twin_dataset(0, grid=(12, 12), n_times=8)
    explicit = twin_dataset(0, grid=(12, 12), n_times=8, wall_creep=0.0)
    np.testing.assert_array_equal(plain.data, explicit.data)
    digest = hashlib.sha1(np.ascontiguousarray(twin_dataset(0, grid=(30, 30)).truth).tobytes())
    assert digest.hexdigest() == "999f71d6426b3ba2f20c6c44ed3a5840d68dc70e"


def test_relaxation_rich_twin_carries_ten_times_the_relaxation_and_a_raster_recovers_it():
    """On the full-size 60 x 60 grid (smaller grids hold fewer walls, and less creep)."""
    rows = {
        setting: relaxation.measure(0, setting, grid=60, reconstructor="mean", n_blocks=4)
        for setting in relaxation.SETTINGS
    }
    default, rich = rows["default"], rows["relaxation-rich"]
    assert rich["relaxation_share"] >= 10 * default["relaxation_share"]
    assert rich["reconstruction_dynamics_r2_truth"] >= 0.8 > default["raw_dynamics_r2_truth"]
    # Where it does not switch, the creep relaxes back: the levels stay the default's
    plain = twin_dataset(0, grid=(12, 12), n_times=8)
    rich_twin = twin_dataset(0, grid=(12, 12), n_times=8, **RELAXATION_RICH)
    assert np.isfinite(rich_twin.truth).all() and not np.allclose(plain.truth, rich_twin.truth)


def test_command_line_writes_json(tmp_path, capsys):
    out = tmp_path / "relaxation.json"
    assert relaxation.main(["--seeds", "1", "--grid", "10", "--reconstructor", "idw",
                            "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert {row["setting"] for row in rows} == set(relaxation.SETTINGS)
    assert "relaxation share" in capsys.readouterr().out
    assert relaxation.main(["--seeds", "0"]) == 2
