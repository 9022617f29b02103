"""Ranking metrics of top-K lists, on the lists' device, with MMRec's formulas.

Let T_u be user u's held-out items, hit_r = 1 when the item at rank r is in T_u, and
m = min(|T_u|, K) (MODELS.md §1.3, MMRec ``utils/metrics.py``):

- ``recall@K``    = sum_{r<=K} hit_r / |T_u|
- ``ndcg@K``      = sum_{r<=K} hit_r / log2(r+1)  /  sum_{r<=m} 1 / log2(r+1)
- ``precision@K`` = sum_{r<=K} hit_r / K
- ``map@K``       = sum_{r<=K} precision@r * hit_r / m
- ``hit@K``       = 1 if any hit_r (r <= K), else 0

Users whose truth row is empty are skipped (they enter no average) and counted. Index -1
(the padding of :func:`mmfast.ops.topk_scores`) never hits.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple, Union

import torch

from mmfast.ops.csr import expand_rows
from mmfast.ops.sparse_graph import SparseGraph

METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map", "hit")
REDUCTIONS = ("mean", "sum", "none")
Truth = Union[SparseGraph, Tuple[torch.Tensor, torch.Tensor]]
# Up to this many truth entries per user on average, hits are found by comparing each entry with
# its user's list (nnz x K compares); above, by a binary search of each listed item in the keys.
_COMPARE_ROWS = 16


def rank_metrics(
    topk_indices: torch.Tensor,
    truth: Truth,
    ks: Iterable[int],
    metrics: Sequence[str] = METRICS,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Metrics of each row of ``topk_indices`` [n_users, K_max] against its truth row.

    ``truth`` is a CSR with one row per user: a :class:`SparseGraph` or a ``(rowptr, col)``
    pair (repeated items in a row count once). Returns ``{"recall@20": ..., ...}`` for every
    metric and k, plus ``"n_users"`` (users evaluated) and ``"n_skipped"`` (users with no
    truth), all tensors on the lists' device. ``reduction``: ``"mean"`` over evaluated users
    (NaN when there are none), ``"sum"`` (to combine batches), or ``"none"`` (one value per
    user, NaN for skipped users).
    """
    ks = _check_ks(ks, topk_indices)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(
            f"rank_metrics: metrics must be a non-empty subset of {METRICS}, got {metrics}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"rank_metrics: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    n_users, k_max = topk_indices.shape
    hits, n_truth = _hits(topk_indices, truth)

    device = topk_indices.device
    ranks = torch.arange(1, k_max + 1, device=device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1)
    h = hits.double()
    n_hits = h.cumsum(1)                                  # hits within the first r ranks
    dcg = (h * discount).cumsum(1)
    ap = (n_hits / ranks * h).cumsum(1)                   # sum_{r'<=r} precision@r' * hit_r'
    ideal = discount.cumsum(0)
    evaluated = n_truth > 0
    size = n_truth.clamp(min=1).double()

    # Every k at once: columns k - 1 of the running sums, [n_users, len(ks)].
    cols = torch.tensor([k - 1 for k in ks], device=device)
    kk = cols + 1
    c = n_hits.index_select(1, cols)
    m = torch.minimum(n_truth.clamp(min=1).unsqueeze(1), kk)   # min(|T_u|, K), at least 1
    per_user = {
        "recall": lambda: c / size.unsqueeze(1),
        "ndcg": lambda: dcg.index_select(1, cols) / ideal[m - 1],
        "precision": lambda: c / kk,
        "map": lambda: ap.index_select(1, cols) / m.double(),
        "hit": lambda: (c > 0).double(),
    }
    out: dict[str, torch.Tensor] = {}
    for name in metrics:
        v = per_user[name]()
        if reduction == "none":
            v = v.masked_fill(~evaluated.unsqueeze(1), float("nan"))
        else:
            v = torch.where(evaluated.unsqueeze(1), v, torch.zeros_like(v)).sum(0)
            if reduction == "mean":
                v = v / evaluated.sum()
        for j, k in enumerate(ks):
            out[f"{name}@{k}"] = v[..., j]
    out["n_users"] = evaluated.sum()
    out["n_skipped"] = n_users - out["n_users"]
    return out


def _check_ks(ks: Iterable[int], topk_indices: torch.Tensor) -> list[int]:
    if not isinstance(topk_indices, torch.Tensor) or topk_indices.dim() != 2:
        got = (tuple(topk_indices.shape) if isinstance(topk_indices, torch.Tensor)
               else type(topk_indices).__name__)
        raise ValueError(f"rank_metrics: topk_indices must be a 2-D tensor [n_users, K], got {got}")
    if topk_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"rank_metrics: topk_indices must be int32 or int64, got {topk_indices.dtype}"
        )
    ks = [ks] if isinstance(ks, int) else list(ks)
    k_max = topk_indices.shape[1]
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= k_max
                     for k in ks):
        raise ValueError(
            f"rank_metrics: ks must be ints in [1, {k_max}] (the lists' length), got {ks}"
        )
    return sorted(set(ks))


def _hits(topk_indices: torch.Tensor, truth: Truth) -> tuple[torch.Tensor, torch.Tensor]:
    """hits [n_users, K] (bool) and |T_u| (distinct items), by binary search in sorted keys."""
    n_users = topk_indices.shape[0]
    if isinstance(truth, SparseGraph):
        rowptr, col = truth.rowptr, truth.col
    elif isinstance(truth, (tuple, list)) and len(truth) == 2:
        rowptr, col = truth
    else:
        raise TypeError(
            "rank_metrics: truth must be a SparseGraph or a (rowptr, col) pair, got "
            f"{type(truth).__name__}"
        )
    if not (isinstance(rowptr, torch.Tensor) and rowptr.dim() == 1 and isinstance(col, torch.Tensor)
            and col.dim() == 1):
        raise TypeError("rank_metrics: truth rowptr and col must be 1-D tensors")
    if rowptr.numel() != n_users + 1:
        raise ValueError(
            f"rank_metrics: truth must have one row per user ({n_users + 1} rowptr entries), "
            f"got {rowptr.numel()}"
        )
    if rowptr.device != topk_indices.device or col.device != topk_indices.device:
        raise ValueError(
            f"rank_metrics: truth is on {rowptr.device} but topk_indices are on "
            f"{topk_indices.device}"
        )
    device = topk_indices.device
    shift = 32  # key = user << 32 | item: item ids are below 2^31
    rows = expand_rows(rowptr, col.numel())
    # Sorted keys with repeats kept: fixed sizes, so nothing is read back to the host (no
    # unique / bincount, whose output sizes depend on the data); a repeat counts once.
    keys = torch.sort((rows << shift) | col.long()).values
    first = torch.ones_like(keys, dtype=torch.int64)
    if keys.numel() > 1:
        first[1:] = (keys[1:] != keys[:-1]).long()
    n_truth = torch.zeros(n_users, dtype=torch.int64, device=device).index_add_(
        0, keys >> shift, first)
    idx = topk_indices.long()
    if keys.numel() == 0:
        return torch.zeros_like(idx, dtype=torch.bool), n_truth
    if col.numel() <= _COMPARE_ROWS * n_users:
        # Short truth rows (the usual held-out split): each truth entry is compared with its
        # user's K listed items and the matches are counted per (user, rank); -1 never matches
        # an item id. nnz x K compares against n_users x K binary searches over all keys.
        same = idx.index_select(0, rows) == col.long().unsqueeze(1)
        counts = torch.zeros(idx.shape, dtype=torch.int32, device=device)
        return counts.index_add_(0, rows, same.int()) > 0, n_truth
    query = (torch.arange(n_users, device=device).unsqueeze(1) << shift) | idx.clamp(min=0)
    pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return (keys[pos] == query) & (idx >= 0), n_truth
