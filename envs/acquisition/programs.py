"""Measurement programs a sample with memory allows: which actions the env offers at a pixel.

A ferroelectric remembers every pulse it received: a block measured at a pixel reads the
response to the pulses that pixel has had so far, not the standard sequence's values. The
reconstruction's target is the standard sequence's tensor (every pulse in order from the
as-grown state), so the env offers, at each pixel, only measurements whose values are that
tensor's own. The rule is chosen once per env (:data:`RULES`):

``"sequence"`` (the default)
    A pixel's history stays a prefix of the standard sequence: the next measurement at a pixel
    applies exactly the pulses that follow the last ones it received. With contiguous voltage
    blocks (``block_scheme="contiguous"``) that is the pixel's next block, so a pixel is
    completed block by block in pulse order, and a basis pixel is all its blocks in order. A
    block is measured once, with one read window: a longer window afterwards would apply its
    pulses again.
``"free"``
    Any block not read in full, and a longer read window after a shorter one: what a replay of
    a sample without memory allows. Kept to reproduce results made under that assumption; every
    result made with it says so.

Why these two (``docs/memory.md``, ``python -m studies.memory_programs``, noise-free 30 x 30
twins with the memory simulated): contiguous blocks completed in pulse order read the standard
sequence's values at R^2 >= 0.994 (exact when each follows the last at once), and a first block
cut to 8 of 128 reads changes the next blocks' values by R^2 <= 0.002. A block measured alone at
a pristine pixel reads other values than the standard sequence's (R^2 0.84-0.96 for one of 4
spread blocks, 0.70-1.00 for a later contiguous block), and a pixel completed block by block in
the spread layout reads -2.8 to 0.65: neither gives the reconstruction the values it models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.command_line import option
from reconstruct.base import BlockLayout

#: The program rules, the first the default.
RULES = ("sequence", "free")


def programs_option() -> Any:
    """The program rule as a program option (:func:`envs.command_line.option`), the same in
    every program that measures."""
    return option(
        "sequence",
        "the measurement programs offered: 'sequence' (each pixel's blocks in pulse order, "
        "contiguous blocks: what a sample with memory allows) or 'free' (any block, spread over "
        "the sequence: a replay of a sample without memory; its results say so)",
        choices=RULES,
    )


def check_rule(rule: str, layout: BlockLayout | None = None) -> str:
    """``rule`` after checking that it is known and (given a ``layout``) fits it; one line
    otherwise."""
    if rule not in RULES:
        raise ValueError(
            f"unknown program rule {rule!r}; the rules are 'sequence' (a sample with memory: "
            f"each pixel's blocks in pulse order) and 'free' (a replay of a sample without memory)"
        )
    if layout is None:
        return rule
    if rule == "sequence" and layout.n_blocks > 1 and layout.effective_scheme != "contiguous":
        raise ValueError(
            f"the program rule 'sequence' completes a pixel in pulse order, which needs "
            f"contiguous voltage blocks (block_scheme='contiguous'), not "
            f"{layout.effective_scheme!r}"
        )
    return rule


def default_block_scheme(rule: str) -> str:
    """The voltage-block layout a rule asks for when none is given: contiguous blocks in pulse
    order under ``"sequence"``, blocks spread over the sequence for the free replay."""
    return "contiguous" if rule == "sequence" else "spread"


def allowed_blocks(rule: str, segments_read: np.ndarray, n_segments: int) -> np.ndarray:
    """``(P, n_blocks)`` bool: the blocks a new measurement may take at each pixel.

    ``segments_read`` ``(P, n_blocks)`` counts the read segments of each block so far (0: the
    block's pulses were never applied there). Under ``"free"`` a block with unread segments;
    under ``"sequence"`` a pixel's first unmeasured block, when every earlier one is measured.
    """
    if rule == "free":
        return segments_read < n_segments
    if rule != "sequence":
        raise ValueError(f"unknown program rule {rule!r}; the rules are {', '.join(RULES)}")
    started = segments_read > 0
    # The next block in pulse order, where the measured blocks are 0 .. n - 1 exactly.
    n_measured = started.sum(axis=1)
    unmeasured = np.column_stack([~started, np.ones(len(started), dtype=bool)])
    in_order = unmeasured.argmax(axis=1) == n_measured
    open_pixels = np.flatnonzero(in_order & (n_measured < started.shape[1]))
    allowed = np.zeros_like(started)
    allowed[open_pixels, n_measured[open_pixels]] = True
    return allowed


def allowed_actions(
    rule: str, segments_read: np.ndarray, window_segments: np.ndarray, n_segments: int
) -> np.ndarray:
    """``(P, n_blocks, n_windows)`` bool: the actions the rule allows.

    ``window_segments`` ``(n_windows,)`` is the number of segments each read window reads.
    Under ``"free"`` a window is allowed where it reads segments its block lacks; under
    ``"sequence"``, at the allowed block (never measured), every window.
    """
    if rule == "free":
        return window_segments[None, None, :] > segments_read[:, :, None]
    blocks = allowed_blocks(rule, segments_read, n_segments)
    return np.repeat(blocks[:, :, None], len(window_segments), axis=2)
