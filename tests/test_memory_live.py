"""The sample's memory in the env and the live loop: programs in pulse order, held-back blocks
reached through their pixel's earlier blocks, and a resumed session that continues every
pixel's state exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.catalog import make_policy
from envs.acquisition.factory import make_env
from envs.instruments.memory import TwinMemoryInstrument
from envs.instruments.remote import InstrumentError
from envs.live.loop import ExperimentConfig, ExperimentStopped, run_experiment
from envs.live.session import Session

TWIN = {"grid": [8, 8], "n_times": 8}


def _env(**settings):
    return make_env(twin_seeds=2, twin_overrides=TWIN, n_blocks=4, budget_fraction=1.0,
                    reconstructor="idw", **settings)


def test_a_twin_is_measured_with_its_memory_and_only_in_pulse_order():
    env = _env()
    env.reset(seed=0)
    assert isinstance(env.instrument, TwinMemoryInstrument)
    assert env.layout.effective_scheme == "contiguous"
    allowed = env.action_masks().reshape(env.n_pixels, env.n_blocks)
    pristine = ~env.measured.any(axis=1)
    assert allowed[pristine, 0].all() and not allowed[:, 1:][pristine].any()
    pixel = int(np.flatnonzero(pristine)[0])
    # A later block first is the documented no-op: nothing measured, the penalty paid.
    seconds = env.instrument_seconds
    _, reward, _, _, info = env.step(env.encode_action(pixel, 2))
    assert info["repeated"] and reward == -env.repeat_penalty
    assert env.instrument_seconds == seconds and not env.measured[pixel].any()
    # In pulse order the pixel is completed, and reads the standard sequence's values.
    for block in range(env.n_blocks):
        assert env.action_masks().reshape(env.n_pixels, -1)[pixel].tolist() == [
            b == block for b in range(env.n_blocks)
        ]
        env.step(env.encode_action(pixel, block))
    assert env.measured[pixel].all() and not env.action_masks().reshape(env.n_pixels, -1)[
        pixel
    ].any()


def test_the_free_replay_keeps_the_earlier_behaviour():
    env = _env(memory="off", programs="free")
    env.reset(seed=0)
    assert type(env.instrument).__name__ == "ReplayInstrument"
    assert env.layout.effective_scheme == "spread"
    assert env.action_masks().reshape(env.n_pixels, env.n_blocks)[~env.measured.any(1)].all()


def test_bad_memory_and_program_settings_are_one_line():
    with pytest.raises(ValueError, match="unknown memory setting 'yes'"):
        _env(memory="yes")
    with pytest.raises(ValueError, match="the rules are 'sequence'"):
        _env(programs="once")
    with pytest.raises(ValueError, match="needs contiguous voltage blocks"):
        _env(block_scheme="spread")


def test_a_file_has_no_memory_to_simulate(shared_data):
    path = shared_data / "bepfm_32x32x102.npy"
    if not path.is_file():
        pytest.skip("the real band-excitation file is not beside the checkout")
    with pytest.raises(ValueError, match="a recorded file has no memory to simulate"):
        make_env(data=str(path), n_blocks=2, memory="on")


def test_a_held_back_later_block_is_reached_through_the_earlier_ones():
    env = _env()
    env.reset(seed=0)
    pixel = int(np.flatnonzero(~env.measured.any(axis=1))[0])
    n_before = env.n_measurements
    env.measure_held_back(pixel, 2)
    assert env.measured[pixel].tolist() == [True, True, True, False]
    assert env.n_measurements == n_before + 3
    assert not env.reconstructor.measured[pixel].any()  # the way held back with the block
    env.release_held_back([(pixel, 2)], way_only=True)
    assert env.reconstructor.measured[pixel].tolist() == [True, True, False, False]
    env.release_held_back([(pixel, 2)])
    assert env.reconstructor.measured[pixel].tolist() == [True, True, True, False]


def test_releasing_a_later_block_leaves_an_earlier_held_back_block_held_back():
    env = _env()
    env.reset(seed=0)
    pixel = int(np.flatnonzero(~env.measured.any(axis=1))[0])
    env.measure_held_back(pixel, 1)  # a check block, held back for good
    env.measure_held_back(pixel, 3)  # an audit block past it: block 2 on the way
    assert not env.reconstructor.measured[pixel].any()
    env.release_held_back([(pixel, 3)])  # a failed audit round gives its block and its way
    assert env.reconstructor.measured[pixel].tolist() == [False, False, True, True]
    env.release_held_back([(pixel, 1)], way_only=True)  # the check block's way only
    assert env.reconstructor.measured[pixel].tolist() == [True, False, True, True]


def test_the_live_loop_gives_the_way_to_its_check_blocks_and_holds_back_only_them(tmp_path):
    from agents.catalog import make_policy
    from envs.live.loop import _Experiment

    experiment = _Experiment(_config(tmp_path, "checks"), False, make_policy)
    try:
        experiment.start()
        model = experiment.env.reconstructor.measured.cpu().numpy()
        for pixel, block in experiment.check_pairs:
            assert not model[pixel, block]
            way = [b for b in range(block) if [pixel, b] not in experiment.check_pairs.tolist()]
            assert (model | experiment.rejected)[pixel, way].all()
    finally:
        experiment.session.close()


def _config(tmp_path, name: str, **changes) -> ExperimentConfig:
    base = ExperimentConfig(
        instrument="twin:1", session=str(tmp_path / f"{name}.h5"), agent="gp-uncertainty",
        seed=3, budget_hours=1.0, stop_r2=None, initial_stride=3, check_blocks=6,
        estimate_every=10, max_measurements=70, algorithm_clock="model", twin_grid=8,
        twin_times=8, reconstructor="idw", progress=False,
    )
    return dataclasses.replace(base, **changes)


def test_a_resumed_session_continues_every_pixels_state_exactly(tmp_path, monkeypatch):
    reference = run_experiment(_config(tmp_path, "reference"), make_policy=make_policy)
    measure = TwinMemoryInstrument.measure
    calls = {"n": 0}

    def lost_after_40(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 40:
            raise InstrumentError("the instrument stopped answering")
        return measure(self, *args, **kwargs)

    config = _config(tmp_path, "stopped")
    monkeypatch.setattr(TwinMemoryInstrument, "measure", lost_after_40)
    with pytest.raises(ExperimentStopped):
        run_experiment(config, make_policy=make_policy)
    monkeypatch.setattr(TwinMemoryInstrument, "measure", measure)
    resumed = run_experiment(config, resume=True, make_policy=make_policy)
    with Session.open(reference.session) as a, Session.open(resumed.session) as b:
        ref, got = a.records(), b.records()
    assert len(got) == len(ref) == 70
    for column in ("pixel", "block", "kind", "values", "instrument_seconds"):
        np.testing.assert_array_equal(getattr(got, column), getattr(ref, column))
    # The measurements did meet a sample with memory: some pixel holds more than one block,
    # each after the one before it.
    blocks_per_pixel = np.bincount(ref.pixel, minlength=64)
    assert blocks_per_pixel.max() > 1


def test_the_session_figure_says_what_it_shows(tmp_path, monkeypatch):
    """Title with agent, target and session; colour bars with units; the map's voltage and
    time from the axes; a labelled R^2 axis."""
    import matplotlib.figure

    shown = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: shown.append(fig))
    config = _config(tmp_path, "figure", max_measurements=30, stop_r2=0.99)
    run_experiment(config, make_policy=make_policy)
    (fig,) = shown
    title = fig._suptitle.get_text()
    assert "figure.h5" in title and "gp-uncertainty" in title and "0.99" in title
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert {"blocks", "R^2 of the reconstruction"} <= labels
    assert any(label.startswith("(") and label.endswith(")^2") for label in labels)  # variance
    titles = [ax.get_title() for ax in fig.axes]
    reconstruction = next(title for title in titles if "reconstruction at" in title)
    assert " V" in reconstruction and " s" in reconstruction


def test_an_episode_ends_when_the_rule_leaves_nothing_to_take():
    """Under the rule a block read with a short window is closed: once every block is measured
    or closed, the episode ends (it does not wait for blocks that can never be read in full)."""
    env = make_env(twin_seeds=2, twin_overrides={"grid": [6, 6], "n_times": 8}, n_blocks=2,
                   budget_fraction=5.0, reconstructor="idw", read_windows=[4, 8],
                   initial_stride=0)
    env.reset(seed=0)
    terminated, steps = False, 0
    while not terminated:
        mask = env.action_masks()
        actions = np.flatnonzero(mask)
        short = [a for a in actions if env.decode_action(int(a))[2] == 0]
        _, _, terminated, _, _ = env.step(int(short[0] if short else actions[0]))
        steps += 1
    assert env.exhausted and not env.measured.all()  # short reads closed the blocks
    assert steps == env.n_pixels * env.n_blocks
