"""The contract every reconstructor follows, and the voltage-block layout it is built on.

A measurement is one pixel at one *voltage block*: a subset of the first spectral axis (the
voltage axis) with every remaining spectral entry (e.g. all read-out times). Reconstructors work
on plain arrays: they never import ``envs`` or ``agents``.

Indexing conventions used throughout the project:

- pixel ``p = i * ny + j`` for grid row ``i`` and column ``j`` (row-major over the first two axes);
- a tensor in *block layout* has shape ``(P, n_blocks, F_b)``: pixel, block, and the block's
  features (its voltage slots times the remaining spectral entries, C order); blocks of
  different sizes share one width through repeated slots (:class:`BlockLayout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when present, else CPU; anything else is passed to torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Ways of grouping the voltage axis into blocks (see :class:`BlockLayout`).
BLOCK_SCHEMES = ("spread", "interleaved", "contiguous")


@dataclass(frozen=True)
class BlockLayout:
    """How the voltage axis is split into measurement blocks, and the block-layout tensor.

    Every voltage belongs to exactly one block. When ``n_blocks`` divides ``n_voltages`` all
    blocks have ``n_voltages / n_blocks`` voltages. Otherwise their sizes differ by one: the
    first ``n_voltages % n_blocks`` blocks hold ``ceil(n_voltages / n_blocks)`` voltages, the
    others one fewer (99 voltages in 4 blocks: 25, 25, 25 and 24).

    So that a tensor in block layout stays rectangular, every block has ``block_size =
    ceil(n_voltages / n_blocks)`` *slots*; a block with one voltage fewer repeats its last
    voltage in its spare (last) slot. What each method gives:

    - :meth:`voltages`: the distinct voltages a block measures, ascending: what an instrument
      applies, and what the cost model charges (:meth:`n_applied`, :attr:`applied_counts`);
    - :meth:`to_blocks`: ``(X, Y, V, *rest)`` -> ``(X * Y, n_blocks, block_size * prod(rest))``,
      gathering every slot (a repeated voltage appears twice, or as ``spare``);
    - :meth:`from_blocks`: back to ``(X, Y, V, *rest)``, each voltage from its first slot;
    - :meth:`to_slots`: one block's measured values ``(len(voltages(block)), *rest)`` -> its
      slots ``(block_size, *rest)``, by repeating. :meth:`Reconstructor.add` does this itself, so
      values straight from an instrument can be added as they are.

    A repeated voltage counts twice wherever a block's features are summed or averaged (a
    reconstructor's fit, its per-block uncertainty); give ``to_blocks`` ``spare=nan`` for a
    reference that should score each voltage once.

    Parameters
    ----------
    n_voltages
        Length of the first spectral axis.
    n_blocks
        Number of blocks, from 1 to ``n_voltages``.
    scheme
        ``"spread"`` (default): consecutive pairs of voltages ``(0, 1), (2, 3), ...`` are dealt
        to the blocks in turn, so with a pulse sequence of alternating sign every block holds
        both polarities over the whole amplitude range. When ``n_blocks`` divides the voltage
        axis but the pairs cannot be dealt evenly, it falls back to ``"interleaved"``. When
        ``n_blocks`` does not divide it, pairs are dealt for as many full rounds as there are
        (``n_voltages // (2 * n_blocks)``) and the remaining voltages one at a time in turn
        (block 0 first), which keeps the sizes within one; with no full round this is
        ``"interleaved"``. ``"interleaved"``: block ``b`` holds voltages ``b, b + n_blocks,
        ...``; with alternating signs and an even ``n_blocks`` each block then sees one polarity
        only, which leaves the other half of a spectrum unconstrained at a pixel measured with
        one block. ``"contiguous"``: runs of neighbouring voltages, the longer runs first.
        The layouts are compared in ``docs/reconstruction.md``.
    """

    n_voltages: int
    n_blocks: int
    scheme: str = "spread"

    def __post_init__(self) -> None:
        if self.n_blocks < 1 or self.n_voltages < 1:
            raise ValueError(
                f"need n_blocks >= 1 and n_voltages >= 1, got {self.n_blocks}, {self.n_voltages}"
            )
        if self.n_blocks > self.n_voltages:
            raise ValueError(
                f"{self.n_blocks} blocks for {self.n_voltages} voltages: every block needs at "
                f"least one voltage; choose at most {self.n_voltages} blocks"
            )
        if self.scheme not in BLOCK_SCHEMES:
            raise ValueError(f"unknown block scheme {self.scheme!r}; choose one of {BLOCK_SCHEMES}")

    @property
    def is_even(self) -> bool:
        """Whether every block holds the same number of voltages (no spare slots)."""
        return self.n_voltages % self.n_blocks == 0

    @property
    def effective_scheme(self) -> str:
        """The scheme actually used: ``"spread"`` falls back to ``"interleaved"`` where it
        deals no pair (see the class notes)."""
        if self.scheme != "spread":
            return self.scheme
        pairs_deal_evenly = self.n_voltages % (2 * self.n_blocks) == 0
        full_rounds = self.n_voltages // (2 * self.n_blocks)
        if pairs_deal_evenly or (not self.is_even and full_rounds > 0):
            return "spread"
        return "interleaved"

    @property
    def block_size(self) -> int:
        """Slots per block, ``ceil(n_voltages / n_blocks)``: the voltages of the largest block,
        and the width (in voltages) of a block in block layout."""
        return -(-self.n_voltages // self.n_blocks)

    @cached_property
    def block_of_voltage(self) -> np.ndarray:
        """``(n_voltages,)`` the block each voltage belongs to."""
        v, nb = np.arange(self.n_voltages), self.n_blocks
        scheme = self.effective_scheme
        if scheme == "spread":
            dealt_in_pairs = 2 * nb * (self.n_voltages // (2 * nb))
            return np.where(v < dealt_in_pairs, (v // 2) % nb, (v - dealt_in_pairs) % nb)
        if scheme == "interleaved":
            return v % nb
        return np.repeat(np.arange(nb), self.applied_counts)  # contiguous, longer runs first

    @cached_property
    def applied_counts(self) -> np.ndarray:
        """``(n_blocks,)`` voltages each block measures (they sum to ``n_voltages``)."""
        larger = self.n_voltages % self.n_blocks
        return self.n_voltages // self.n_blocks + (np.arange(self.n_blocks) < larger)

    def n_applied(self, block: int) -> int:
        """Voltages block ``block`` measures: ``len(voltages(block))``."""
        return len(self.voltages(block))

    def voltages(self, block: int) -> np.ndarray:
        """Indices along the voltage axis that block ``block`` measures, ascending, distinct."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} out of range [0, {self.n_blocks})")
        return np.flatnonzero(self.block_of_voltage == block)

    def slot_positions(self, block: int) -> np.ndarray:
        """``(block_size,)`` for each slot of block ``block``, its position in
        ``voltages(block)``: ``0, 1, ..., n - 1``, then ``n - 1`` again in a spare slot."""
        return np.minimum(np.arange(self.block_size), self.n_applied(block) - 1)

    @cached_property
    def spare_slots(self) -> np.ndarray:
        """Bool ``(n_blocks, block_size)``: True for a slot that repeats its block's last
        voltage (none when the blocks are even)."""
        return np.arange(self.block_size)[None, :] >= self.applied_counts[:, None]

    @cached_property
    def _slot_voltages(self) -> np.ndarray:
        return np.concatenate(
            [self.voltages(b)[self.slot_positions(b)] for b in range(self.n_blocks)]
        )

    def permutation(self) -> np.ndarray:
        """The voltage of every slot, block after block: ``(n_blocks * block_size,)``; a
        permutation of the voltage axis when the blocks are even."""
        return self._slot_voltages.copy()

    @cached_property
    def _first_slots(self) -> np.ndarray:
        # np.unique returns the voltages sorted, 0 .. V - 1, each with its first slot.
        return np.unique(self._slot_voltages, return_index=True)[1]

    def to_blocks(
        self, tensor: np.ndarray | torch.Tensor, spare: float | None = None
    ) -> np.ndarray | torch.Tensor:
        """``(X, Y, V, *rest)`` -> ``(X * Y, n_blocks, block_size * prod(rest))``, every slot
        gathered; ``spare`` (e.g. NaN) replaces the repeated voltage in spare slots."""
        x, y, v = tensor.shape[:3]
        if v != self.n_voltages:
            raise ValueError(f"voltage axis has {v} entries, layout expects {self.n_voltages}")
        slots, spare_slots = self._slot_voltages, self.spare_slots
        if isinstance(tensor, torch.Tensor):
            slots = torch.as_tensor(slots, device=tensor.device)
            spare_slots = torch.as_tensor(spare_slots, device=tensor.device)
        blocks = tensor[:, :, slots].reshape(x * y, self.n_blocks, -1)
        if spare is not None and not self.is_even:
            by_slot = blocks.reshape(x * y, self.n_blocks, self.block_size, -1)
            by_slot[:, spare_slots] = spare  # a view: this writes into ``blocks``
        return blocks

    def from_blocks(
        self, blocks: np.ndarray | torch.Tensor, spatial_shape: tuple[int, int], rest: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """Inverse of :meth:`to_blocks`: back to ``(X, Y, V, *rest)``, each voltage taken from
        its first slot."""
        x, y = spatial_shape
        grouped = blocks.reshape(x, y, self.n_blocks * self.block_size, *rest)
        first = self._first_slots
        if isinstance(grouped, torch.Tensor):
            first = torch.as_tensor(first, device=grouped.device)
        return grouped[:, :, first]

    def to_slots(self, block: int, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """One block's values ``(len(voltages(block)), *rest)`` in its slot layout
        ``(block_size, *rest)``: the last voltage's values repeated in a spare slot."""
        n = self.n_applied(block)
        if values.shape[0] != n:
            raise ValueError(
                f"block {block} measures {n} voltages, got values of shape {tuple(values.shape)}"
            )
        positions = self.slot_positions(block)
        if isinstance(values, torch.Tensor):
            positions = torch.as_tensor(positions, device=values.device)
        return values[positions]


@dataclass(frozen=True)
class SegmentedLayout(BlockLayout):
    """A :class:`BlockLayout` whose blocks are split into equal segments of the next axis.

    Where a measurement may read only the first part of each curve (a *read window*), the
    smallest piece of data is one block of voltages over one *segment* of the time axis: a
    *unit*. Folding the segments into the voltage axis, ``(X, Y, V, T, *more)`` ->
    ``(X, Y, V * S, T / S, *more)`` (a reshape: virtual voltage ``v * S + s`` holds reads
    ``s * T / S`` to ``(s + 1) * T / S`` of voltage ``v``), makes every unit an ordinary block of
    this layout, so every reconstructor takes partly read curves without knowing about time:
    unit ``u = block * S + s`` holds segment ``s`` of every voltage of ``block``.

    Build it with :meth:`split`; :meth:`fold` and :meth:`unfold` convert tensors.

    Parameters
    ----------
    n_voltages, n_blocks
        Of the folded axis: ``V * n_segments`` and ``base blocks * n_segments``.
    scheme
        The base layout's scheme.
    n_segments
        Segments per curve, ``S``.
    """

    n_segments: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.n_segments
        if s < 1 or self.n_voltages % s or self.n_blocks % s:
            raise ValueError(
                f"{s} segments must divide both {self.n_voltages} folded voltages and "
                f"{self.n_blocks} units"
            )

    @classmethod
    def split(cls, base: BlockLayout, n_segments: int) -> SegmentedLayout:
        """``base``'s blocks, each split into ``n_segments`` units."""
        if isinstance(base, SegmentedLayout):
            raise ValueError("the layout is segmented already")
        return cls(
            base.n_voltages * n_segments, base.n_blocks * n_segments, base.scheme, n_segments
        )

    @cached_property
    def base(self) -> BlockLayout:
        """The unsplit voltage blocks."""
        s = self.n_segments
        return BlockLayout(self.n_voltages // s, self.n_blocks // s, self.scheme)

    @property
    def is_even(self) -> bool:
        return self.base.is_even

    @property
    def effective_scheme(self) -> str:
        return self.base.effective_scheme

    @cached_property
    def block_of_voltage(self) -> np.ndarray:
        s = self.n_segments
        folded = np.arange(self.n_voltages)
        return self.base.block_of_voltage[folded // s] * s + folded % s

    @cached_property
    def applied_counts(self) -> np.ndarray:
        return np.repeat(self.base.applied_counts, self.n_segments)

    def fold(self, tensor: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``(X, Y, V, T, *more)`` -> ``(X, Y, V * S, T / S, *more)`` (a reshape)."""
        x, y, v, t, *more = tensor.shape
        if v * self.n_segments != self.n_voltages or t % self.n_segments:
            raise ValueError(
                f"a tensor of shape {tuple(tensor.shape)} does not fold into "
                f"{self.n_segments} segments of {self.n_voltages // self.n_segments} voltages"
            )
        return tensor.reshape(x, y, self.n_voltages, t // self.n_segments, *more)

    def unfold(self, tensor: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Inverse of :meth:`fold`."""
        x, y, _, length, *more = tensor.shape
        s = self.n_segments
        return tensor.reshape(x, y, self.n_voltages // s, length * s, *more)


def principal_scores(centred: torch.Tensor, q: int) -> torch.Tensor:
    """``(P, q)`` scores ``U[:, :q] * S[:q]`` of the leading principal components of a centred
    ``(P, F)`` matrix, from a float64 eigendecomposition of its smaller Gram matrix.

    Why not ``torch.linalg.svd``: in float32 the MKL SVD failed to converge on perfectly finite
    estimates (``LinAlgError``, "SLASCL parameter 4" on a 256 x 2048 linear-interpolation
    estimate of a 16 x 16 twin), and in float64 it was slower. The Gram route gives the
    same scores (up to each component's sign) and costs one ``min(P, F)``-sized ``eigh``.
    """
    x = centred.to(torch.float64)
    p, f = x.shape
    if p <= f:
        evals, evecs = torch.linalg.eigh(x @ x.T)  # ascending; U = evecs, S^2 = evals
        top = torch.arange(p - 1, p - 1 - q, -1, device=x.device)
        return evecs[:, top] * evals[top].clamp_min(0.0).sqrt()
    _, evecs = torch.linalg.eigh(x.T @ x)  # right singular vectors V; scores X V = U S
    return x @ evecs[:, torch.arange(f - 1, f - 1 - q, -1, device=x.device)]


class Reconstructor(ABC):
    """Estimates a full ``(X, Y, V, *rest)`` tensor from (pixel, voltage-block) measurements.

    Subclasses implement :meth:`reset`, :meth:`add` and :meth:`estimate_blocks`; everything else
    has a generic default that subclasses may replace with a faster path.

    Parameters
    ----------
    spatial_shape
        ``(X, Y)`` of the scan grid.
    spectral_shape
        ``(V, *rest)``: voltage axis first, then e.g. read-out times.
    layout
        The voltage blocks; default one block holding every voltage (pixel-only acquisition).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
    dtype
        Floating type of estimates; numerically delicate steps may use float64 internally.

    Behaviour on bad input (documented contract, tested): an out-of-range pixel or block, values
    of the wrong shape, or values containing NaN/inf raise ``ValueError``/``IndexError`` and leave
    the state unchanged; adding a block that was already measured raises ``ValueError``.
    """

    name: str = "base"

    def __init__(
        self,
        spatial_shape: tuple[int, int],
        spectral_shape: Sequence[int],
        layout: BlockLayout | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.spatial_shape = (int(spatial_shape[0]), int(spatial_shape[1]))
        self.spectral_shape = tuple(int(s) for s in spectral_shape)
        if len(self.spectral_shape) < 1:
            raise ValueError("spectral_shape needs at least the voltage axis")
        self.layout = layout or BlockLayout(self.spectral_shape[0], 1)
        if self.layout.n_voltages != self.spectral_shape[0]:
            raise ValueError(
                f"layout covers {self.layout.n_voltages} voltages, spectral shape starts with "
                f"{self.spectral_shape[0]}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.n_pixels = self.spatial_shape[0] * self.spatial_shape[1]
        self.n_blocks = self.layout.n_blocks
        self.block_features = self.layout.block_size * int(
            np.prod(self.spectral_shape[1:], dtype=np.int64)
        )
        self.measured = torch.zeros(self.n_pixels, self.n_blocks, dtype=torch.bool)

    # ----------------------------------------------------------------- validation helpers
    def _check_measurement(
        self, pixel: int, block: int, values: np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Validate one measurement; return its values in slot layout, flattened to ``(F_b,)``,
        as float64 CPU."""
        if not 0 <= int(pixel) < self.n_pixels:
            raise IndexError(f"pixel {pixel} out of range [0, {self.n_pixels})")
        if not 0 <= int(block) < self.n_blocks:
            raise IndexError(f"block {block} out of range [0, {self.n_blocks})")
        if self.measured[pixel, block]:
            raise ValueError(f"pixel {pixel} block {block} was already measured")
        vals = self._slot_values(int(block), values)
        if not torch.isfinite(vals).all():
            raise ValueError(f"values at pixel {pixel} block {block} contain NaN or inf")
        return vals

    def _slot_values(self, block: int, values: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One block's values as float64 CPU ``(F_b,)`` in its slot layout, from the shape of
        its voltages ``(len(voltages(block)), *rest)`` (what an instrument returns), the shape of
        its slots ``(block_size, *rest)``, or either flattened; ``ValueError`` otherwise."""
        rest = self.spectral_shape[1:]
        n_applied = self.layout.n_applied(block)
        vals = torch.as_tensor(values, dtype=torch.float64).cpu()
        shape = tuple(vals.shape)
        if shape in ((self.layout.block_size, *rest), (self.block_features,)):
            return vals.reshape(-1)
        per_voltage = self.block_features // self.layout.block_size
        if shape in ((n_applied, *rest), (n_applied * per_voltage,)):
            return self.layout.to_slots(block, vals.reshape(n_applied, -1)).reshape(-1)
        expected = (n_applied, *rest)
        raise ValueError(f"values of block {block} have shape {shape}, expected {expected}")

    # ----------------------------------------------------------------- the contract
    @abstractmethod
    def reset(self) -> None:
        """Forget every measurement."""

    @abstractmethod
    def add(self, pixel: int, block: int, values: np.ndarray | torch.Tensor) -> None:
        """Add one measurement: ``values`` of shape ``(len(layout.voltages(block)), *rest)``, as
        measured, or in the block's slot layout ``(block_size, *rest)`` (or either flattened);
        see :class:`BlockLayout`."""

    def add_many(
        self,
        pixels: Sequence[int],
        blocks: Sequence[int],
        values: Sequence[np.ndarray] | np.ndarray,
    ) -> None:
        """Add several measurements at once (subclasses may batch the update); each entry of
        ``values`` in either shape :meth:`add` takes, so blocks of different sizes can be
        mixed in a list."""
        for p, b, v in zip(pixels, blocks, values, strict=True):
            self.add(int(p), int(b), v)

    @abstractmethod
    def estimate_blocks(self) -> torch.Tensor:
        """The current estimate in block layout, ``(P, n_blocks, F_b)``; measured blocks hold
        their measured values."""

    def predict_block(self, pixel: int, block: int) -> torch.Tensor:
        """The current estimate of one block, ``(F_b,)`` (its measured values if measured).
        Default: read from :meth:`estimate_blocks`; models can give it without the full
        tensor."""
        return self.estimate_blocks()[int(pixel), int(block)]

    def pixel_energy(self) -> torch.Tensor:
        """``(P,)`` float64 sum of squares of each pixel's estimated spectrum over every block
        (measured entries with their measured values; NaN entries, e.g. lost blocks, count as
        0). Default: from :meth:`estimate_blocks`; low-rank models give it without the tensor."""
        return self.estimate_blocks().double().square().nan_to_num(0.0).sum(dim=(1, 2))

    def estimate(self) -> torch.Tensor:
        """The current estimate as ``(X, Y, V, *rest)``."""
        return self.layout.from_blocks(
            self.estimate_blocks(), self.spatial_shape, self.spectral_shape[1:]
        )

    def uncertainty(self) -> torch.Tensor:
        """Predictive variance per (pixel, block), ``(P, n_blocks)``, averaged over the block's
        features, in squared data units; zero for measured blocks. Default: unknown (ones where
        unmeasured), for reconstructors without a probabilistic model."""
        return (~self.measured).to(self.dtype)

    def component_maps(self, n: int) -> torch.Tensor:
        """``(n, X, Y)`` maps of the estimate's leading spectral components (for observations).
        Default: principal components of the current estimate (:func:`principal_scores`)."""
        est = self.estimate_blocks().reshape(self.n_pixels, -1)
        q = min(n, est.shape[0], est.shape[1])
        scores = principal_scores(est - est.mean(0, keepdim=True), q)
        maps = scores.T.to(torch.float32).reshape(q, *self.spatial_shape)
        if q < n:
            maps = torch.cat([maps, maps.new_zeros(n - q, *self.spatial_shape)])
        return maps

    def r2(self, reference_blocks: torch.Tensor) -> float:
        """R^2 of the estimate against a reference in block layout (NaN entries ignored), with
        the sum of squares around the per-feature spatial mean. Subclasses with a low-rank
        estimate override this with a path that never builds the full tensor."""
        from reconstruct.metrics import r2_score

        return r2_score(reference_blocks, self.estimate_blocks())

    @property
    def n_measured(self) -> int:
        """Number of (pixel, block) measurements taken."""
        return int(self.measured.sum())
