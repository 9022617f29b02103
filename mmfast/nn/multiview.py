"""MGCN's multi-view pieces, shared by MGCN and SMORE: a purified modality line spread over its
frozen item graph and lifted onto users, and the training loss on the content view H (LightGCN
on Â) and the side view M (the fused modality lines), Z = H + M."""
from __future__ import annotations

import torch

from mmfast.nn.bpr import bpr_loss, joined_batch_rows
from mmfast.nn.lift import UserLift
from mmfast.ops import SparseGraph, propagate, select_rows, solosim_loss


def lifted_item_view(graph: SparseGraph, items: torch.Tensor, layers: int,
                     lift: UserLift) -> torch.Tensor:
    """E = [R̂ p̃; p̃] with p̃ = S^L p (MGCN Eq. (5)-(6)): the item rows ``items`` [n_items, d]
    after ``layers`` steps on the item graph S, the user rows their lift by R̂. Returns
    [n_users + n_items, d], users first."""
    p = propagate(graph, items, layers, "last")
    return torch.cat([lift(p), p])


def multiview_loss(
    content: torch.Tensor,
    side: torch.Tensor,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    *,
    n_users: int,
    reg_weight: float,
    batch_size: int,
    cl_weight: float,
    temperature: float,
) -> torch.Tensor:
    """MGCN's loss (MGCN Eq. (14)-(16), as MMRec codes it; SMORE keeps it):

        BPR(z_u, z_i+, z_i-) + reg_weight · ½(|z_u|² + |z_i+|² + |z_i-|²) / batch_size
        + cl_weight · (NCE(M[i+], H[i+]) + NCE(M[u], H[u]))

    on Z = H + M (``content`` H, ``side`` M: [n_users + n_items, d], users first).
    ``batch_size`` is the configured training batch size (MMRec divides by it also for the
    last, smaller batch). NCE is the one-direction in-batch InfoNCE over cosine similarities,
    duplicate rows counted as negatives (:func:`mmfast.ops.solosim_loss`)."""
    z = content + side
    u, p, n = joined_batch_rows(z, n_users, users, positives, negatives)
    loss = bpr_loss(u, p, n) + reg_weight * 0.5 * (
        u.square().sum() + p.square().sum() + n.square().sum()) / batch_size
    if cl_weight:
        loss = loss + cl_weight * (
            solosim_loss(side[n_users + positives], content[n_users + positives], temperature)
            + solosim_loss(select_rows(side, users), select_rows(content, users), temperature))
    return loss
