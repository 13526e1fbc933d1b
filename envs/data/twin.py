"""A seeded synthetic twin of a relaxation (dynamic) piezoresponse spectroscopy experiment.

At every pixel of a scan grid the tip applies a sequence of voltage pulses and, after each, reads
the piezoresponse a number of times while it relaxes: a tensor ``(x, y, voltage, time)``. The twin
builds that tensor from a small physical model of a tetragonal ferroelectric film (PbTiO3-like):

1. **Domain layout.** A c-domain matrix (polarisation up) crossed by a-domain bands along two
   orthogonal directions (slightly rotated with respect to the scan, with wavy edges, some ending
   inside the image) and a few reversed-polarisation (c-down) patches with irregular boundaries.
   A *wall-proximity* field decays with the distance to the nearest domain wall.
2. **Parameter maps.** Per-pixel response strength (weak in a-domains, enhanced near walls),
   switching threshold (about 2-5 V, lower near walls, with an imprint that makes up- and
   down-switching differ), switching width, back-switching fraction (large at "soft" walls),
   relaxation time (about 10-300 ms), stretch exponent (about 0.3-1), a pinned sub-pixel
   nanodomain fraction that never switches, and an electrostatic coefficient. Each map mixes the
   domain structure, a smooth field, and pixel-scale *pinning disorder*: the disorder is rough in
   space but fixed at its pixel, so it is coherent across all voltages and times there.
3. **Pulse sequence.** Each pulse switches part of the switchable polarisation toward its own sign
   (a Gaussian-CDF switching probability above the local threshold). The state left by earlier
   pulses is carried over, so the effect of a pulse depends on the history (hysteresis).
4. **Relaxation.** After a pulse, a fraction of the newly switched polarisation switches back with
   a stretched exponential ``exp(-(t / tau) ** beta)``, and a fast reversible electrostatic part
   proportional to the pulse voltage decays within a few milliseconds.
5. **Instrument.** The measured tensor adds white noise (a fraction of the signal range), per-pixel
   gain and offset jitter, per-scan-line offsets, a slow drift along the raster scan, rare spikes
   and a few pixels lost entirely (NaN).

``Dataset.truth`` holds the noise-free physical response (steps 1-4, no instrument effects).
:func:`apply_pulses` runs steps 3-4 from any state and :func:`instrument_effects` keeps the
step-5 draws, so a pixel can also be pulsed program by program
(:mod:`envs.instruments.memory`).
Randomness comes from one integer seed, split into independent streams for the layout, the
parameter maps and the instrument, so the same seed always gives the same twin.

Run ``python -m envs.data.twin --seed 0 --out twin.h5 --plot twin.png`` to write a twin file and an
overview figure (``python -m studies.realism --data twin:0`` prints its realism statistics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, special

from envs.data.dataset import Axis, Dataset

#: Domain labels used in ``TwinSample.params["domain"]``.
C_UP, C_DOWN, A_DOMAIN = 0, 1, 2
DOMAIN_NAMES = {C_UP: "c-domain (up)", C_DOWN: "c-domain (down)", A_DOMAIN: "a-domain"}


#: The generator name a twin's ``attrs`` carry: this module's, and the one twins saved by earlier
#: versions carry (the module was ``envs.twin`` then).
TWIN_GENERATORS = ("envs.data.twin", "envs.twin")


def alternating_pulses(n_pulses: int, v_min: float, v_max: float) -> np.ndarray:
    """Pulses of alternating sign (first positive) and amplitude growing linearly.

    Parameters
    ----------
    n_pulses
        Number of pulses.
    v_min, v_max
        Amplitude of the first and of the last pulse, in volts.

    Returns
    -------
    numpy.ndarray
        The signed pulse voltages, shape ``(n_pulses,)``.
    """
    amplitudes = np.linspace(v_min, v_max, n_pulses)
    signs = np.where(np.arange(n_pulses) % 2 == 0, 1.0, -1.0)
    return signs * amplitudes


def _check_range(name: str, bounds: tuple[float, float], lower: float = -np.inf) -> None:
    lo, hi = bounds
    if not (lower <= lo <= hi):
        raise ValueError(
            f"{name} must be a (low, high) pair with {lower} <= low <= high, got {bounds}"
        )


#: Twin settings in which the relaxation varies across the map enough to be measured: about ten
#: times the default's share of the truth's spatial variance (0.7 %), and the full raster's
#: raw relaxation curves score a dynamics R^2 above 0.8 against the truth (both measured by
#: ``python -m studies.relaxation``). The creep's size is an assumption, not a measurement.
RELAXATION_RICH: dict[str, float] = {"wall_creep": 5.0}


@dataclass
class TwinConfig:
    """Settings of the synthetic relaxation-PFM experiment; every length is in pixels.

    Parameters
    ----------
    grid
        Scan grid ``(rows, columns)``; the x axis runs along rows, y along columns.
    pixel_size_um
        Pixel pitch, used for the x and y coordinates (micrometres).
    n_voltages
        Number of pulses (length of the voltage axis).
    n_times
        Number of read-outs after each pulse (length of the time axis).
    read_interval_s
        Time between read-outs; read ``i`` happens ``(i + 1) * read_interval_s`` after the pulse.
    voltages
        Explicit signed pulse voltages (length ``n_voltages``); ``None`` uses
        :func:`alternating_pulses` from ``pulse_v_min`` to ``pulse_v_max``.
    pulse_v_min, pulse_v_max
        Amplitudes of the first and last pulse of the default sequence (volts).
    band_spacing_px
        Mean spacing of a-domain bands along each of the two directions.
    band_width_px
        Range of a-domain band widths.
    patch_area_px
        Image area per reversed (c-down) patch; a grid gets ``area / patch_area_px`` patches
        (at least one).
    patch_radius_px
        Range of reversed-patch radii.
    max_rotation_deg
        The crystal axes are rotated from the scan axes by up to this angle.
    wall_decay_px
        Decay length of the wall-proximity field.
    smooth_length_px
        Correlation length of the smooth (mesoscale) part of the parameter maps.
    threshold_range_v
        Switching thresholds are clipped to this range (volts).
    tau_range_s
        Relaxation times are clipped to this range (seconds).
    beta_range
        Stretch exponents are clipped to this range.
    pinning_disorder
        Scale of the pixel-scale pinning disorder in all parameter maps (0 turns it off).
    fast_decay_s
        Decay time of the fast reversible (electrostatic) response.
    wall_creep
        Strength of the reversible wall creep: every pulse moves the polarisation along its
        field by ``wall_creep * m * |V| / max |V|`` (``m`` is larger near soft domain walls),
        and that part relaxes away with the pixel's relaxation kernel. 0 (the default) gives
        relaxation only where a pulse switches; :data:`RELAXATION_RICH` is the setting in which
        the relaxation varies across the map enough to be measured.
    noise_level
        White-noise standard deviation as a fraction of the truth's signal range (1st-99th
        percentile span).
    gain_jitter, offset_jitter
        Per-pixel gain (relative) and offset (fraction of the signal range) standard deviations.
    line_jitter
        Per-scan-line offset standard deviation (fraction of the signal range).
    drift_level
        Amplitude of the slow drift along the raster scan (fraction of the signal range).
    spike_rate, spike_amplitude
        Fraction of entries hit by a spike, and spike size (fraction of the signal range).
    n_nan_pixels
        Number of pixels whose whole spectrum is lost (NaN) in the measured tensor.
    """

    grid: tuple[int, int] = (60, 60)
    pixel_size_um: float = 0.05
    n_voltages: int = 16
    n_times: int = 128
    read_interval_s: float = 0.002
    voltages: tuple[float, ...] | None = None
    pulse_v_min: float = 0.5
    pulse_v_max: float = 8.0
    band_spacing_px: float = 20.0
    band_width_px: tuple[float, float] = (2.0, 5.0)
    patch_area_px: float = 900.0
    patch_radius_px: tuple[float, float] = (3.0, 8.0)
    max_rotation_deg: float = 10.0
    wall_decay_px: float = 1.5
    smooth_length_px: float = 4.0
    threshold_range_v: tuple[float, float] = (1.5, 5.5)
    tau_range_s: tuple[float, float] = (0.01, 0.3)
    beta_range: tuple[float, float] = (0.3, 1.0)
    pinning_disorder: float = 1.0
    fast_decay_s: float = 0.002
    wall_creep: float = 0.0
    noise_level: float = 0.015
    gain_jitter: float = 0.02
    offset_jitter: float = 0.005
    line_jitter: float = 0.005
    drift_level: float = 0.015
    spike_rate: float = 2e-5
    spike_amplitude: float = 0.5
    n_nan_pixels: int = 5

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 2 or min(grid) < 4:
            raise ValueError(f"grid must be two sizes >= 4 (rows, columns), got {self.grid}")
        self.grid = grid  # type: ignore[assignment]
        if self.n_voltages < 1 or self.n_times < 1:
            raise ValueError(
                f"need n_voltages >= 1 and n_times >= 1, got {self.n_voltages} and {self.n_times}"
            )
        if self.read_interval_s <= 0 or self.fast_decay_s <= 0 or self.pixel_size_um <= 0:
            raise ValueError(
                "read_interval_s, fast_decay_s and pixel_size_um must be positive, got "
                f"{self.read_interval_s}, {self.fast_decay_s}, {self.pixel_size_um}"
            )
        if self.voltages is not None:
            self.voltages = tuple(float(v) for v in self.voltages)
            if len(self.voltages) != self.n_voltages:
                raise ValueError(
                    f"voltages has {len(self.voltages)} entries but n_voltages is {self.n_voltages}"
                )
        for name in (
            "band_width_px",
            "patch_radius_px",
            "threshold_range_v",
            "tau_range_s",
            "beta_range",
        ):
            # Tuples, also when the settings come back from JSON as lists.
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        _check_range("band_width_px", self.band_width_px, lower=0.5)
        _check_range("patch_radius_px", self.patch_radius_px, lower=0.5)
        _check_range("threshold_range_v", self.threshold_range_v, lower=0.0)
        _check_range("tau_range_s", self.tau_range_s, lower=1e-9)
        _check_range("beta_range", self.beta_range, lower=1e-3)
        for name in ("band_spacing_px", "patch_area_px", "wall_decay_px", "smooth_length_px"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "pinning_disorder",
            "noise_level",
            "gain_jitter",
            "offset_jitter",
            "line_jitter",
            "drift_level",
            "spike_amplitude",
            "max_rotation_deg",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.spike_rate <= 1:
            raise ValueError(f"spike_rate must be a fraction in [0, 1], got {self.spike_rate}")
        if not 0 <= self.n_nan_pixels < grid[0] * grid[1]:
            raise ValueError(
                f"n_nan_pixels must be in [0, {grid[0] * grid[1]}) for a {grid} grid, "
                f"got {self.n_nan_pixels}"
            )

    def pulse_voltages(self) -> np.ndarray:
        """The signed pulse voltages, shape ``(n_voltages,)``."""
        if self.voltages is not None:
            return np.asarray(self.voltages, dtype=np.float64)
        return alternating_pulses(self.n_voltages, self.pulse_v_min, self.pulse_v_max)

    def read_times(self) -> np.ndarray:
        """Read-out times after each pulse in seconds, shape ``(n_times,)``."""
        return (np.arange(self.n_times) + 1.0) * self.read_interval_s

    def to_json_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class TwinSample:
    """One generated twin: the dataset plus the hidden physics that produced it.

    Attributes
    ----------
    dataset
        ``data`` is the noisy measured tensor ``(x, y, voltage, time)`` with a few NaN pixels;
        ``truth`` the noise-free response.
    params
        Hidden per-pixel maps, each of shape ``grid``: ``domain`` (labels ``C_UP``, ``C_DOWN``,
        ``A_DOMAIN``), ``wall_proximity``, ``strength``, ``threshold_up``, ``threshold_down``,
        ``threshold`` (their mean), ``width``, ``back_switching``, ``tau``, ``beta``,
        ``pinned_fraction``, ``electrostatic``, ``initial_polarisation``, ``pinning`` (the common
        pixel-scale disorder), plus ``gain`` and ``offset`` of the instrument.
    """

    dataset: Dataset
    params: dict[str, np.ndarray]


# --------------------------------------------------------------------------- random fields


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], length_px: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with correlation length ``length_px``."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), length_px, mode="reflect")
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def _rough_field(
    rng: np.random.Generator, common: np.ndarray, share_common: float = 0.5
) -> np.ndarray:
    """Pixel-scale disorder: part shared by all parameters (pinning sites), part their own."""
    own = rng.standard_normal(common.shape)
    return np.sqrt(share_common) * common + np.sqrt(1.0 - share_common) * own


# --------------------------------------------------------------------------- domain layout


def domain_layout(rng: np.random.Generator, config: TwinConfig) -> np.ndarray:
    """Domain labels on the grid: c-up matrix, c-down patches, two families of a-domain bands.

    Parameters
    ----------
    rng
        Source of randomness (the layout stream).
    config
        Grid size and the geometric settings.

    Returns
    -------
    numpy.ndarray
        int8 labels of shape ``config.grid`` (``C_UP``, ``C_DOWN``, ``A_DOMAIN``).
    """
    nx, ny = config.grid
    rows, cols = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="ij")
    labels = np.full((nx, ny), C_UP, dtype=np.int8)

    # Reversed patches: discs whose radius varies with angle (low angular harmonics).
    n_patches = max(1, int(round(nx * ny / config.patch_area_px * rng.uniform(0.7, 1.3))))
    for _ in range(n_patches):
        ci, cj = rng.uniform(0, nx), rng.uniform(0, ny)
        radius = rng.uniform(*config.patch_radius_px)
        angle = np.arctan2(rows - ci, cols - cj)
        harmonics = sum(
            rng.uniform(0.0, 0.3) / m * np.cos(m * angle + rng.uniform(0, 2 * np.pi))
            for m in (2, 3, 4)
        )
        labels[np.hypot(rows - ci, cols - cj) < radius * (1.0 + harmonics)] = C_DOWN

    # a-domain bands along the two crystal axes, rotated together relative to the scan.
    theta = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    u = rows * np.cos(theta) + cols * np.sin(theta)
    v = -rows * np.sin(theta) + cols * np.cos(theta)
    for across, along, extent in ((u, v, nx), (v, u, ny)):
        n_bands = max(1, int(round(extent / config.band_spacing_px * rng.uniform(0.7, 1.3))))
        lo_along, hi_along = along.min(), along.max()
        for _ in range(n_bands):
            centre = rng.uniform(across.min(), across.max())
            width = rng.uniform(*config.band_width_px)
            period = rng.uniform(15.0, 40.0)
            wiggle = rng.uniform(0.3, 1.2) * np.sin(
                2 * np.pi * along / period + rng.uniform(0, 6.3)
            )
            band = np.abs(across - centre - wiggle) < width / 2
            if rng.random() < 0.5:  # some bands end inside the image (needle-like a-domains)
                start, stop = np.sort(rng.uniform(lo_along, hi_along, size=2))
                band &= (along >= start) & (along <= stop)
            labels[band] = A_DOMAIN
    return labels


def wall_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (pixels, >= 1) from each pixel to the nearest pixel of a different domain label."""
    distance = np.full(labels.shape, np.inf)
    for label in np.unique(labels):
        inside = labels == label
        if inside.all():
            continue
        distance[inside] = ndimage.distance_transform_edt(inside)[inside]
    return distance


# --------------------------------------------------------------------------- parameter maps


def parameter_maps(
    rng: np.random.Generator, labels: np.ndarray, config: TwinConfig
) -> dict[str, np.ndarray]:
    """Per-pixel physical parameters from the domain layout, smooth fields and pinning disorder.

    Parameters
    ----------
    rng
        Source of randomness (the parameter stream).
    labels
        Domain labels from :func:`domain_layout`.
    config
        Ranges and disorder settings.

    Returns
    -------
    dict of numpy.ndarray
        The maps listed in :class:`TwinSample` (instrument gain and offset excluded).
    """
    shape = labels.shape
    proximity = np.exp(-(wall_distance(labels) - 1.0) / config.wall_decay_px)
    is_a = labels == A_DOMAIN
    pinning = rng.standard_normal(shape)
    dis = config.pinning_disorder

    def smooth() -> np.ndarray:
        return _smooth_field(rng, shape, config.smooth_length_px)

    def rough() -> np.ndarray:
        return _rough_field(rng, pinning)

    # Soft walls (large back-switching) vary along the walls on a longer scale than the rest.
    softness = special.expit(2.0 * _smooth_field(rng, shape, 2.0 * config.smooth_length_px))

    # Most pixel-scale disorder sits in the strength and the pinned fraction, which scale a
    # pixel's whole spectrum: rough in space yet coherent over voltages and times, as in real
    # switching maps. Threshold and width get less, because disorder there moves the pulse at
    # which a pixel switches, which no few-component spectral basis can follow.
    strength = (
        np.where(is_a, 0.2, 1.0)
        * (1.0 + 0.6 * proximity)
        * np.exp(0.25 * smooth() + 0.45 * dis * rough())
    )
    threshold = 3.8 + 0.4 * smooth() - 1.5 * proximity + 0.25 * dis * rough()
    imprint = 0.3 * smooth()  # positive imprint favours up-switching
    t_lo, t_hi = config.threshold_range_v
    threshold_up = np.clip(threshold - imprint, t_lo, t_hi)
    threshold_down = np.clip(threshold + imprint, t_lo, t_hi)
    width = np.clip(0.3 * np.exp(0.3 * smooth() + 0.2 * dis * rough()), 0.1, 1.0)
    back_switching = np.clip(
        0.1 + 0.6 * proximity * softness + 0.05 * smooth() + 0.08 * dis * rough(), 0.0, 0.85
    )
    tau = np.clip(
        0.05 * np.exp(0.6 * smooth() - 0.8 * proximity + 0.5 * dis * rough()),
        *config.tau_range_s,
    )
    beta = np.clip(
        0.65 + 0.12 * smooth() - 0.2 * proximity + 0.1 * dis * rough(), *config.beta_range
    )
    # Sub-pixel nanodomains pinned in the as-grown orientation's opposite: never switch, so they
    # leave a pixel-scale imprint on every voltage and time.
    pinned_fraction = np.clip(0.08 + 0.1 * dis * rough() + 0.1 * proximity, 0.0, 0.45)
    electrostatic = 0.02 * np.exp(0.2 * smooth() + 0.13 * dis * rough())  # per volt
    # Wall creep follows the soft walls (no random draw of its own, so that without it every
    # other map is what it always was).
    wall_creep = config.wall_creep * (0.25 + 0.75 * proximity * softness)
    initial = np.where(labels == C_DOWN, -1.0, 1.0)
    return {
        "domain": labels,
        "wall_proximity": proximity,
        "strength": strength,
        "threshold_up": threshold_up,
        "threshold_down": threshold_down,
        "threshold": 0.5 * (threshold_up + threshold_down),
        "width": width,
        "back_switching": back_switching,
        "tau": tau,
        "beta": beta,
        "pinned_fraction": pinned_fraction,
        "electrostatic": electrostatic,
        "wall_creep": wall_creep,
        "initial_polarisation": initial,
        "pinning": pinning,
    }


# --------------------------------------------------------------------------- physics


#: Largest response (entries) :func:`apply_pulses` computes for all pulses at once.
_BATCHED_ENTRIES = 1 << 16

#: The parameter maps a pulse reads (:func:`apply_pulses`); the others describe the layout.
PULSE_PARAMETERS = (
    "strength",
    "pinned_fraction",
    "initial_polarisation",
    "width",
    "threshold_up",
    "threshold_down",
    "back_switching",
    "wall_creep",
    "electrostatic",
)


def relaxation_kernel(params: dict[str, np.ndarray], times: np.ndarray) -> np.ndarray:
    """The stretched-exponential relaxation ``exp(-(t / tau) ** beta)`` of every pixel.

    Parameters
    ----------
    params
        Maps with ``tau`` and ``beta`` of any shape ``S``.
    times
        Times after a pulse in seconds, shape ``(T,)``.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(*S, T)``.
    """
    return np.exp(-((times / params["tau"][..., None]) ** params["beta"][..., None]))


def apply_pulses(
    params: dict[str, np.ndarray],
    state: np.ndarray,
    voltages: np.ndarray,
    kernel: np.ndarray,
    fast: np.ndarray,
    max_volts: float,
    last_read: int = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free response of pixels to a pulse program applied from a given state.

    The physics of :func:`relaxation_response` (which calls this from the as-grown state), for
    any pixels and any starting polarisation, so that a pixel can be pulsed in several programs
    with its state carried between them.

    Parameters
    ----------
    params
        The :data:`PULSE_PARAMETERS` maps, each of one shape ``S`` (a grid, or a few pixels).
    state
        Switchable polarisation each pixel starts from, shape ``S`` (in [-1, 1]).
    voltages
        Signed pulse voltages, applied in this order, shape ``(n,)``.
    kernel
        :func:`relaxation_kernel` of the pixels at the read times, shape ``(*S, T)``.
    fast
        ``exp(-times / fast_decay_s)``, shape ``(T,)``.
    max_volts
        The amplitude the wall creep is scaled by: the largest of the standard sequence (a
        material constant of the experiment, not of one program).
    last_read
        Index of the read after which the next pulse comes: the state a pulse leaves is the one
        at this read (``-1``, the last of ``T``; less for a read window cut short).

    Returns
    -------
    response, state, pending
        float32 response of shape ``(*S, n, T)``; the polarisation at read ``last_read`` after
        the last pulse (what a next pulse meets); and the part of the last pulse's switching
        that was still relaxing back then, ``b * (switched - before)``, which keeps relaxing
        with ``kernel`` if the next pulse comes later.
    """
    # First the state from pulse to pulse (cheap: one value per pixel and pulse), then the
    # curves. Every entry is the same arithmetic, in the same order, whatever the shape, so a
    # pixel simulated alone reads exactly what it reads inside the grid.
    width = np.sqrt(2.0) * params["width"]
    state = np.array(state, dtype=np.float64)
    back = np.zeros_like(state)
    k_last = kernel[..., last_read]
    settled, relaxing = [], []
    for volts in voltages:
        threshold = params["threshold_up"] if volts >= 0 else params["threshold_down"]
        fraction = 0.5 * special.erfc((threshold - abs(volts)) / width)  # Gaussian CDF
        target = 1.0 if volts >= 0 else -1.0
        switched = state + (target - state) * fraction
        back = params["back_switching"] * (switched - state)  # part that relaxes back
        # Reversible creep: every pulse bends the walls along its field, in proportion to its
        # amplitude, and that bending relaxes away with the same kernel (0 without creep).
        creep = params["wall_creep"] * target * abs(volts) / max_volts
        settled.append(switched - back)
        relaxing.append(back + creep)
        state = (switched - back) + (back + creep) * k_last - creep * k_last  # creep not kept
    out = np.empty((*state.shape, len(voltages), kernel.shape[-1]), dtype=np.float32)
    if not len(voltages):
        return out, state, back
    strength = params["strength"][..., None]
    pinned = params["pinned_fraction"][..., None]
    initial = params["initial_polarisation"][..., None]
    electrostatic = params["electrostatic"]
    if out.size <= _BATCHED_ENTRIES:  # a few pixels: all pulses in one go
        polarisation = (
            np.stack(settled, axis=-1)[..., None]
            + np.stack(relaxing, axis=-1)[..., None] * kernel[..., None, :]
        )
        net = (1.0 - pinned[..., None]) * polarisation - (pinned * initial)[..., None]
        volts = np.asarray(voltages, dtype=np.float64)
        out[:] = strength[..., None] * net + (electrostatic[..., None] * volts)[..., None] * fast
        return out, state, back
    for k, volts in enumerate(voltages):  # a grid: one pulse at a time, to bound the memory
        polarisation = settled[k][..., None] + relaxing[k][..., None] * kernel
        net = (1.0 - pinned) * polarisation - pinned * initial
        out[..., k, :] = strength * net + (electrostatic * volts)[..., None] * fast
    return out, state, back


def relaxation_response(
    params: dict[str, np.ndarray], voltages: np.ndarray, times: np.ndarray, fast_decay_s: float
) -> np.ndarray:
    """Noise-free piezoresponse ``(x, y, voltage, time)`` for a pulse sequence.

    The switchable polarisation ``P`` (in [-1, 1]) starts at the domain's orientation. A pulse of
    voltage ``V`` switches the fraction ``Phi((|V| - Vc) / w)`` of what is not yet along ``V``;
    afterwards a fraction ``b`` of that change relaxes back as ``exp(-(t / tau) ** beta)``. The
    state at the last read-out is what the next pulse meets. The response is
    ``strength * ((1 - q) P - q P0) + e V exp(-t / t_fast)`` with pinned fraction ``q`` and
    as-grown orientation ``P0``.

    Parameters
    ----------
    params
        Maps from :func:`parameter_maps`.
    voltages
        Signed pulse voltages, shape ``(V,)``.
    times
        Read-out times after each pulse in seconds, shape ``(T,)``.
    fast_decay_s
        Decay time of the reversible electrostatic part.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(X, Y, V, T)``.
    """
    # Relaxation kernel, fixed per pixel: (X, Y, T).
    kernel = relaxation_kernel(params, times)
    fast = np.exp(-times / fast_decay_s)
    max_volts = float(np.abs(voltages).max()) or 1.0
    out, _, _ = apply_pulses(
        params, params["initial_polarisation"], voltages, kernel, fast, max_volts
    )
    return out


def _scan_drift(rng: np.random.Generator, n_pixels: int) -> np.ndarray:
    """A slow random drift along the raster scan: a few low-frequency sinusoids, unit scale."""
    s = np.linspace(0.0, 1.0, n_pixels)
    drift = rng.normal() * (s - 0.5)
    for cycles in (0.5, 1.0, 2.0):
        drift += rng.normal() / cycles * np.sin(2 * np.pi * cycles * s + rng.uniform(0, 2 * np.pi))
    return drift / (np.abs(drift).max() + 1e-12)


@dataclass
class InstrumentEffects:
    """The random draws of the twin's instrument, kept apart so they can be applied again.

    Attributes
    ----------
    gain, offset
        Per-pixel gain and offset maps ``(X, Y)`` (the offset holds the scan-line offsets and
        the drift along the raster scan).
    noise
        float32 white noise of every entry, shape of the truth, in data units.
    spike_index, spike_value
        Flat indices (into the truth) of the entries hit by a spike, and the float32 spike
        added there; an index drawn twice appears twice and only its last value counts, as in
        :func:`add_instrument_effects`.
    lost
        Flat pixel indices whose whole spectrum is lost (NaN).
    span
        Signal range (1st-99th percentile span of the truth) the levels are fractions of.
    """

    gain: np.ndarray
    offset: np.ndarray
    noise: np.ndarray
    spike_index: np.ndarray
    spike_value: np.ndarray
    lost: np.ndarray
    span: float

    def apply(self, truth: np.ndarray) -> np.ndarray:
        """The measured float32 tensor of ``truth`` (shape of the draws) through the effects."""
        nx, ny = truth.shape[:2]
        measured = truth * self.gain[..., None, None].astype(np.float32)
        measured += self.offset[..., None, None].astype(np.float32)
        measured += self.noise
        measured.reshape(-1)[self.spike_index] += self.spike_value
        measured.reshape(nx * ny, -1)[self.lost] = np.nan
        return measured


def instrument_effects(
    rng: np.random.Generator, truth: np.ndarray, config: TwinConfig
) -> InstrumentEffects:
    """Draw the instrument effects of :func:`add_instrument_effects` for ``truth``.

    Parameters
    ----------
    rng
        Source of randomness (the instrument stream); draws in the order
        :func:`add_instrument_effects` always has.
    truth
        The noise-free tensor ``(X, Y, V, T)`` (its shape and its signal range are used).
    config
        The instrument settings.
    """
    nx, ny = truth.shape[:2]
    low, high = np.percentile(truth[::2, ::2], [1.0, 99.0])
    span = float(high - low)
    gain = 1.0 + config.gain_jitter * rng.standard_normal((nx, ny))
    offset = config.offset_jitter * span * rng.standard_normal((nx, ny))
    offset += config.line_jitter * span * rng.standard_normal((nx, 1))  # scan-line streaks
    # Raster order is row-major, so the drift is a function of the flat pixel index.
    offset += config.drift_level * span * _scan_drift(rng, nx * ny).reshape(nx, ny)
    noise = (config.noise_level * span) * rng.standard_normal(truth.shape, dtype=np.float32)
    n_spikes = rng.binomial(truth.size, config.spike_rate)
    where = rng.integers(0, truth.size, size=n_spikes)
    sizes = config.spike_amplitude * span * rng.uniform(0.5, 1.0, n_spikes)
    values = (rng.choice([-1.0, 1.0], n_spikes) * sizes).astype(np.float32)
    lost = rng.choice(nx * ny, size=config.n_nan_pixels, replace=False)
    return InstrumentEffects(gain, offset, noise, where, values, lost, span)


def add_instrument_effects(
    rng: np.random.Generator, truth: np.ndarray, config: TwinConfig
) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """The measured tensor: truth through gain/offset jitter, drift, line offsets, noise, spikes.

    Returns
    -------
    measured, instrument_maps, signal_range
        The float32 measured tensor (with ``config.n_nan_pixels`` all-NaN pixels), the per-pixel
        ``gain`` and ``offset`` maps, and the signal range (1st-99th percentile span of the truth)
        that the noise levels are fractions of.
    """
    effects = instrument_effects(rng, truth, config)
    measured = effects.apply(truth)
    return measured, {"gain": effects.gain, "offset": effects.offset}, effects.span


def twin_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """The independent random streams of twin ``seed``: layout, parameter maps, instrument."""
    layout_rng, param_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)
    )
    return layout_rng, param_rng, noise_rng


# --------------------------------------------------------------------------- public entry points


def make_twin(seed: int = 0, config: TwinConfig | None = None) -> TwinSample:
    """Generate one synthetic relaxation-PFM experiment.

    Parameters
    ----------
    seed
        Integer seed; the same seed and config give an identical twin, different seeds give
        different domain layouts.
    config
        Settings; defaults to ``TwinConfig()`` (60 x 60 grid, 16 pulses, 128 reads at 2 ms).

    Returns
    -------
    TwinSample
        The dataset (measured ``data`` and noise-free ``truth``) and the hidden parameter maps.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config = TwinConfig() if config is None else config
    layout_rng, param_rng, noise_rng = twin_streams(int(seed))
    labels = domain_layout(layout_rng, config)
    params = parameter_maps(param_rng, labels, config)
    voltages, times = config.pulse_voltages(), config.read_times()
    truth = relaxation_response(params, voltages, times, config.fast_decay_s)
    measured, instrument, span = add_instrument_effects(noise_rng, truth, config)
    params.update(instrument)
    nx, ny = config.grid
    axes = [
        Axis("x", np.arange(nx) * config.pixel_size_um, "um"),
        Axis("y", np.arange(ny) * config.pixel_size_um, "um"),
        Axis("voltage", voltages, "V"),
        Axis("time", times, "s"),
    ]
    dataset = Dataset(
        data=measured,
        axes=axes,
        quantity="piezoresponse",
        unit="a.u.",
        source="twin",
        path="",
        attrs={
            "generator": TWIN_GENERATORS[0],
            "seed": int(seed),
            "config": config.to_json_dict(),
            "signal_range": span,
            "truth": "noise-free physical response, without instrument gain/offset/drift/noise",
        },
        truth=truth,
    )
    return TwinSample(dataset=dataset, params=params)


def twin_dataset(seed: int = 0, **config_overrides: Any) -> Dataset:
    """The dataset of :func:`make_twin` with ``TwinConfig(**config_overrides)``.

    Raises
    ------
    ValueError
        For a setting name that :class:`TwinConfig` does not have, listing the valid ones.
    """
    known = {f.name for f in dataclasses.fields(TwinConfig)}
    unknown = sorted(set(config_overrides) - known)
    if unknown:
        raise ValueError(f"unknown twin setting(s) {unknown}; valid settings are {sorted(known)}")
    return make_twin(seed, TwinConfig(**config_overrides)).dataset


# --------------------------------------------------------------------------- command line


def representative_pixels(sample: TwinSample) -> dict[str, tuple[int, int]]:
    """One measured pixel of each kind: deep in the c-domain matrix, on a wall, in an a-domain.

    Kinds absent from the layout (e.g. no a-domain on a tiny grid) are left out.
    """
    labels, proximity = sample.params["domain"], sample.params["wall_proximity"]
    measured = np.isfinite(sample.dataset.data).all(axis=(2, 3))
    candidates = {
        "c-domain": (labels == C_UP, proximity),
        "wall": (labels != A_DOMAIN, -proximity),
        "a-domain": (labels == A_DOMAIN, proximity),
    }
    picks = {}
    for name, (allowed, score) in candidates.items():
        allowed = allowed & measured
        if allowed.any():
            flat = np.argmin(np.where(allowed, score, np.inf))
            picks[name] = tuple(int(i) for i in np.unravel_index(flat, labels.shape))
    return picks


def plot_overview(sample: TwinSample, path: str | Path) -> Path:
    """Write an overview PNG (:func:`overview_figure`) to ``path``; returns the path."""
    import matplotlib.pyplot as plt

    fig = overview_figure(sample)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overview_figure(sample: TwinSample) -> Any:
    """The overview figure of a twin: the response at three pulses and three read times (one
    colour scale, labelled with the quantity), the hidden domain map (with its legend) and
    parameter maps (with their units), and the measured curves of three kinds of pixel.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.patches
    import matplotlib.pyplot as plt

    dataset, params = sample.dataset, sample.params
    data = dataset.data
    voltages, times = dataset.axis("voltage").values, dataset.axis("time").values
    n_v, n_t = len(voltages), len(times)
    v_picks = sorted({0, n_v // 2, n_v - 1})
    t_picks = sorted({0, n_t // 4, n_t - 1})
    n_rows = len(v_picks) + 1
    fig = plt.figure(figsize=(16, 3.4 * n_rows), layout="constrained")
    grid = fig.add_gridspec(n_rows, 5)
    limit = float(np.nanpercentile(np.abs(data), 99))
    response = f"{dataset.quantity} ({dataset.unit})"
    map_axes = []
    for row, k in enumerate(v_picks):
        for col, j in enumerate(t_picks):
            ax = fig.add_subplot(grid[row, col])
            image = ax.imshow(data[:, :, k, j], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"pulse {voltages[k]:+.1f} V, read at {1e3 * times[j]:.0f} ms",
                         fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            map_axes.append(ax)
    # The nine maps share one colour scale: one bar, labelled with the quantity.
    fig.colorbar(image, ax=map_axes, fraction=0.02, pad=0.01, location="left").set_label(
        response, fontsize=9
    )

    ax = fig.add_subplot(grid[-1, 0])
    labels = sorted(DOMAIN_NAMES)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 1, len(labels)))
    ax.imshow(params["domain"], cmap=matplotlib.colors.ListedColormap(colours),
              vmin=min(labels) - 0.5, vmax=max(labels) + 0.5)
    ax.set_title("hidden: domains", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        handles=[matplotlib.patches.Patch(color=colours[i], label=DOMAIN_NAMES[label])
                 for i, label in enumerate(labels)],
        fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, frameon=False,
    )
    # (map, scale to the unit shown, title, colour-bar label)
    hidden = (
        ("threshold", 1.0, "magma", "hidden: switching threshold", "V"),
        ("back_switching", 1.0, "plasma", "hidden: back-switching", "fraction"),
        ("tau", 1e3, "cividis", "hidden: relaxation time tau", "ms"),
        ("beta", 1.0, "viridis", "hidden: stretch exponent beta", "dimensionless"),
    )
    for col, (name, scale, cmap, title, unit) in enumerate(hidden, start=1):
        ax = fig.add_subplot(grid[-1, col])
        image = ax.imshow(scale * params[name], cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046).set_label(unit, fontsize=8)

    # Measured curves of one pixel per kind, all pulses laid end to end in time.
    curve_ax = fig.add_subplot(grid[:-1, 3:])
    elapsed = (np.arange(n_v)[:, None] * (times[-1] + times[0]) + times[None, :]).ravel()
    for name, (i, j) in representative_pixels(sample).items():
        curve_ax.plot(elapsed, data[i, j].ravel(), lw=0.7, label=f"{name} pixel ({i}, {j})")
    curve_ax.set_xlabel("time across the pulse sequence (s)", fontsize=9)
    curve_ax.set_ylabel(f"{dataset.quantity} ({dataset.unit})", fontsize=9)
    curve_ax.set_title("relaxation after each pulse", fontsize=9)
    curve_ax.legend(fontsize=8)
    nx, ny = dataset.spatial_shape
    fig.suptitle(
        f"Synthetic relaxation-PFM twin, seed {dataset.attrs.get('seed')}: {nx} x {ny} pixels, "
        f"{n_v} pulses, {n_t} reads after each",
        fontsize=11,
    )
    return fig


def main(argv: list[str] | None = None) -> None:
    """Command line: generate a twin, save it and plot it (``python -m studies.realism`` prints
    its realism statistics)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--grid",
        type=int,
        nargs=2,
        default=None,
        metavar=("X", "Y"),
        help="grid size (default 60 60)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the twin to this h5 file")
    parser.add_argument("--plot", type=Path, default=None, help="write an overview PNG here")
    args = parser.parse_args(argv)

    config = TwinConfig() if args.grid is None else TwinConfig(grid=tuple(args.grid))
    start = time.perf_counter()
    sample = make_twin(args.seed, config)
    print(f"generated in {time.perf_counter() - start:.2f} s: {sample.dataset.summary()}")
    if args.out is not None:
        from envs.data.loaders import save_dataset

        save_dataset(sample.dataset, args.out)
        print(f"wrote {args.out}")
    if args.plot is not None:
        print(f"wrote {plot_overview(sample, args.plot)}")


if __name__ == "__main__":
    main()
