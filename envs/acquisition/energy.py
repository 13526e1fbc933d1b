"""How strong is each pixel's response? The reconstruction's signal energy per pixel.

A GP's posterior variance depends only on where the measurements are, not on how large the
response is where nothing has been measured yet. On the twin the error of the reconstruction
does: its pixel-scale disorder scales a pixel's whole spectrum, so an unmeasured pixel in a
strongly responding region (a c-domain near a wall) is wrong by more than one in a weak
a-domain, at the same distance from the data. On the real BE-PFM file this does not hold, and
weighting by the energy there costs much of the time saved (``models/README.md``), so the
default PPO model reads it only calibrated (below).

The *pixel energy*, the sum of squares of a pixel's estimated spectrum over all blocks, is the
observable stand-in for that scale: the heuristic ``gp-energy-surprise-per-second``
(:class:`agents.baselines.EnergySurprisePerSecondPolicy`) multiplies the cost-aware uncertainty
score by it; the acquisition env (``observe_energy=True``) shows its log as one observation
plane; the score-map PPO policy's prior adds that log to its log score. All three use
:func:`pixel_energy`, so the quantity is computed one way only.

Whether the error follows the energy is a property of the sample, so the energy can also enter
with a power fitted to the sample as it is measured (:func:`energy_exponent`): the heuristic
``gp-calibrated-energy-per-second``, the env's ``calibrate_energy=True`` (the plane then shows
the power times the log energy) and the PPO prior on that plane, which the default model
reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The observation plane is ``clip(log(energy / max energy) / ENERGY_PLANE_SCALE, -1, 0)``: pixels
#: down to e^-8 (3e-4) of the strongest pixel's energy are resolved; weaker ones read -1.
ENERGY_PLANE_SCALE = 8.0
#: Shrinkage of the fitted power of the energy (:func:`energy_exponent`), in squared log-energy
#: units: about five measured blocks' worth of log-energy spread (its variance is ~2 on the
#: twin), so the first few measurements do not set the power on their own.
ENERGY_EXPONENT_SHRINKAGE = 10.0
#: Energies are floored at this fraction of the largest before the log (an estimate of exactly
#: zero, e.g. before any measurement, has no log).
ENERGY_FLOOR = float(np.exp(-ENERGY_PLANE_SCALE))


def pixel_energy(reconstructor: Any) -> np.ndarray:
    """``(P,)`` sum of squares of each pixel's estimated spectrum (every block), float64:
    :meth:`reconstruct.base.Reconstructor.pixel_energy` as a NumPy array.

    Measured entries count with their measured values (the reconstructor's estimate holds them),
    NaN entries (lost blocks) count as 0.
    """
    return reconstructor.pixel_energy().detach().cpu().numpy()


def relative_log_energy(energy: np.ndarray) -> np.ndarray:
    """``log(energy / max energy)``, floored at ``log(ENERGY_FLOOR)`` (all zeros: all 0)."""
    energy = np.asarray(energy, dtype=np.float64)
    top = float(energy.max()) if energy.size else 0.0
    if not top > 0:
        return np.zeros_like(energy)
    return np.log(np.maximum(energy / top, ENERGY_FLOOR))


def log_energy_plane(
    log_energy: np.ndarray, grid_shape: tuple[int, int], power: float = 1.0
) -> np.ndarray:
    """``(X, Y)`` float32 observation plane: ``power`` times the relative log pixel energy
    (:func:`relative_log_energy`, ``(P,)``) over ``ENERGY_PLANE_SCALE``, in [-1, 0]. With
    ``power`` in [0, 1] nothing floored is clipped: the plane times ``ENERGY_PLANE_SCALE`` is
    exactly the log of the factor ``energy^power`` of the energy heuristics."""
    scaled = power * np.asarray(log_energy) / ENERGY_PLANE_SCALE
    return np.clip(scaled.reshape(grid_shape), -1.0, 0.0).astype(np.float32)


def energy_exponent(tracker: Any) -> float:
    """How strongly this sample's reconstruction error follows the pixel energy: the slope of
    the measured blocks' log surprise on their pixels' relative log energy (recorded as the
    :class:`envs.acquisition.surprise.SurpriseTracker` covariate when each block was chosen),
    shrunk by ``ENERGY_EXPONENT_SHRINKAGE`` and clipped to [0, 1].

    Why: a score of variance x energy^a is the expected squared error when the error's scale
    grows as energy^a. The twin's errors grow with the energy (slope 1.2-1.9 on five 16 x 16
    seeds), the real BE-PFM file's do not (-0.12; ``python -m studies.energy_power``), so a
    fixed power helps on one and costs on the other; fitted per sample, the power follows the
    data in hand."""
    return float(np.clip(tracker.covariate_slope(ENERGY_EXPONENT_SHRINKAGE), 0.0, 1.0))


def energy_observation(
    reconstructor: Any, grid_shape: tuple[int, int], tracker: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The acquisition env's energy plane and the ``(P,)`` relative log energy it shows: the
    log energy times the power fitted on ``tracker``'s records (``calibrate_energy``), or
    times 1 without a tracker. One function for the env and for a PPO policy that computes the
    plane itself, so that both see the same plane."""
    log_energy = relative_log_energy(pixel_energy(reconstructor))
    power = 1.0 if tracker is None else energy_exponent(tracker)
    return log_energy, log_energy_plane(log_energy, grid_shape, power)
