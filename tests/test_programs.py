"""The measurement programs a sample with memory allows (envs.acquisition.programs)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.acquisition.programs import (
    RULES,
    allowed_actions,
    allowed_blocks,
    check_rule,
    default_block_scheme,
)
from reconstruct.base import BlockLayout

#: Four pixels, three blocks of two segments: pristine; block 0 read; blocks 0 and 1 read
#: (block 1 half); block 1 alone read.
SEGMENTS = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 2, 0]])


def test_sequence_offers_each_pixel_its_next_block_in_pulse_order():
    allowed = allowed_blocks("sequence", SEGMENTS, n_segments=2)
    assert allowed.tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
        [False, False, False],  # out of order: closed
    ]


def test_free_offers_every_block_with_unread_segments_and_longer_windows():
    actions = allowed_actions("free", SEGMENTS, np.array([1, 2]), n_segments=2)
    assert actions[2, 1].tolist() == [False, True]  # a longer window at a half-read block
    assert actions[1, 0].tolist() == [False, False]


def test_sequence_never_extends_a_window():
    rule = "sequence"
    actions = allowed_actions(rule, SEGMENTS, np.array([1, 2]), n_segments=2)
    # block 1 of pixel 2 has one of two segments: a longer window would be a revisit
    assert not actions[2, 1].any()
    assert actions.sum() == allowed_blocks(rule, SEGMENTS, 2).sum() * 2


def test_a_pixel_completed_in_sequence_is_a_prefix_at_every_step():
    segments = np.zeros((1, 4), dtype=int)
    for expected in range(4):
        allowed = allowed_blocks("sequence", segments, n_segments=1)
        assert np.flatnonzero(allowed[0]).tolist() == [expected]
        segments[0, expected] = 1
    assert not allowed_blocks("sequence", segments, n_segments=1).any()


def test_bad_rules_are_one_line():
    with pytest.raises(ValueError, match="the rules are 'sequence' .* and 'free'"):
        check_rule("nosuch", BlockLayout(16, 4, "contiguous"))
    with pytest.raises(ValueError, match="contiguous voltage blocks"):
        check_rule("sequence", BlockLayout(16, 4, "spread"))
    assert check_rule("sequence", BlockLayout(16, 1, "spread")) == "sequence"
    assert RULES == ("sequence", "free")
    assert default_block_scheme("sequence") == "contiguous"
    assert default_block_scheme("free") == "spread"
