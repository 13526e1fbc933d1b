"""Scoring a reconstruction against a reference that only the scorer holds.

The reward of the acquisition environment is the gain in R^2 of the reconstruction against the
replayed data, asked for after every measurement. :func:`~reconstruct.metrics.r2_score` of the
full estimate builds the ``(P, n_blocks, F_b)`` tensor each time; for a low-rank model
(:class:`~reconstruct.lowrank.LowRankGP`) :class:`ReferenceScorer` gives the same number from
the coefficients and error terms it keeps up to date, reading what changed since its last score
from the reconstructor's :class:`~reconstruct.changes.ChangeLog`. The reference never enters
the reconstructor: its owner (the environment) holds the scorer, one per reference.

The terms. With ``R = ref - mu`` per (pixel, block), the squared error of an unmeasured block
estimated as ``mu_b + c_p B_b`` is ``E_pb - 2 c_p.G_pb + c_p^T H_b c_p`` with ``E = |R|^2``,
``G = B_b R`` and ``H_b = B_b B_b^T``; NaN reference entries are dropped from every term.
Measured blocks add their own squared error, kept per block as they arrive. The reference's
own terms are made once (:meth:`ReferenceScorer._reference_terms`), the basis terms once per
basis version (:func:`basis_terms`), and the sum over unmeasured blocks from scratch after a
refit or any change that is not a rank-one update of the coefficients, incrementally otherwise.
Equals :func:`~reconstruct.metrics.r2_score` of the estimate up to round-off.
"""

from __future__ import annotations

import threading

import torch

from reconstruct.base import Reconstructor
from reconstruct.metrics import r2_score


def basis_terms(ref: dict, basis, block_gram: torch.Tensor) -> dict:
    """The basis terms of the fast R^2 for the reference terms ``ref`` (its ``ref_t``: the
    reference block-major, NaN entries zeroed): per (pixel, block), the squared residual of
    the mean spectrum ``E = |R|^2`` and the projections ``G = B_b R`` of ``R = ref - mu``, plus
    a correction of ``c^T H_b c`` for blocks with NaN entries.

    One batched product of the reference with the components and the mean gives both, since
    ``|R|^2 = |ref|^2 - 2 ref.mu_b + |mu_b|^2`` and ``B_b R = B_b ref - B_b mu_b`` where the
    block is fully valid (float64: the expansion loses ~1e-16 of |ref|^2); the few blocks with
    NaN entries are recomputed from their valid entries. Why not build ``R``: it is a copy of
    the whole reference at every refit (timings in ``docs/performance.md``)."""
    ref_t = ref["ref_t"]  # (nb, P, F_b)
    k = basis.k
    rows = torch.cat([basis.components, basis.mean[None]]).permute(1, 2, 0)  # (nb, F_b, k + 1)
    prod = torch.bmm(ref_t, rows).transpose(0, 1)  # (P, nb, k + 1)
    mean_proj = torch.einsum("bf,kbf->bk", basis.mean, basis.components)  # (nb, k)
    g = (prod[..., :k] - mean_proj).contiguous()
    e = ref["sq"] - 2.0 * prod[..., k] + basis.mean.square().sum(-1)
    nan_pix, nan_blk = ref["nan_pix"], ref["nan_blk"]
    valid = ref["valid_t"][nan_blk, nan_pix]  # (m, F_b)
    resid = torch.where(valid, ref_t[nan_blk, nan_pix] - basis.mean[nan_blk], 0.0)
    comps = basis.components[:, nan_blk]  # (k, m, F_b)
    e[nan_pix, nan_blk] = resid.square().sum(-1)
    g[nan_pix, nan_blk] = torch.einsum("mf,kmf->mk", resid, comps)
    masked = comps * valid[None].to(torch.float64)
    nan_h = torch.einsum("kmf,lmf->mkl", masked, masked) - block_gram[nan_blk]
    return {"version": basis.version, "E": e, "G": g, "nan_H": nan_h}


class ReferenceScorer:
    """R^2 of a reconstructor's current estimate against ``reference_blocks``
    ``(P, n_blocks, F_b)`` (NaN entries ignored), the sum of squares taken around the
    per-feature spatial mean: :func:`~reconstruct.metrics.r2_score` of the estimate.

    :meth:`score` any reconstructor; a low-rank one that keeps a change log (``changes``,
    ``basis``, ``block_gram``, ``coefficients()``, ``values``, ``measured``: see
    :class:`~reconstruct.lowrank.LowRankGP`) is scored from kept terms without building its
    estimate (module notes). Scoring another reconstructor, or the same one after a reset,
    starts its terms again; the reference's own terms are kept.
    """

    def __init__(self, reference_blocks: torch.Tensor) -> None:
        self.reference = reference_blocks
        self._ref: dict | None = None  # the reference's own terms, on one device
        self._terms: dict | None = None  # terms of one reconstructor's history
        # (basis, thread, result) of basis terms made ahead for a deferred refit's basis
        self._ahead: tuple | None = None

    def score(self, reconstructor: Reconstructor) -> float:
        basis = getattr(reconstructor, "basis", None)
        changes = getattr(reconstructor, "changes", None)
        if basis is None or changes is None:
            return r2_score(self.reference, reconstructor.estimate_blocks())
        terms = self._terms
        events = None if terms is None else changes.since(terms["epoch"], terms["position"])
        if events is None:
            terms = self._start(reconstructor)
        else:
            if any(event[0] == "replaced" for event in events):
                # The terms are remade below: no event needs more than its measured error (and
                # those before a refit were made under another basis).
                terms["sse_unmeasured"] = None
            for event in events:
                self._apply(terms, reconstructor, event)
        terms["position"] = changes.end
        if terms["version"] != basis.version:
            made = self._made_ahead(basis)
            terms.update(made or basis_terms(self._ref, basis, reconstructor.block_gram))
            terms["sse_unmeasured"] = None
        self._make_ahead(reconstructor)
        if terms["sse_unmeasured"] is None:
            self._unmeasured_terms(terms, reconstructor)
        ref = self._ref
        sse = terms["sse_unmeasured"]
        if ref["nan_pix"].numel():
            c = reconstructor.coefficients()[ref["nan_pix"]]
            fix = torch.einsum("mk,mkl,ml->m", c, terms["nan_H"], c)
            sse = sse + float((fix * terms["U"][ref["nan_pix"], ref["nan_blk"]]).sum())
        sse = sse + float((terms["meas_err"] * (1.0 - terms["U"])).sum())
        ss_ref = ref["ss_ref"]
        if ss_ref <= 0:
            return 1.0 if float(sse) == 0 else 0.0
        return float(1.0 - sse / ss_ref)

    __call__ = score

    def __getstate__(self) -> dict:
        state = dict(vars(self))
        state["_ahead"] = None  # a thread: its terms are made again when needed
        return state

    def _make_ahead(self, rec) -> None:
        """When a deferred refit has fitted the next basis (``rec.pending_basis()``), make
        its basis terms in a thread of their own, so that the step that installs it does not.
        (Not inside :func:`~reconstruct.gp.single_thread`: that sets a process-wide count,
        which two threads restoring out of order would leave wrong.)"""
        pending = getattr(rec, "pending_basis", None)
        upcoming = pending() if pending is not None else None
        if upcoming is None or (self._ahead is not None and self._ahead[0] is upcoming[0]):
            return
        basis, block_gram = upcoming
        result: list = []

        def work() -> None:
            result.append(basis_terms(self._ref, basis, block_gram))

        thread = threading.Thread(target=work, name="ReferenceScorer basis terms")
        thread.start()
        self._ahead = (basis, thread, result)

    def _made_ahead(self, basis) -> dict | None:
        """The basis terms made ahead for ``basis`` (waiting for them), if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] is not basis:
            return None
        ahead[1].join()
        return ahead[2][0] if ahead[2] else None

    # ------------------------------------------------------------------ terms
    def _reference_terms(self, rec: Reconstructor) -> dict:
        """The reference's own terms: the reference block-major with NaN entries zeroed
        (``ref_t``, ``(nb, P, F_b)``, the layout :func:`basis_terms` reads without a copy), its
        validity, the sum of squares around the channel means, and where it has NaN entries."""
        ref = self._ref
        if ref is not None and ref["ref_t"].device == rec.device:
            return ref
        reference = torch.as_tensor(self.reference)
        expected = (rec.n_pixels, rec.n_blocks, rec.block_features)
        if tuple(reference.shape) != expected:
            raise ValueError(f"reference has shape {tuple(reference.shape)}, expected {expected}")
        ref_t = torch.empty(
            rec.n_blocks, rec.n_pixels, rec.block_features, dtype=torch.float64, device=rec.device
        )
        ref_t.copy_(reference.transpose(0, 1))
        valid_t = torch.isfinite(ref_t)
        ref_t.masked_fill_(~valid_t, 0.0)
        counts = valid_t.sum(1).to(torch.float64)  # (nb, F_b)
        chan_mean = ref_t.sum(1) / counts.clamp_min(1.0)
        ss_ref = float(torch.where(valid_t, ref_t - chan_mean[:, None], 0.0).square_().sum())
        nan_blk, nan_pix = torch.nonzero(~valid_t.all(-1), as_tuple=True)
        self._ref = {
            "ref_t": ref_t,
            "valid_t": valid_t,
            "sq": ref_t.square().sum(-1).T.contiguous(),  # (P, nb) |ref0_pb|^2
            "ss_ref": ss_ref,
            "nan_pix": nan_pix,
            "nan_blk": nan_blk,
        }
        return self._ref

    def _start(self, rec) -> dict:
        """Terms of ``rec``'s history from scratch: the squared error of every measured block
        (the basis and unmeasured terms follow in :meth:`score`)."""
        ref = self._reference_terms(rec)
        ref_t, valid_t = ref["ref_t"], ref["valid_t"]
        meas_err = torch.zeros(rec.n_pixels, rec.n_blocks, dtype=torch.float64, device=rec.device)
        meas_pix, meas_blk = torch.nonzero(rec.measured.to(rec.device), as_tuple=True)
        diff = ref_t[meas_blk, meas_pix] - rec.values[meas_pix, meas_blk].to(torch.float64)
        meas_err[meas_pix, meas_blk] = torch.where(
            valid_t[meas_blk, meas_pix], diff, 0.0
        ).square().sum(-1)
        self._terms = {
            "epoch": rec.changes.epoch,
            "position": rec.changes.end,
            "meas_err": meas_err,
            "version": None,  # of the basis terms: see basis_terms
            "sse_unmeasured": None,  # with "U" and "m": see _unmeasured_terms
        }
        return self._terms

    def _apply(self, terms: dict, rec, event: tuple) -> None:
        """Bring the terms up to date with one event of the change log."""
        kind = event[0]
        if kind == "stored":
            self._stored(terms, rec, *event[1:])
        elif kind == "moved":
            self._moved(terms, rec, *event[1:])
        else:
            terms["sse_unmeasured"] = None

    def _stored(self, terms: dict, rec, p: int, b: int, c: torch.Tensor | None) -> None:
        """Block ``b`` of pixel ``p`` was measured, the coefficients then ``c``: its error
        moves from the unmeasured sum to the measured one."""
        ref = self._ref
        diff = ref["ref_t"][b, p] - rec.values[p, b].to(torch.float64)
        terms["meas_err"][p, b] = torch.where(ref["valid_t"][b, p], diff, 0.0).square().sum()
        if terms["sse_unmeasured"] is not None and terms["U"][p, b]:
            if c is None:
                terms["sse_unmeasured"] = None
                return
            h = rec.block_gram[b] @ c - terms["G"][p, b]
            terms["sse_unmeasured"] -= float(terms["E"][p, b] + c @ (h - terms["G"][p, b]))
            terms["m"][p] -= h
            terms["U"][p, b] = 0.0

    def _moved(self, terms: dict, rec, a: torch.Tensor, delta: torch.Tensor) -> None:
        """The coefficients changed by ``outer(a, delta)``. With ``Q_p = sum_b U_pb H_b`` the
        unmeasured error changes by ``2 delta.(sum_p a_p m_p) + sum_p a_p^2 delta^T Q_p
        delta`` and ``m_p`` by ``a_p Q_p delta``."""
        if terms["sse_unmeasured"] is None:
            return
        h_delta = rec.block_gram @ delta  # (nb, k): H_b delta
        u = terms["U"]
        terms["sse_unmeasured"] += float(
            2.0 * (delta @ (a @ terms["m"])) + (a * a) @ (u @ (h_delta @ delta))
        )
        terms["m"].addcmul_(a[:, None], u @ h_delta)

    def _unmeasured_terms(self, terms: dict, rec) -> None:
        """From scratch: ``U`` (unmeasured mask), the summed error of the unmeasured blocks
        ``sum_pb U_pb (E_pb + c.(H_b c - 2 G_pb))`` and, per pixel, ``m_p = sum_b U_pb (H_b c_p -
        G_pb)``, which lets a rank-one change of the coefficients update the sum in O(P nb k)
        (:meth:`_moved`)."""
        coef = rec.coefficients()
        unmeasured = (~rec.measured).to(rec.device, torch.float64)
        p, nb, k = terms["G"].shape
        gram_rows = rec.block_gram.permute(1, 0, 2).reshape(k, nb * k)  # H_b symmetric
        hc = torch.addmm(terms["G"].reshape(p, nb * k), coef, gram_rows, beta=-1.0)
        hc = hc.view(p, nb, k)  # H_b c_p - G_pb
        inner = ((hc - terms["G"]) * coef.unsqueeze(1)).sum(-1)  # c.(H_b c - 2 G_pb)
        terms["U"] = unmeasured
        terms["sse_unmeasured"] = float((unmeasured * (terms["E"] + inner)).sum())
        terms["m"] = torch.einsum("pb,pbk->pk", unmeasured, hc)
