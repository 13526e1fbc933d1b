"""The spectral basis of the low-rank reconstructors: principal components of measured spectra
in block layout (:func:`fit_basis`), their refinement on partly measured pixels
(:func:`refine_basis`), and how well a basis predicts spectra it was not fitted on
(:func:`cross_validated_errors`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MIN_RIDGE, _MAX_RIDGE = 1e-10, 1e3  # bounds on the ridge added to G_p (eigenvalues in [0, 1])


@dataclass
class SpectralBasis:
    """A fitted spectral basis in block layout.

    Attributes
    ----------
    mean
        ``(n_blocks, F_b)`` mean spectrum.
    components
        ``(k, n_blocks, F_b)`` orthonormal components (as rows when flattened).
    variances
        ``(k,)`` variance of each coefficient over the training pixels.
    residual
        Per-feature variance left after projection on ``k`` components (noise included).
    version
        Increases at every refit (keys caches).
    """

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    residual: float
    version: int

    @property
    def k(self) -> int:
        return self.components.shape[0]


def fit_basis(
    spectra: torch.Tensor, explained: float = 0.99, max_components: int = 12, version: int = 0
) -> SpectralBasis:
    """Principal components of ``spectra`` ``(n, n_blocks, F_b)`` through the ``n x n`` Gram
    matrix (``n`` is at most a few hundred, ``F`` thousands), ``k`` by explained variance."""
    n = spectra.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 spectra to fit a basis, got {n}")
    flat = spectra.reshape(n, -1).to(torch.float64)
    mean = flat.mean(0)
    centred = flat - mean
    evals, evecs = torch.linalg.eigh(centred @ centred.T)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    if total <= 0:
        k = 1
    else:
        share = torch.cumsum(evals, 0) / total
        k = int(torch.searchsorted(share, torch.tensor(explained, dtype=torch.float64))) + 1
    k = max(1, min(k, max_components, n - 1))
    comps = (evecs[:, :k].T @ centred) / evals[:k].clamp_min(1e-300).sqrt()[:, None]
    comps = torch.linalg.qr(comps.T).Q.T  # exact orthonormality despite round-off
    residual = max((total - float(evals[:k].sum())) / (n * flat.shape[1]), 1e-12)
    return SpectralBasis(
        mean=mean.reshape(spectra.shape[1:]),
        components=comps.reshape(k, *spectra.shape[1:]),
        variances=evals[:k] / n,
        residual=residual,
        version=version,
    )


def refine_basis(
    basis: SpectralBasis,
    values: torch.Tensor,
    measured: torch.Tensor,
    full: torch.Tensor,
    iterations: int = 3,
) -> SpectralBasis:
    """Refit ``basis`` (``k`` kept) on every measured block, partly measured pixels included,
    by alternating least squares: each pixel's coefficients from its measured blocks (the MAP
    ridge of :meth:`LowRankGP._coefficients`), then each block's mean and components by
    regressing that block's measured values on the coefficients of the pixels that measured
    it; finally the components are made orthonormal again and ordered by variance.

    ``values`` ``(m, n_blocks, F_b)`` and ``measured`` ``(m, n_blocks)`` are the pixels used
    (unmeasured entries are never read); ``full`` ``(m,)`` marks the fully measured ones, on
    which the residual variance is measured (a pixel fitted from one block leaves almost no
    in-sample residual, which would say the basis is better than it is).

    Why: a basis from complete spectra alone learns how blocks co-vary from the few pixels
    completed early in an episode, while most measured blocks sit at partly measured pixels.
    The rank stays the one the complete spectra chose, so errors in the completion cannot grow
    components of their own (the failure of completing pixels and refitting the PCA)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    m, nb, fb = values.shape
    k = basis.k
    mask = measured.to(torch.float64)
    vals = torch.where(measured[..., None], values.to(torch.float64), 0.0)
    mean, comps = basis.mean.clone(), basis.components.clone()  # (nb, F_b), (k, nb, F_b)
    ridge = torch.diag(
        (basis.residual / basis.variances.clamp_min(1e-300)).clamp(_MIN_RIDGE, _MAX_RIDGE)
    )
    for _ in range(iterations):
        block_gram = torch.einsum("kbf,lbf->bkl", comps, comps)  # (nb, k, k)
        gram = torch.einsum("pb,bkl->pkl", mask, block_gram) + ridge
        proj = torch.einsum("pbf,kbf->pk", vals - mean * mask[..., None], comps)
        coef = torch.linalg.solve(gram, proj.unsqueeze(-1)).squeeze(-1)  # (m, k)
        design = torch.cat([torch.ones(m, 1, dtype=coef.dtype, device=coef.device), coef], 1)
        for b in range(nb):
            rows = measured[:, b]
            x = design[rows]
            if x.shape[0] <= k + 1:
                continue  # too few pixels measured this block to regress on: keep it
            normal = x.T @ x
            normal.diagonal()[1:] += 1e-9 * float(normal.diagonal()[1:].max().clamp_min(1e-300))
            solved = torch.linalg.solve(normal, x.T @ vals[rows, b])  # (k + 1, F_b)
            mean[b], comps[:, b] = solved[0], solved[1:]
    # Orthonormal again: c B = c R^T Q^T with B^T = Q R, then rotate to the principal axes
    # of the coefficients so that variances are ordered as fit_basis orders them.
    q, r = torch.linalg.qr(comps.reshape(k, -1).T)
    coef = coef @ r.T
    centred = coef - coef.mean(0)
    evals, evecs = torch.linalg.eigh(centred.T @ centred / m)
    evals, evecs = evals.flip(0).clamp_min(1e-300), evecs.flip(1)
    flat = (q @ evecs).T  # (k, F)
    mean = mean + (coef.mean(0) @ q.T).reshape(nb, fb)
    # Residual: per feature, of the fully measured pixels projected on the new basis.
    full_spectra = vals[full].reshape(-1, nb * fb) - mean.reshape(-1)
    projected = (full_spectra @ flat.T) @ flat
    residual = max(float((full_spectra - projected).square().mean()), 1e-12)
    return SpectralBasis(
        mean=mean,
        components=flat.reshape(k, nb, fb),
        variances=evals,
        residual=residual,
        version=basis.version,
    )


def cross_validated_errors(
    spectra: torch.Tensor,
    explained: float,
    max_components: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How well a basis predicts spectra it was not fitted on, by two-fold cross-validation over
    fully measured spectra ``(n, n_blocks, F_b)``.

    Returns
    -------
    single_block
        ``(n_blocks, n_blocks)``: mean squared error per feature of block ``b'`` (column) when
        the coefficients are fitted from block ``b`` (row) alone.
    unexplained
        ``(n_blocks,)``: mean squared error per feature of each block after projecting the whole
        spectrum on the basis (what no coefficient can predict).

    Why: the in-sample residual of a basis fitted on a few dozen pixels understates the error
    of a block predicted from another block at a new pixel by more than an order of magnitude
    (measured: 43x on a 30 x 30 twin after one block per pixel), which made the posterior
    variance of such blocks useless to acquisition policies and accuracy estimates.
    """
    n, nb, _ = spectra.shape
    spectra = spectra.to(torch.float64)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(n), device=spectra.device)
    folds = (order[: n // 2], order[n // 2 :])
    sq_single = torch.zeros(nb, nb, dtype=torch.float64, device=spectra.device)
    sq_unexplained = torch.zeros(nb, dtype=torch.float64, device=spectra.device)
    for train, test in (folds, folds[::-1]):
        basis = fit_basis(spectra[train], explained, max_components)
        centred = spectra[test] - basis.mean  # (m, nb, F_b)
        comps = basis.components  # (k, nb, F_b)
        ridge = torch.diag(
            (basis.residual / basis.variances.clamp_min(1e-300)).clamp(_MIN_RIDGE, _MAX_RIDGE)
        )
        full_coef = centred.reshape(len(test), -1) @ comps.reshape(basis.k, -1).T
        full_pred = torch.einsum("mk,kbf->mbf", full_coef, comps)
        sq_unexplained += ((full_pred - centred) ** 2).mean(-1).sum(0)
        for b in range(nb):
            gram = comps[:, b] @ comps[:, b].T + ridge
            coef = torch.linalg.solve(gram, comps[:, b] @ centred[:, b].T).T  # (m, k)
            pred = torch.einsum("mk,kbf->mbf", coef, comps)
            sq_single[b] += ((pred - centred) ** 2).mean(-1).sum(0)
    return sq_single / n, sq_unexplained / n
