"""Cheap baseline reconstructors: spatial interpolation of each voltage block on its own.

Each block is filled in from the pixels where that block was measured, with no model of how
blocks or spectral entries relate, so these baselines handle partial spectra trivially and show
what a policy gains from the GP and low-rank reconstructors. Every interpolator is a sparse
linear map from the measured pixels to the unmeasured ones (``estimate = W @ values``), which
keeps the work vectorised over all of a block's features at once and lets blocks measured at
the same pixels share one ``W``.

Updates are lazy: :meth:`add` stores the values and marks the block stale; the next
:meth:`estimate_blocks` recomputes only the stale blocks.

A block that has not been measured anywhere is estimated as 0 (no information).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import Delaunay, QhullError, cKDTree

from reconstruct.base import BlockLayout, Reconstructor
from reconstruct.checks import check_int, check_real


class _BlockwiseInterpolator(Reconstructor):
    """Shared machinery: value store, staleness tracking and the cached estimate.

    Subclasses implement :meth:`_weights`, the sparse ``(n_query, n_known)`` map from values
    at known pixel coordinates to values at query coordinates.
    """

    def __init__(
        self,
        spatial_shape: tuple[int, int],
        spectral_shape: Sequence[int],
        layout: BlockLayout | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(spatial_shape, spectral_shape, layout, device=device, dtype=dtype)
        nx, ny = self.spatial_shape
        grid_i, grid_j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        # Pixel p = i * ny + j sits at grid coordinates (i, j).
        self._coords = np.stack([grid_i.ravel(), grid_j.ravel()], axis=1).astype(np.float64)
        self.reset()

    def reset(self) -> None:
        self.measured.zero_()
        self._values = np.zeros((self.n_pixels, self.n_blocks, self.block_features), np.float64)
        self._stale = np.ones(self.n_blocks, dtype=bool)
        self._estimate = torch.zeros(
            self.n_pixels, self.n_blocks, self.block_features, dtype=self.dtype, device=self.device
        )

    def add(self, pixel: int, block: int, values: np.ndarray | torch.Tensor) -> None:
        vals = self._check_measurement(pixel, block, values)
        self._values[pixel, block] = vals.numpy()
        self.measured[pixel, block] = True
        self._stale[block] = True

    def add_many(
        self,
        pixels: Sequence[int],
        blocks: Sequence[int],
        values: Sequence[np.ndarray] | np.ndarray,
    ) -> None:
        """Add several measurements at once, validated together: on any bad entry nothing is
        added and the error names the first offending measurement."""
        pix = np.asarray(pixels, dtype=np.int64).reshape(-1)
        blk = np.asarray(blocks, dtype=np.int64).reshape(-1)
        if pix.size != blk.size or len(values) != pix.size:
            raise ValueError(
                f"got {pix.size} pixels, {blk.size} blocks and {len(values)} value arrays; "
                "they must match"
            )
        if pix.size == 0:
            return
        for bad, what, limit in ((pix, "pixel", self.n_pixels), (blk, "block", self.n_blocks)):
            outside = np.flatnonzero((bad < 0) | (bad >= limit))
            if outside.size:
                raise IndexError(f"{what} {bad[outside[0]]} out of range [0, {limit})")
        # Each entry as measured or in slot layout; blocks of uneven layouts differ in size.
        vals = np.stack(
            [self._slot_values(int(b), v).numpy() for b, v in zip(blk, values, strict=True)]
        )
        not_finite = np.flatnonzero(~np.isfinite(vals).all(axis=1))
        if not_finite.size:
            i = not_finite[0]
            raise ValueError(f"values at pixel {pix[i]} block {blk[i]} contain NaN or inf")
        flat = pix * self.n_blocks + blk
        seen = self.measured.numpy().reshape(-1)[flat]
        _, first = np.unique(flat, return_index=True)
        repeated = np.ones(flat.size, dtype=bool)
        repeated[first] = False
        twice = np.flatnonzero(seen | repeated)
        if twice.size:
            i = twice[0]
            raise ValueError(f"pixel {pix[i]} block {blk[i]} was already measured")
        self._values[pix, blk] = vals
        self.measured[torch.as_tensor(pix), torch.as_tensor(blk)] = True
        self._stale[np.unique(blk)] = True

    def estimate_blocks(self) -> torch.Tensor:
        """The estimate ``(P, n_blocks, F_b)``; measured blocks hold their measured values.

        The returned tensor is the reconstructor's cache: read it, do not modify it.
        """
        stale = np.flatnonzero(self._stale)
        if stale.size == 0:
            return self._estimate
        measured = self.measured.numpy()
        # Blocks measured at the same pixels share one interpolation map: group them.
        groups: dict[bytes, list[int]] = {}
        for b in stale:
            groups.setdefault(np.packbits(measured[:, b]).tobytes(), []).append(int(b))
        for blocks in groups.values():
            known = np.flatnonzero(measured[:, blocks[0]])
            filled = np.zeros((self.n_pixels, len(blocks), self.block_features), np.float64)
            if known.size:
                values = self._values[known][:, blocks]  # (n_known, len(blocks), F)
                filled[known] = values
                query = np.flatnonzero(~measured[:, blocks[0]])
                if query.size:
                    flat = values.reshape(known.size, -1)
                    estimate = self._interpolate(self._coords[known], flat, self._coords[query])
                    filled[query] = estimate.reshape(query.size, len(blocks), -1)
            self._estimate[:, blocks] = torch.as_tensor(filled, dtype=self.dtype).to(self.device)
        self._stale[:] = False
        return self._estimate

    def _interpolate(self, known: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Values ``(n_known, F)`` at coordinates ``known`` -> ``(n_query, F)`` at ``query``."""
        return np.asarray(self._weights(known, query) @ values)

    def _weights(self, known: np.ndarray, query: np.ndarray) -> sp.csr_matrix:
        """Sparse ``(n_query, n_known)`` interpolation map; subclasses that do not override
        :meth:`_interpolate` must implement it."""
        raise NotImplementedError(f"{type(self).__name__} defines no interpolation weights")


def _nearest_weights(known: np.ndarray, query: np.ndarray) -> sp.csr_matrix:
    """One-hot rows selecting each query point's nearest known point."""
    _, nearest = cKDTree(known).query(query, k=1)
    rows = np.arange(len(query))
    return sp.csr_matrix((np.ones(len(query)), (rows, nearest)), shape=(len(query), len(known)))


class MeanSpectrum(_BlockwiseInterpolator):
    """Every unmeasured pixel gets the mean of the block's measured values (R^2 near 0).

    Parameters are those of :class:`reconstruct.base.Reconstructor`.
    """

    name = "mean"

    def _interpolate(self, known: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        return np.broadcast_to(values.mean(axis=0), (len(query), values.shape[1]))


class NearestNeighbour(_BlockwiseInterpolator):
    """Each unmeasured pixel copies the nearest pixel where the block was measured.

    Parameters are those of :class:`reconstruct.base.Reconstructor`.
    """

    name = "nearest"

    def _weights(self, known: np.ndarray, query: np.ndarray) -> sp.csr_matrix:
        return _nearest_weights(known, query)


class InverseDistance(_BlockwiseInterpolator):
    """Inverse-distance weighting over the ``k`` nearest measured pixels.

    Parameters
    ----------
    spatial_shape, spectral_shape, layout, device, dtype
        As for :class:`reconstruct.base.Reconstructor`.
    k
        Number of nearest measured pixels averaged (fewer when fewer are measured).
    power
        Weights are ``distance ** -power``.
    """

    name = "idw"

    def __init__(
        self,
        spatial_shape: tuple[int, int],
        spectral_shape: Sequence[int],
        layout: BlockLayout | None = None,
        *,
        k: int = 8,
        power: float = 2.0,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.k = check_int("k", k, 1)  # neighbours
        self.power = check_real("power", power, "a positive number", lambda x: x > 0)
        super().__init__(spatial_shape, spectral_shape, layout, device=device, dtype=dtype)

    def _weights(self, known: np.ndarray, query: np.ndarray) -> sp.csr_matrix:
        return inverse_distance_weights(known, query, self.k, self.power)[0]


def inverse_distance_weights(
    known: np.ndarray, query: np.ndarray, k: int, power: float
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse ``(n_query, n_known)`` inverse-distance weights over the ``k`` nearest known
    points (rows sum to 1), and each query point's distance to its nearest known point.
    A query point that is a known point takes that point's value."""
    k = min(k, len(known))
    dist, idx = cKDTree(known).query(query, k=k)
    dist, idx = dist.reshape(len(query), k), idx.reshape(len(query), k)
    exact = dist[:, 0] == 0
    w = np.where(exact[:, None], 0.0, np.where(dist > 0, dist, 1.0) ** -power)
    w[exact, 0] = 1.0
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(len(query)), k)
    weights = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(query), len(known)))
    return weights, dist[:, 0]


def _locate_grid_points(
    corners: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find, for integer grid points, a triangle containing each and its barycentric weights.

    Every triangle's bounding box is scanned for query points (vectorised over all boxes);
    with integer coordinates the orientation tests are exact, so points on edges and vertices
    are located reliably. (scipy's ``Delaunay.find_simplex`` walk was slow and erratic on grids,
    because grid points sit on edges of flat, degenerate triangles: ``docs/performance.md``.)

    Parameters
    ----------
    corners
        ``(T, 3, 2)`` triangle vertices, integer-valued.
    query
        ``(m, 2)`` query points, integer-valued and non-negative.

    Returns
    -------
    rows, triangles, weights
        Query rows found inside some triangle, the triangle of each, and ``(n, 3)`` weights of
        its vertices. A point on a shared edge is assigned to one triangle only.
    """
    q = query.astype(np.int64)
    lookup = np.full(q.max(axis=0) + 1, -1, dtype=np.int64)
    lookup[q[:, 0], q[:, 1]] = np.arange(len(q))
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = np.flatnonzero(area2 != 0)  # flat triangles contain no point of their own
    lo = np.maximum(corners[keep].min(axis=1), 0).astype(np.int64)
    hi = np.minimum(corners[keep].max(axis=1), np.array(lookup.shape) - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 0)
    sizes = extent[:, 0] * extent[:, 1]
    owner = np.repeat(np.arange(keep.size), sizes)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    gi = lo[owner, 0] + offset // extent[owner, 1]
    gj = lo[owner, 1] + offset % extent[owner, 1]
    row = lookup[gi, gj]
    hit = row >= 0
    owner, row, p = owner[hit], row[hit], np.column_stack([gi[hit], gj[hit]]).astype(np.float64)
    t = keep[owner]

    def cross(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Twice the signed area of (u, v, w)."""
        return (v[:, 0] - u[:, 0]) * (w[:, 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (w[:, 0] - u[:, 0])

    weights = np.column_stack([cross(p, b[t], c[t]), cross(a[t], p, c[t]), cross(a[t], b[t], p)])
    weights /= area2[t, None]
    inside = (weights >= 0).all(axis=1)  # exact: integer cross products
    row, t, weights = row[inside], t[inside], weights[inside]
    row, first = np.unique(row, return_index=True)
    return row, t[first], weights[first]


class LinearInterpolation(_BlockwiseInterpolator):
    """Piecewise-linear interpolation on the Delaunay triangulation of the measured pixels,
    nearest neighbour outside their convex hull (or when they are fewer than 3 or collinear).

    Parameters are those of :class:`reconstruct.base.Reconstructor`.
    """

    name = "linear"

    def _weights(self, known: np.ndarray, query: np.ndarray) -> sp.csr_matrix:
        nearest = _nearest_weights(known, query)
        if len(known) < 3:
            return nearest
        try:
            tri = Delaunay(known)
        except QhullError:  # all measured pixels on one line: no triangle to interpolate in
            return nearest
        rows, triangles, bary = _locate_grid_points(known[tri.simplices], query)
        if rows.size == 0:
            return nearest
        inner = sp.csr_matrix(
            (bary.ravel(), (np.repeat(rows, 3), tri.simplices[triangles].ravel())),
            shape=(len(query), len(known)),
        )
        outside = np.ones(len(query))
        outside[rows] = 0.0
        return (sp.diags(outside) @ nearest + inner).tocsr()
