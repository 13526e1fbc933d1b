"""The observation contract: named planes, saved with models, checked by name."""

from __future__ import annotations

import numpy as np
import pytest

from agents.catalog import make_policy
from envs.acquisition.factory import EnvConfig, make_env
from envs.acquisition.observation import OPTIONAL_PLANES, ObservationSpec

SMALL = {"twin_overrides": {"grid": [10, 10], "n_times": 8}, "reconstructor": "idw"}


def test_plane_names_and_positions():
    spec = ObservationSpec(2, 3, ("energy", "surprise"))
    assert spec.optional == ("surprise", "energy")  # the canonical order
    assert spec.plane_names == (
        "measured/0", "measured/1", "component/0", "component/1", "component/2",
        "uncertainty/0", "uncertainty/1", "surprise", "energy", "tip",
    )  # fmt: skip
    assert spec.planes_of("uncertainty") == slice(5, 7)
    assert spec.planes_of("tip") == slice(9, 10)
    assert spec.has("surprise") and not spec.has("calibrated-energy")
    with pytest.raises(KeyError, match="no 'calibrated-energy' plane"):
        spec.planes_of("calibrated-energy")


def test_per_block_planes_are_named_and_other_block_counts_found():
    spec = ObservationSpec(2, 3, ("surprise",))
    names = spec.plane_names
    assert [[names[i] for i in row] for row in spec.block_planes()] == [
        ["measured/0", "measured/1"], ["uncertainty/0", "uncertainty/1"],
    ]  # fmt: skip
    assert [names[i] for i in spec.shared_planes()] == [
        "component/0", "component/1", "component/2", "surprise", "tip",
    ]  # fmt: skip
    nine = spec.for_plane_count(ObservationSpec(9, 3, ("surprise",)).n_planes)
    assert nine == ObservationSpec(9, 3, ("surprise",))
    for n_planes in (6, 12):  # no blocks left, or an odd number of per-block planes
        with pytest.raises(ValueError, match="fits no block count"):
            spec.for_plane_count(n_planes)
    assert spec.mismatch(nine, compare_blocks=False) is None
    assert "2 voltage blocks against 9" in spec.mismatch(nine)
    assert spec.mismatch(ObservationSpec(9, 2, ()), compare_blocks=False) == (
        "3 component maps against 2; optional planes [surprise] against [none]"
    )


@pytest.mark.parametrize(
    ("optional", "message"),
    [
        (("glow",), "unknown observation plane"),
        (("calibrated-energy",), "needs the 'surprise' plane"),
        (("surprise", "energy", "calibrated-energy"), "replaces 'energy'"),
    ],
)
def test_bad_plane_lists_are_clear_errors(optional, message):
    with pytest.raises(ValueError, match=message):
        ObservationSpec(4, 3, optional)


def test_round_trip_and_mismatch_in_words():
    spec = ObservationSpec(4, 3, ("surprise", "calibrated-energy"))
    assert ObservationSpec.from_dict(spec.to_dict()) == spec
    assert spec.mismatch(spec) is None
    other = ObservationSpec(9, 2, ())
    text = spec.mismatch(other)
    assert "4 voltage blocks against 9" in text
    assert "3 component maps against 2" in text
    assert "optional planes [surprise, calibrated-energy] against [none]" in text


@pytest.mark.parametrize(
    "planes", [[], ["surprise"], ["energy", "surprise"], ["surprise", "calibrated-energy"]]
)
def test_env_observation_follows_its_spec(planes):
    """The env's planes are the spec's, in its order: the tip plane is one-hot at the tip and
    the measured planes are the env's mask."""
    env = make_env(**SMALL, planes=planes)
    spec = env.observation_spec
    assert spec.optional == tuple(p for p in OPTIONAL_PLANES if p in planes)
    observation, _ = env.reset(seed=0)
    assert observation["planes"].shape[0] == spec.n_planes
    tip = observation["planes"][spec.planes_of("tip")][0]
    assert tip.reshape(-1).argmax() == env.tip_pixel and tip.sum() == 1
    measured = observation["planes"][spec.planes_of("measured")]
    np.testing.assert_array_equal(measured, env.measured.T.reshape(measured.shape))


def test_config_names_every_setting_once():
    config = EnvConfig.from_kwargs(**SMALL, planes=["surprise"])
    assert config.to_kwargs()["planes"] == ["surprise"]
    with pytest.raises(TypeError, match="unknown env setting"):
        EnvConfig.from_kwargs(observe_surprise=True)
    with pytest.raises(TypeError, match="unknown env setting"):
        make_env(**SMALL, target=0.9)


@pytest.mark.parametrize(
    "spec", ["ppo", "gp-surprise-per-second:1.5", "variance-reduction:128", "random"]
)
def test_documented_policy_specs_build(spec):
    """The examples in agents.catalog's docstring are valid specs."""
    assert make_policy(spec).name == spec.partition(":")[0]


def test_policy_spec_errors():
    with pytest.raises(ValueError, match="takes no argument"):
        make_policy("random:3")
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")
