"""BPR and the embedding regularizer in MMRec's forms (ordinary PyTorch, DESIGN.md §2.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfast.ops import select_rows


def batch_rows(
    users_table: torch.Tensor, items_table: torch.Tensor, users: torch.Tensor,
    positives: torch.Tensor, negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """The batch's rows (users_table[users], items_table[positives], items_table[negatives]),
    gathered by :func:`mmfast.ops.select_rows` (``negatives=None``: the first two)."""
    out = (select_rows(users_table, users), select_rows(items_table, positives))
    return out if negatives is None else out + (select_rows(items_table, negatives),)


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
