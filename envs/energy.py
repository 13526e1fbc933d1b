"""How strong is each pixel's response? The reconstruction's signal energy per pixel.

A GP's posterior variance depends only on where the measurements are, not on how large the
response is where nothing has been measured yet. On the twin the error of the reconstruction
does: its pixel-scale disorder scales a pixel's whole spectrum, so an unmeasured pixel in a
strongly responding region (a c-domain near a wall) is wrong by more than one in a weak
a-domain, at the same distance from the data. On the real BE-PFM file this does not hold, and
weighting by the energy there costs much of the time saved (``models/README.md``), so the
default PPO model does not read it.

The *pixel energy*, the sum of squares of a pixel's estimated spectrum over all blocks, is the
observable stand-in for that scale: the heuristic ``gp-energy-surprise-per-second``
(:class:`agents.baselines.EnergySurprisePerSecondPolicy`) multiplies the cost-aware uncertainty
score by it; the acquisition env (``observe_energy=True``) shows its log as one observation
plane; the score-map PPO policy's prior adds that log to its log score. All three use
:func:`pixel_energy`, so the quantity is computed one way only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The observation plane is ``clip(log(energy / max energy) / ENERGY_PLANE_SCALE, -1, 0)``: pixels
#: down to e^-8 (3e-4) of the strongest pixel's energy are resolved; weaker ones read -1.
ENERGY_PLANE_SCALE = 8.0
#: Energies are floored at this fraction of the largest before the log (an estimate of exactly
#: zero, e.g. before any measurement, has no log).
ENERGY_FLOOR = float(np.exp(-ENERGY_PLANE_SCALE))


def pixel_energy(reconstructor: Any) -> np.ndarray:
    """``(P,)`` sum of squares of each pixel's estimated spectrum (every block), float64.

    Measured entries count with their measured values (the reconstructor's estimate holds them),
    NaN entries (lost blocks) count as 0.
    """
    estimate = reconstructor.estimate_blocks().detach()
    energy = estimate.double().square().nan_to_num(0.0).sum(dim=(1, 2))
    return energy.cpu().numpy()


def relative_log_energy(energy: np.ndarray) -> np.ndarray:
    """``log(energy / max energy)``, floored at ``log(ENERGY_FLOOR)`` (all zeros: all 0)."""
    energy = np.asarray(energy, dtype=np.float64)
    top = float(energy.max()) if energy.size else 0.0
    if not top > 0:
        return np.zeros_like(energy)
    return np.log(np.maximum(energy / top, ENERGY_FLOOR))


def log_energy_plane(reconstructor: Any, grid_shape: tuple[int, int]) -> np.ndarray:
    """``(X, Y)`` float32 observation plane: the relative log pixel energy over
    ``ENERGY_PLANE_SCALE``, in [-1, 0]."""
    scaled = relative_log_energy(pixel_energy(reconstructor)) / ENERGY_PLANE_SCALE
    return np.clip(scaled.reshape(grid_shape), -1.0, 0.0).astype(np.float32)
