"""The ``static-basis`` policy: a fixed design of evenly spread full pixels plus a few
staggered blocks everywhere else, in one serpentine pass."""

import numpy as np
import pytest

from agents import make_policy
from agents.baselines import StaticBasisPolicy, evenly_spread_pixels
from envs.acquisition.env import AcquisitionEnv
from envs.acquisition.factory import make_env

GRID = (12, 12)
N_BLOCKS = 4


def _env(budget_fraction: float = 2.0, **settings) -> AcquisitionEnv:
    return make_env(
        **settings,
        twin_seeds=3,
        twin_overrides={"grid": list(GRID), "n_times": 8},
        n_blocks=N_BLOCKS,
        budget_fraction=budget_fraction,
        device="cpu",
    )


def _order(spec: str, seed: int = 0, **settings) -> tuple[StaticBasisPolicy, np.ndarray]:
    env = _env(**settings)
    env.reset(seed=seed)
    policy = make_policy(spec)
    policy.reset(env, seed=seed)
    return policy, policy.action_order()


def _design(policy: StaticBasisPolicy, order: np.ndarray) -> np.ndarray:
    """The design part of the order (before the later filling passes)."""
    n_pixels = GRID[0] * GRID[1]
    n_full = len(policy.full_pixels())
    size = n_full * N_BLOCKS + (n_pixels - n_full) * policy.blocks_per_pixel
    return order[:size]


def test_spec_syntax_and_defaults():
    default = make_policy("static-basis")
    assert (default.full_fraction, default.blocks_per_pixel) == (0.1, 1)
    custom = make_policy("static-basis:0.25,2")
    assert (custom.full_fraction, custom.blocks_per_pixel) == (0.25, 2)
    assert make_policy("static-basis:0.05").blocks_per_pixel == 1
    bad_specs = ("static-basis:1.5", "static-basis:0.1,0", "static-basis:x",
                 "static-basis:0.1,2,3,4", "static-basis:0.1,1,0")
    for bad in bad_specs:
        with pytest.raises(ValueError, match="static-basis|full_fraction|blocks_per_pixel"):
            make_policy(bad)
    env = _env()
    env.reset(seed=0)
    too_many = make_policy(f"static-basis:0.1,{N_BLOCKS + 1}")
    with pytest.raises(ValueError, match="exceeds"):
        too_many.reset(env, seed=0)


@pytest.mark.parametrize("spec", ["static-basis", "static-basis:0.2,2", "static-basis:0,1"])
def test_order_is_valid_unique_and_deterministic(spec):
    policy, order = _order(spec, seed=0)
    n_actions = GRID[0] * GRID[1] * N_BLOCKS
    assert order.dtype.kind == "i" and ((order >= 0) & (order < n_actions)).all()
    assert len(np.unique(order)) == len(order)
    _, again = _order(spec, seed=7)  # no random choice: the seed changes nothing
    np.testing.assert_array_equal(order, again)


@pytest.mark.parametrize("fraction, blocks", [(0.1, 1), (0.25, 2), (0.5, 3)])
def test_design_covers_every_pixel_and_respects_the_fraction(fraction, blocks):
    policy, order = _order(f"static-basis:{fraction},{blocks}")
    n_pixels = GRID[0] * GRID[1]
    pixels, block_of = np.divmod(_design(policy, order), N_BLOCKS)
    counts = np.bincount(pixels, minlength=n_pixels)
    full = policy.full_pixels()
    assert len(full) == round(fraction * n_pixels)
    assert (counts[full] == N_BLOCKS).all()
    others = np.setdiff1d(np.arange(n_pixels), full)
    assert (counts[others] == blocks).all()
    # One serpentine pass: each pixel is visited once, the next pixel is a grid neighbour.
    visits = pixels[np.r_[True, np.diff(pixels) != 0]]
    assert len(visits) == n_pixels
    rows, cols = np.divmod(visits, GRID[1])
    assert (np.abs(np.diff(rows)) + np.abs(np.diff(cols)) == 1).all()
    # After the design, the later passes complete every pixel.
    assert len(order) == n_pixels * N_BLOCKS


def test_neighbouring_single_block_pixels_hold_different_blocks():
    # Staggered blocks are the free replay's design; in pulse order every pixel starts at 0.
    policy, order = _order("static-basis:0.1,1", programs="free")
    pixels, blocks = np.divmod(_design(policy, order), N_BLOCKS)
    single = np.full(GRID, -1)
    is_single = ~np.isin(pixels, policy.full_pixels())
    single.flat[pixels[is_single]] = blocks[is_single]
    for a, b in ((single[1:], single[:-1]), (single[:, 1:], single[:, :-1])):
        both = (a >= 0) & (b >= 0)
        assert both.any() and (a[both] != b[both]).all()


def test_full_pixels_are_spread_evenly():
    for shape, fraction in (((60, 60), 0.1), ((20, 20), 0.05), ((12, 30), 0.2)):
        count = round(fraction * shape[0] * shape[1])
        chosen = evenly_spread_pixels(shape, count)
        assert len(np.unique(chosen)) == count
        rows, cols = np.divmod(chosen, shape[1])
        ii, jj = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
        gap = np.sqrt((ii[:, None] - rows) ** 2 + (jj[:, None] - cols) ** 2).min(1).max()
        # No pixel much farther from a full pixel than on a square lattice of that density.
        assert gap <= 1.5 * np.sqrt(1.0 / fraction), (shape, gap)


def test_acts_only_on_valid_actions_through_an_episode():
    env = _env(budget_fraction=0.4)
    observation, info = env.reset(seed=0)
    policy = make_policy("static-basis")
    policy.reset(env, seed=0)
    terminated = False
    while not terminated:
        action = policy.act(observation, info["action_mask"].astype(bool))
        assert info["action_mask"][action]
        observation, _, terminated, _, info = env.step(action)
        assert not info["repeated"]


def test_label_names_a_design_other_than_the_default():
    assert make_policy("static-basis").label == "static-basis"
    assert make_policy("static-basis:0.05,1,8").label == "static-basis:0.05,1,8"
    assert make_policy("static-basis:0.25,2").label == "static-basis:0.25,2"


def test_in_pulse_order_every_pixel_takes_its_blocks_from_the_first():
    policy, order = _order("static-basis:0.1,2")
    pixels, blocks = np.divmod(_design(policy, order), N_BLOCKS)
    is_full = np.isin(pixels, policy.full_pixels())
    assert set(blocks[~is_full].tolist()) == {0, 1}
    for pixel in np.unique(pixels):
        taken = blocks[pixels == pixel]
        assert taken.tolist() == list(range(len(taken)))  # 0, 1, ... in pulse order
