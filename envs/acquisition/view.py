"""What a policy may read of the env's model state, beside the observation.

A policy that scores actions (the heuristics, the oracles' helpers, the batch-decision env)
needs more than the observation's planes: the posterior variance each action removes, what each
action costs in seconds, which units are measured. These are the functions that compute them
from an :class:`~envs.acquisition.env.AcquisitionEnv`.
"""

from __future__ import annotations

import numpy as np
import torch


def window_values(env, uncertainty: np.ndarray) -> np.ndarray:
    """Posterior variance each action removes, per feature of a whole block, flat in action
    order: the variance of the reads it takes (:meth:`AcquisitionEnv.window_gain`) and, for a
    window that stops short of the end of the curve, the variance it removes from the rest of
    those curves, where the reconstructor can say how well it predicts them
    (``error_given_measured``, the low-rank models). Without the second part a short window is
    credited with its own few reads only, although it pins the pixel's coefficients, and through
    them the rest of its curves; with one read window the two parts are the first alone."""
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    values = env.window_gain(uncertainty)
    reconstructor = env.reconstructor
    if env.n_windows == 1 or not hasattr(reconstructor, "error_given_measured"):
        return values
    n_pixels, n_segments = env.n_pixels, env.n_segments
    values = values.reshape(n_pixels, env.n_blocks, env.n_windows)
    valid = env.action_masks().reshape(values.shape)
    have = env.unit_measured
    for window, reads_to in enumerate(env.read_windows.segments[:-1]):
        for block in range(env.n_blocks):
            first = block * n_segments
            after = have.copy()
            after[:, first : first + reads_to] = True
            error = reconstructor.error_given_measured(torch.from_numpy(after))
            error = error.detach().cpu().numpy()
            rest = slice(first + reads_to, first + n_segments)
            removed = (uncertainty[:, rest] - np.minimum(error[:, rest], uncertainty[:, rest]))
            removed = np.where(have[:, rest], 0.0, removed).sum(1) / n_segments
            values[:, block, window] += np.where(valid[:, block, window], removed, 0.0)
    return values.reshape(-1)
