"""DA-MRS's neighbour discrimination (L_AI, Xv et al. KDD'24, Eq. (9)-(11)), in row blocks.

For each item a of the batch and each item graph g (text, visual, session), with ĥ_g the
L2-normalized item vectors of g: c_ab = <ĥ_g(a), ĥ_g(b)> over all items b, P_g = softmax_b(c).
The multi-modal pseudo-positives M(a) are the top k of P_o1 + P_o2 + 2 P_g (o1, o2 the other two
graphs), the single-modal ones S(a) the top k of P_g outside M(a). With E = exp(c / τ),

    ℓ_a = -log(Σ_M E / Σ_b E + 1e-9) - log(Σ_S E / (Σ_b E - Σ_M E) + 1e-9),

and L_AI is the (weighted) mean of ℓ over the batch's items, averaged over the three graphs.

:func:`neighbor_discrimination_reference` computes it as MMRec does: three dense [items, n_items]
similarity matrices, their softmaxes, sums, exponentials, all kept for autograd (about ten such
matrices alive at once, 80 MB each on TikTok). :func:`neighbor_discrimination` takes the batch's
items a block of rows at a time: the block's three similarity rows are formed, selected and
differentiated while they sit in cache, and the gradient of ĥ_g is accumulated with two products
per block (dĉ = G ĥ_g for the block's rows, and Gᵀ ĥ_g[block] for every item), G = ∂ℓ/∂c:

    ∂ℓ_a/∂c_ab = (E_ab / τ) (∂ℓ_a/∂Σ_b E + [b ∈ M(a)] ∂ℓ_a/∂Σ_M E + [b ∈ S(a)] ∂ℓ_a/∂Σ_S E).

Nothing of size [items, n_items] outlives a block, and no matrix is kept for the backward pass:
the gradients are formed in the forward pass (the loss is a scalar) and scaled by the incoming
gradient afterwards.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mmfast.ops._backend import resolve

# (target graph, the two others) in MMRec's order: session, visual, textual; graphs indexed
# (text, visual, session) as the callers pass them.
ORDER = ((2, 0, 1), (1, 0, 2), (0, 1, 2))
EPS = 1e-9
# Entries of one block's [rows, n_items] matrix: ~4 MB in float32 on the CPU (about eight such
# matrices live at once: they stay in its L3), ~64 MB on a GPU (enough rows to fill it).
BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 24}


def neighbor_discrimination(
    normalized: Sequence[torch.Tensor], items: torch.Tensor, weights: torch.Tensor | None,
    k: int, temperature: float, *, backend: str | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """L_AI for the batch's ``items`` (ids, [B]) over the graphs' L2-normalized item vectors
    ``normalized`` = (ĥ_t, ĥ_v, ĥ_s), each [n_items, d]. ``weights`` ([B] or None) weighs each
    item's term (the mean over distinct items when some ids repeat with weight 0); None is the
    plain mean. ``k`` pseudo-positives of each kind, temperature τ. ``block_rows`` (default:
    :data:`BLOCK_ELEMENTS` entries per block matrix) only changes speed and memory."""
    if len(normalized) != 3:
        raise ValueError("neighbor_discrimination: needs three graphs' vectors, got "
                         f"{len(normalized)}")
    n = normalized[0].shape[0]
    if not 0 < k <= n:
        raise ValueError(f"neighbor_discrimination: k must be in [1, {n}], got {k}")
    if resolve(backend) == "torch":
        return neighbor_discrimination_reference(normalized, items, weights, k, temperature)
    elements = BLOCK_ELEMENTS.get(normalized[0].device.type, BLOCK_ELEMENTS["cpu"])
    rows = block_rows or max(1, elements // max(n, 1))
    return _BlockedNeighborDiscrimination.apply(
        *normalized, items, weights, int(k), float(temperature), int(rows))


def neighbor_discrimination_reference(
    normalized: Sequence[torch.Tensor], items: torch.Tensor, weights: torch.Tensor | None,
    k: int, temperature: float,
) -> torch.Tensor:
    """L_AI as MMRec computes it: dense [B, n_items] matrices through autograd."""
    cos = [h[items] @ h.T for h in normalized]
    with torch.no_grad():
        prob = [torch.softmax(c, dim=1) for c in cos]
    loss = None
    scratch = torch.empty_like(prob[0])  # the no-grad sums' buffer, reused in place
    for target, o1, o2 in ORDER:
        with torch.no_grad():
            multi, single = _pseudo_positives(prob[target], prob[o1], prob[o2], k, scratch)
        e = torch.exp(cos[target] / temperature)
        all_ = e.sum(1)
        picked = e.gather(1, torch.cat([multi, single], 1))  # one gather: one backward scatter
        mm, sm = picked[:, :k].sum(1), picked[:, k:].sum(1)
        per_item = -torch.log(mm / all_ + EPS) - torch.log(sm / (all_ - mm) + EPS)
        term = per_item.mean() if weights is None else (per_item * weights).sum() / weights.sum()
        loss = term if loss is None else loss + term
    return loss / 3.0


def _pseudo_positives(p: torch.Tensor, o1: torch.Tensor, o2: torch.Tensor, k: int,
                      scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, S): the top k of o1 + o2 + p + p (added in that order, as MMRec), then the top k of
    p with M's entries zeroed; ``scratch`` (p's shape) is overwritten."""
    scratch = torch.add(o1, o2, out=scratch)
    scratch += p
    scratch += p
    multi = torch.topk(scratch, k, dim=1).indices
    scratch.copy_(p).scatter_(1, multi, 0.0)
    single = torch.topk(scratch, k, dim=1).indices
    return multi, single


class _BlockedNeighborDiscrimination(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_t, h_v, h_s, items, weights, k, temperature, block_rows):
        hs = (h_t, h_v, h_s)
        b = items.shape[0]
        if weights is None:
            w = torch.full((b,), 1.0 / max(b, 1), dtype=h_t.dtype, device=h_t.device)
        else:
            w = weights.to(h_t.dtype) / weights.sum()
        grads = [torch.zeros_like(h) for h in hs]
        total = torch.zeros((), dtype=h_t.dtype, device=h_t.device)
        for start in range(0, b, block_rows):
            rows = items[start:start + block_rows]
            wb = w[start:start + block_rows]
            wr = wb / (3.0 * temperature)  # L = (1/3) sum_g sum_a w_a l_a; dE/dc = E / tau
            a = [h.index_select(0, rows) for h in hs]  # [r, d]
            cos = [ai @ h.T for ai, h in zip(a, hs)]  # [r, n]
            prob = [torch.softmax(c, dim=1) for c in cos]
            scratch = torch.empty_like(prob[0])  # the block's no-grad sums, reused per target
            for target, o1, o2 in ORDER:
                multi, single = _pseudo_positives(prob[target], prob[o1], prob[o2], k, scratch)
                e = torch.exp(cos[target] / temperature)
                all_ = e.sum(1)
                e_m, e_s = e.gather(1, multi), e.gather(1, single)
                mm, sm = e_m.sum(1), e_s.sum(1)
                rest = all_ - mm
                r1, r2 = mm / all_, sm / rest
                total += ((-torch.log(r1 + EPS) - torch.log(r2 + EPS)) * wb).sum()
                # ∂ℓ/∂Σ_b E, ∂ℓ/∂Σ_M E, ∂ℓ/∂Σ_S E (ℓ = -log(r1 + eps) - log(r2 + eps)),
                # each times the item's weight / (3 τ): G = ∂L/∂c = E (...) / τ.
                q1, q2 = 1.0 / (r1 + EPS), 1.0 / (r2 + EPS)
                d_all = (q1 * r1 / all_ + q2 * r2 / rest) * wr
                d_m = -(q1 / all_ + q2 * r2 / rest) * wr
                d_s = -(q2 / rest) * wr
                g = e.mul_(d_all[:, None])  # E's buffer becomes G
                g.scatter_add_(1, multi, e_m * d_m[:, None])
                g.scatter_add_(1, single, e_s * d_s[:, None])
                grads[target].index_add_(0, rows, g @ hs[target])
                grads[target].addmm_(g.T, a[target])
        ctx.save_for_backward(*grads)
        return total / 3.0

    @staticmethod
    def backward(ctx, grad_out):
        g_t, g_v, g_s = (g * grad_out for g in ctx.saved_tensors)
        return g_t, g_v, g_s, None, None, None, None, None
