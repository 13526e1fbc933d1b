"""The observation contract: which planes an acquisition observation holds, in which order.

An observation is ``{"planes": (C, X, Y), "scalars": (S,)}``. :class:`ObservationSpec` names
every plane and scalar, so code reads them by name (``spec.planes_of("uncertainty")``) instead of
by position, a trained model saves the spec it was trained on, and loading it onto an env with
another spec fails with a message that names the difference (:meth:`ObservationSpec.mismatch`).

Planes, in order (each in [-1, 1], float32):

- ``measured``, one per voltage block: 1 where the block is measured;
- ``component``, ``n_components`` of them: the reconstruction's leading spectral component maps,
  each divided by its largest magnitude;
- ``uncertainty``, one per block: the predictive variance divided by its largest value;
- optional planes, those named in ``optional``, in the order of :data:`OPTIONAL_PLANES`:

  - ``surprise``: the local surprise (:mod:`envs.acquisition.surprise`), the smoothed log ratio of
  each
    measured block's squared prediction error to its predicted variance, divided by
    ``SURPRISE_PLANE_SCALE`` and clipped;
  - ``energy``: the log of each pixel's estimated signal energy relative to the largest
    (:mod:`envs.acquisition.energy`), divided by ``ENERGY_PLANE_SCALE`` and clipped to [-1, 0];
  - ``calibrated-energy``: the same times the power of the energy fitted to the sample's
    measured blocks (:func:`envs.acquisition.energy.energy_exponent`); it needs ``surprise`` and
    replaces ``energy``;
- ``tip``: one-hot position of the tip, always last.

Scalars (:data:`SCALARS`, each in [0, 1]): fraction of the budget used, fraction of blocks
measured, and the recent relative change of the component maps.

Per-block planes. The groups in :data:`PER_BLOCK_PLANES` hold one plane per voltage block, in
block order; every other plane describes the pixel as a whole. A network that treats the blocks
alike (one shared encoder per block, as ``agents.channel_policy`` does) reads them through
:meth:`ObservationSpec.block_planes` and :meth:`ObservationSpec.shared_planes`, and finds the
number of blocks of an observation it was not trained on with
:meth:`ObservationSpec.for_plane_count`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from gymnasium import spaces

#: Optional planes, in the order they appear (before the tip plane).
OPTIONAL_PLANES = ("surprise", "energy", "calibrated-energy")
#: The scalars, in order.
SCALARS = ("budget_used", "fraction_measured", "recent_change")
#: Plane groups with one plane per voltage block (block order); all other planes are per pixel.
PER_BLOCK_PLANES = ("measured", "uncertainty")


@dataclass(frozen=True)
class ObservationSpec:
    """Names and order of an acquisition observation's planes and scalars.

    Parameters
    ----------
    n_blocks
        Voltage blocks per pixel (one ``measured`` and one ``uncertainty`` plane each).
    n_components
        Component maps shown.
    optional
        Names from :data:`OPTIONAL_PLANES`, in any order (stored in the canonical one).
    """

    n_blocks: int
    n_components: int = 3
    optional: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.optional) - set(OPTIONAL_PLANES))
        if unknown:
            raise ValueError(
                f"unknown observation plane(s) {unknown}; the optional planes are "
                f"{list(OPTIONAL_PLANES)}"
            )
        if "calibrated-energy" in self.optional:
            if "energy" in self.optional:
                raise ValueError("'calibrated-energy' replaces 'energy': name one of them")
            if "surprise" not in self.optional:
                raise ValueError(
                    "'calibrated-energy' fits the energy's power on the surprise of measured "
                    "blocks: it needs the 'surprise' plane too"
                )
        for name, value in (("n_blocks", self.n_blocks), ("n_components", self.n_components)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        canonical = tuple(p for p in OPTIONAL_PLANES if p in self.optional)
        object.__setattr__(self, "optional", canonical)
        object.__setattr__(self, "n_blocks", int(self.n_blocks))
        object.__setattr__(self, "n_components", int(self.n_components))

    # ------------------------------------------------------------------ names and positions
    @property
    def plane_names(self) -> tuple[str, ...]:
        """Every plane's name, e.g. ``("measured/0", ..., "component/0", ..., "tip")``."""
        return (
            *(f"measured/{b}" for b in range(self.n_blocks)),
            *(f"component/{c}" for c in range(self.n_components)),
            *(f"uncertainty/{b}" for b in range(self.n_blocks)),
            *self.optional,
            "tip",
        )

    @property
    def n_planes(self) -> int:
        return len(self.plane_names)

    def has(self, plane: str) -> bool:
        """Whether the observation holds the plane (or plane group) ``plane``."""
        return any(name.split("/")[0] == plane for name in self.plane_names)

    def planes_of(self, plane: str) -> slice:
        """Positions of a plane group (``"measured"``, ``"component"``, ``"uncertainty"``) or of
        a single plane (``"surprise"``, ``"tip"``, ...) as a slice of the plane axis."""
        positions = [i for i, name in enumerate(self.plane_names) if name.split("/")[0] == plane]
        if not positions:
            raise KeyError(f"the observation has no {plane!r} plane; it has {self.describe()}")
        return slice(positions[0], positions[-1] + 1)

    def block_planes(self) -> np.ndarray:
        """``(len(PER_BLOCK_PLANES), n_blocks)`` plane positions: row ``g`` holds group ``g``'s
        plane of every block, e.g. ``[[measured/0, ...], [uncertainty/0, ...]]``."""
        names = self.plane_names
        return np.asarray(
            [[names.index(f"{group}/{b}") for b in range(self.n_blocks)] for group in
             PER_BLOCK_PLANES]
        )  # fmt: skip

    def shared_planes(self) -> np.ndarray:
        """Positions of the planes that are not per block (component maps, optional planes,
        tip), in plane order."""
        return np.asarray(
            [i for i, name in enumerate(self.plane_names)
             if name.split("/")[0] not in PER_BLOCK_PLANES]
        )  # fmt: skip

    def for_plane_count(self, n_planes: int) -> ObservationSpec:
        """This contract with as many blocks as an observation of ``n_planes`` planes holds
        (its per-pixel planes unchanged); a ``ValueError`` when no block count fits."""
        n_shared = len(self.shared_planes())
        n_blocks, rest = divmod(int(n_planes) - n_shared, len(PER_BLOCK_PLANES))
        if rest or n_blocks < 1:
            raise ValueError(
                f"an observation of {n_planes} planes fits no block count of "
                f"{self.n_components} component maps and optional planes "
                f"[{', '.join(self.optional) or 'none'}] ({n_shared} per-pixel planes and "
                f"{len(PER_BLOCK_PLANES)} per block)"
            )
        return replace(self, n_blocks=n_blocks)

    def describe(self) -> str:
        """Short text: ``4 blocks, 3 component maps, optional planes [surprise]``."""
        optional = ", ".join(self.optional) if self.optional else "none"
        return (
            f"{self.n_blocks} blocks, {self.n_components} component maps, "
            f"optional planes [{optional}]"
        )

    # ------------------------------------------------------------------ building
    def space(self, grid_shape: tuple[int, int]) -> spaces.Dict:
        """The Gymnasium space of observations on a grid of ``grid_shape``."""
        return spaces.Dict(
            {
                "planes": spaces.Box(-1.0, 1.0, (self.n_planes, *grid_shape), np.float32),
                "scalars": spaces.Box(0.0, 1.0, (len(SCALARS),), np.float32),
            }
        )

    def assemble(self, groups: dict[str, np.ndarray]) -> np.ndarray:
        """The planes ``(C, X, Y)`` from named groups: ``measured`` ``(n_blocks, X, Y)``,
        ``component``, ``uncertainty``, each optional plane and ``tip`` ``(1, X, Y)``."""
        order = ("measured", "component", "uncertainty", *self.optional, "tip")
        missing = [name for name in order if name not in groups]
        if missing:
            raise KeyError(f"planes {missing} were not given")
        planes = np.concatenate([groups[name] for name in order]).astype(np.float32, copy=False)
        if planes.shape[0] != self.n_planes:
            raise ValueError(f"{planes.shape[0]} planes assembled, the spec has {self.n_planes}")
        return planes

    # ------------------------------------------------------------------ saving and checking
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, saved with every model."""
        return {
            "n_blocks": self.n_blocks,
            "n_components": self.n_components,
            "optional": list(self.optional),
            "scalars": list(SCALARS),
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ObservationSpec:
        scalars = tuple(stored.get("scalars", SCALARS))
        if scalars != SCALARS:
            raise ValueError(
                f"stored observation scalars {list(scalars)} differ from {list(SCALARS)}"
            )
        return cls(int(stored["n_blocks"]), int(stored["n_components"]), tuple(stored["optional"]))

    def mismatch(self, other: ObservationSpec, compare_blocks: bool = True) -> str | None:
        """What differs between ``self`` (e.g. a model's spec) and ``other`` (an env's), in
        words; None when they are the same contract. ``compare_blocks=False`` ignores the
        number of blocks (for a model whose weights do not depend on it)."""
        differences = []
        if compare_blocks and self.n_blocks != other.n_blocks:
            differences.append(f"{self.n_blocks} voltage blocks against {other.n_blocks}")
        if self.n_components != other.n_components:
            differences.append(
                f"{self.n_components} component maps against {other.n_components}"
            )
        if self.optional != other.optional:
            differences.append(
                f"optional planes [{', '.join(self.optional) or 'none'}] against "
                f"[{', '.join(other.optional) or 'none'}]"
            )
        return "; ".join(differences) or None
