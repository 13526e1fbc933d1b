"""Measurement programs a sample with memory allows: which actions the env offers at a pixel.

A ferroelectric remembers every pulse it received: a block measured at a pixel reads the
response to the pulses that pixel has had so far, not the standard sequence's values. The
reconstruction's target is the standard sequence's tensor (every pulse in order from the
as-grown state), so the env offers, at each pixel, only the measurements whose values it can
interpret. The rule is chosen once per env (:data:`RULES`):

``"sequence"`` (the default for a twin with memory)
    A pixel's history stays a prefix of the standard sequence: the next measurement at a pixel
    must apply exactly the pulses that follow the last one it received. With contiguous voltage
    blocks (``block_scheme="contiguous"``) that is the pixel's next block, so every value
    measured is the standard sequence's own, and a pixel is completed block by block in pulse
    order; a basis pixel is all blocks in order. With the spread layout only a whole-sequence
    measurement (one block) is a prefix, so the rule asks for contiguous blocks.
``"once"``
    A pixel is measured once, with any one block, from its as-grown state; then it is closed.
    The block reads the response to its own pulses alone (close to, not equal to, the standard
    sequence's values).
``"free"``
    Any block not read in full, and a longer read window after a shorter one: what a replay of a
    sample without memory allows. Kept to reproduce results made under that assumption.

Under ``"sequence"`` and ``"once"`` a block is measured once with one read window: a longer
window afterwards would apply the block's pulses again, a revisit like any other.
"""

from __future__ import annotations

import numpy as np

from reconstruct.base import BlockLayout

#: The program rules, the first the default where memory is simulated.
RULES = ("sequence", "once", "free")


def check_rule(rule: str, layout: BlockLayout) -> str:
    """``rule`` after checking that it is known and fits ``layout``; one line otherwise."""
    if rule not in RULES:
        raise ValueError(f"unknown program rule {rule!r}; the rules are {', '.join(RULES)}")
    if rule == "sequence" and layout.n_blocks > 1 and layout.effective_scheme != "contiguous":
        raise ValueError(
            f"the program rule 'sequence' completes a pixel in pulse order, which needs "
            f"contiguous voltage blocks (block_scheme='contiguous'), not "
            f"{layout.effective_scheme!r}"
        )
    return rule


def allowed_blocks(rule: str, segments_read: np.ndarray, n_segments: int) -> np.ndarray:
    """``(P, n_blocks)`` bool: the blocks a new measurement may take at each pixel.

    ``segments_read`` ``(P, n_blocks)`` counts the read segments of each block so far (0: the
    block's pulses were never applied there). Under ``"free"`` a block with unread segments is
    allowed (the read window decides the rest); under ``"sequence"`` only a pixel's first
    unmeasured block, when every earlier one is measured; under ``"once"`` every block of a
    pixel nothing was measured at.
    """
    started = segments_read > 0
    if rule == "free":
        return segments_read < n_segments
    if rule == "once":
        return np.broadcast_to(~started.any(axis=1, keepdims=True), started.shape).copy()
    if rule == "sequence":
        # The next block in pulse order, where the measured blocks are 0 .. n - 1 exactly.
        n_measured = started.sum(axis=1)
        unmeasured = np.column_stack([~started, np.ones(len(started), dtype=bool)])
        in_order = unmeasured.argmax(axis=1) == n_measured
        open_pixels = np.flatnonzero(in_order & (n_measured < started.shape[1]))
        allowed = np.zeros_like(started)
        allowed[open_pixels, n_measured[open_pixels]] = True
        return allowed
    raise ValueError(f"unknown program rule {rule!r}; the rules are {', '.join(RULES)}")


def allowed_actions(
    rule: str, segments_read: np.ndarray, window_segments: np.ndarray, n_segments: int
) -> np.ndarray:
    """``(P, n_blocks, n_windows)`` bool: the actions the rule allows.

    ``window_segments`` ``(n_windows,)`` is the number of segments each read window reads.
    Under ``"free"`` a window is allowed where it reads segments the block lacks; under the
    memory rules, at an allowed block (never measured), every window.
    """
    blocks = allowed_blocks(rule, segments_read, n_segments)
    if rule == "free":
        return window_segments[None, None, :] > segments_read[:, :, None]
    return np.repeat(blocks[:, :, None], len(window_segments), axis=2)
