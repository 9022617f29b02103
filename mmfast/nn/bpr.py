"""BPR and the embedding regularizer in MMRec's forms (ordinary PyTorch, DESIGN.md §2.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfast.ops import select_rows
from mmfast.ops.rows import consecutive_rows


def batch_rows(
    users_table: torch.Tensor, items_table: torch.Tensor, users: torch.Tensor,
    positives: torch.Tensor, negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """The batch's rows (users_table[users], items_table[positives], items_table[negatives]),
    gathered by :func:`mmfast.ops.select_rows` (``negatives=None``: the first two).

    When the two tables are the halves of one tensor (``torch.split`` of a propagated
    [users; items], as :class:`~mmfast.nn.LightGCNEmbeddings` returns them), the rows are
    gathered from that tensor at once: one gather and one gradient, and no copy of the two
    halves' gradients back into one."""
    whole = _whole(users_table, items_table)
    if whole is not None:
        return joined_batch_rows(whole, users_table.shape[0], users, positives, negatives)
    out = (select_rows(users_table, users), select_rows(items_table, positives))
    return out if negatives is None else out + (select_rows(items_table, negatives),)


def joined_batch_rows(
    table: torch.Tensor, n_users: int, users: torch.Tensor, positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`batch_rows` of one [users; items] table (users first, ``n_users`` of them), in one
    gather: one gradient for the table, whatever rows the batch repeats."""
    parts = [users, positives + n_users]
    if negatives is not None:
        parts.append(negatives + n_users)
    rows = select_rows(table, torch.cat(parts))
    return tuple(rows.split([p.shape[0] for p in parts]))


def _whole(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """The tensor of which ``a`` and ``b`` are the first rows and all the rest, if they are."""
    base = a._base
    if (base is None or b._base is not base or base.dim() != 2 or not base.is_contiguous()
            or a.storage_offset() != base.storage_offset()
            or a.shape[0] + b.shape[0] != base.shape[0] or not consecutive_rows(a, b)):
        return None
    return base


def bpr_loss(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *, eps: float = 0.0
) -> torch.Tensor:
    """mean over the batch of -log sigmoid(<u, p> - <u, n>).

    ``eps=0`` is the log-sigmoid form (FREEDOM's); ``eps=1e-10`` is MMRec's ``BPRLoss``,
    -log(eps + sigmoid(.)), which LightGCN uses.
    """
    diff = (users * positives).sum(-1) - (users * negatives).sum(-1)
    if eps:
        return -torch.log(eps + torch.sigmoid(diff)).mean()
    return -F.logsigmoid(diff).mean()


def embedding_norm_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's ``EmbLoss``: the sum of each tensor's L2 (Frobenius) norm, not squared,
    divided by the batch size (the rows of the last tensor)."""
    total = torch.stack([torch.linalg.vector_norm(e) for e in embeddings]).sum()
    return total / embeddings[-1].shape[0]


def half_squared_norm_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's ``L2Loss``: (1/2) sum_t ||t||_F^2 over the given tensors, summed over the batch
    (no division by its size, unlike :func:`embedding_norm_loss`)."""
    return 0.5 * torch.stack([e.square().sum() for e in embeddings]).sum()
