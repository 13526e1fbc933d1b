"""The contract every reconstructor follows, and the voltage-block layout it is built on.

A measurement is one pixel at one *voltage block*: a subset of the first spectral axis (the
voltage axis) with every remaining spectral entry (e.g. all read-out times). Reconstructors work
on plain arrays: they never import ``envs`` or ``agents``.

Indexing conventions used throughout the project:

- pixel ``p = i * ny + j`` for grid row ``i`` and column ``j`` (row-major over the first two axes);
- a tensor in *block layout* has shape ``(P, n_blocks, F_b)``: pixel, block, and the block's
  features (its voltages times the remaining spectral entries, C order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

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
    """How the voltage axis is split into equally sized measurement blocks.

    Parameters
    ----------
    n_voltages
        Length of the first spectral axis.
    n_blocks
        Number of blocks; must divide ``n_voltages``.
    scheme
        ``"spread"`` (default): consecutive pairs of voltages ``(0, 1), (2, 3), ...`` are dealt
        to the blocks in turn, so with a pulse sequence of alternating sign every block holds
        both polarities over the whole amplitude range (falls back to ``"interleaved"`` when the
        pairs cannot be dealt evenly). ``"interleaved"``: block ``b`` holds voltages ``b, b +
        n_blocks, ...``; with alternating signs and an even ``n_blocks`` each block then sees one
        polarity only, which leaves the other half of a spectrum unconstrained at a pixel
        measured with one block. ``"contiguous"``: runs of neighbouring voltages.
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
        if self.n_voltages % self.n_blocks:
            divisors = [d for d in range(1, self.n_voltages + 1) if self.n_voltages % d == 0]
            raise ValueError(
                f"{self.n_blocks} blocks do not divide the voltage axis of length "
                f"{self.n_voltages}; choose one of {divisors}"
            )
        if self.scheme not in BLOCK_SCHEMES:
            raise ValueError(f"unknown block scheme {self.scheme!r}; choose one of {BLOCK_SCHEMES}")

    @property
    def effective_scheme(self) -> str:
        """The scheme actually used (``"spread"`` needs an even number of pairs per block)."""
        if self.scheme == "spread" and (
            self.block_size % 2 or (self.n_voltages // 2) % self.n_blocks
        ):
            return "interleaved"
        return self.scheme

    @property
    def block_size(self) -> int:
        """Voltages per block."""
        return self.n_voltages // self.n_blocks

    def voltages(self, block: int) -> np.ndarray:
        """Indices along the voltage axis that block ``block`` measures, ascending."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} out of range [0, {self.n_blocks})")
        scheme = self.effective_scheme
        if scheme == "spread":
            pairs = np.arange(block, self.n_voltages // 2, self.n_blocks)
            return np.sort(np.concatenate([2 * pairs, 2 * pairs + 1]))
        if scheme == "interleaved":
            return np.arange(block, self.n_voltages, self.n_blocks)
        return np.arange(block * self.block_size, (block + 1) * self.block_size)

    def permutation(self) -> np.ndarray:
        """Voltage order that groups the blocks: ``voltages(0)``, then ``voltages(1)``, ..."""
        return np.concatenate([self.voltages(b) for b in range(self.n_blocks)])

    def to_blocks(self, tensor: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``(X, Y, V, *rest)`` -> ``(X * Y, n_blocks, block_size * prod(rest))``."""
        x, y, v = tensor.shape[:3]
        if v != self.n_voltages:
            raise ValueError(f"voltage axis has {v} entries, layout expects {self.n_voltages}")
        perm = self.permutation()
        if isinstance(tensor, torch.Tensor):
            perm = torch.as_tensor(perm, device=tensor.device)
        return tensor[:, :, perm].reshape(x * y, self.n_blocks, -1)

    def from_blocks(
        self, blocks: np.ndarray | torch.Tensor, spatial_shape: tuple[int, int], rest: Sequence[int]
    ) -> np.ndarray | torch.Tensor:
        """Inverse of :meth:`to_blocks`: back to ``(X, Y, V, *rest)``."""
        x, y = spatial_shape
        grouped = blocks.reshape(x, y, self.n_voltages, *rest)
        inverse = np.argsort(self.permutation())
        if isinstance(grouped, torch.Tensor):
            inverse = torch.as_tensor(inverse, device=grouped.device)
        return grouped[:, :, inverse]


def principal_scores(centred: torch.Tensor, q: int) -> torch.Tensor:
    """``(P, q)`` scores ``U[:, :q] * S[:q]`` of the leading principal components of a centred
    ``(P, F)`` matrix, from a float64 eigendecomposition of its smaller Gram matrix.

    Why not ``torch.linalg.svd``: in float32 the MKL SVD failed to converge on perfectly finite
    estimates (``LinAlgError``, "SLASCL parameter 4" on a 256 x 2048 linear-interpolation
    estimate of a 16 x 16 twin), and in float64 it took twice as long. The Gram route gives the
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
        self.device = resolve_device(device)
        self.dtype = dtype
        self.n_pixels = self.spatial_shape[0] * self.spatial_shape[1]
        self.n_blocks = self.layout.n_blocks
        self.block_features = self.layout.block_size * int(
            np.prod(self.spectral_shape[1:], dtype=np.int64)
        )
        self.measured = torch.zeros(self.n_pixels, self.n_blocks, dtype=torch.bool)

    # ----------------------------------------------------------------- validation helper
    def _check_measurement(
        self, pixel: int, block: int, values: np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Validate one measurement; return its values flattened to ``(F_b,)`` as float64 CPU."""
        if not 0 <= int(pixel) < self.n_pixels:
            raise IndexError(f"pixel {pixel} out of range [0, {self.n_pixels})")
        if not 0 <= int(block) < self.n_blocks:
            raise IndexError(f"block {block} out of range [0, {self.n_blocks})")
        if self.measured[pixel, block]:
            raise ValueError(f"pixel {pixel} block {block} was already measured")
        expected = (self.layout.block_size, *self.spectral_shape[1:])
        vals = torch.as_tensor(values, dtype=torch.float64).cpu()
        if tuple(vals.shape) != expected and tuple(vals.shape) != (self.block_features,):
            raise ValueError(f"values have shape {tuple(vals.shape)}, expected {expected}")
        vals = vals.reshape(-1)
        if not torch.isfinite(vals).all():
            raise ValueError(f"values at pixel {pixel} block {block} contain NaN or inf")
        return vals

    # ----------------------------------------------------------------- the contract
    @abstractmethod
    def reset(self) -> None:
        """Forget every measurement."""

    @abstractmethod
    def add(self, pixel: int, block: int, values: np.ndarray | torch.Tensor) -> None:
        """Add one measurement: ``values`` of shape ``(block_size, *rest)`` (or flattened)."""

    def add_many(
        self,
        pixels: Sequence[int],
        blocks: Sequence[int],
        values: Sequence[np.ndarray] | np.ndarray,
    ) -> None:
        """Add several measurements at once (subclasses may batch the update)."""
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
