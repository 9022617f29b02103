"""Batched top-K of inner products: ``topk_scores`` (fused scoring + masking + top-K).

For each query row, the k keys with the largest inner product, skipping the key ids that
``exclude`` lists for that row (e.g. a user's training items). The compiled kernels score
tiles of keys and fold them into a running top-k per query, so no queries x keys matrix is
ever written; memory beyond the output is O(queries x k).

Contract, the same on CPU, CUDA and the pure-PyTorch reference:

- order: larger score first; equal scores go to the smaller key index;
- excluded keys and keys whose score is NaN are never returned;
- a row with fewer than k candidates is padded with value ``-inf`` and index ``-1``;
- k >= 1 and any k on CPU; at most :data:`CUDA_MAX_K` (1024) on CUDA;
- not differentiable (evaluation and graph building only): the inputs are detached.

The exclude CSR is validated once per call, here: a raw ``(rowptr, col)`` by
:func:`check_csr_indices` (one device->host read on CUDA), a :class:`SparseGraph` not at all
(it was validated when built), nor a raw CSR passed with ``validate=False`` (the caller
guarantees it, as the Evaluator does for rows gathered from a validated CSR): those paths read
nothing back from the device. The compiled op checks only dtypes and sizes; direct
``torch.ops.mmfast.topk_scores`` callers own the CSR's structure (its kernels stay in bounds on
a corrupt one, see docs/ops.md). On CUDA, rows whose exclude columns are sorted (those of
``SparseGraph.from_coo`` and of the dataset's splits are) are walked once; an unsorted row is rescanned per tile of keys.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from mmfast import _ext
from mmfast.ops._backend import resolve
from mmfast.ops.csr import check_csr_indices, expand_rows
from mmfast.ops.sparse_graph import SparseGraph

CUDA_MAX_K = 1024

CsrPair = Tuple[torch.Tensor, torch.Tensor]
Exclude = Optional[Union[SparseGraph, CsrPair, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def topk_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    exclude: Exclude = None,
    backend: str | None = None,
    *,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row, the ``k`` largest ``<query, key>`` over ``keys`` rows.

    ``queries`` [n_queries, d] and ``keys`` [n_keys, d] are float32 or float64 of one dtype,
    on one device. ``exclude`` is a :class:`SparseGraph` of shape [n_queries, n_keys] or a
    CSR ``(rowptr, col)`` / ``(rowptr, col, val)`` with one row per query; values are ignored.

    Returns ``(values, indices)``, both [n_queries, k]: values in the queries' dtype, indices
    int64, sorted by score (ties: smaller index first), padded with ``-inf`` / ``-1``.
    ``validate=False`` skips the structural check of a raw CSR ``exclude`` (its one
    device->host read); the caller then guarantees it.
    """
    _check_k(k)
    _check_dense(queries, keys)
    rowptr_col = _exclude_csr(exclude, queries.shape[0], keys.shape[0], queries.device,
                              validate=validate)
    queries, keys = queries.detach(), keys.detach()
    if resolve(backend) == "torch":
        return topk_scores_reference(queries, keys, k, rowptr_col)
    if queries.is_cuda and k > CUDA_MAX_K:
        raise ValueError(
            f"topk_scores: k = {k} exceeds the CUDA kernel's limit of {CUDA_MAX_K}; "
            "run on CPU or use backend='torch'"
        )
    rowptr, col = rowptr_col if rowptr_col is not None else (None, None)
    return torch.ops.mmfast.topk_scores(queries, keys, k, rowptr, col)


# ---------------------------------------------------------------------- references
def topk_scores_reference(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: Exclude = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch: the dense score matrix, masked, then ``torch.topk`` with exact ties."""
    rowptr_col = _exclude_csr(exclude, queries.shape[0], keys.shape[0], queries.device)
    return _topk_of_scores_(queries @ keys.T, k, rowptr_col)


def topk_of_scores(
    scores: torch.Tensor, k: int, exclude: Exclude = None, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_scores`'s contract applied to a given dense score matrix [n_rows, n_keys]
    (for models that do not score by inner product). ``scores`` is not modified."""
    _check_k(k)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(f"topk_of_scores: scores must be a 2-D tensor, got {_shape(scores)}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"topk_of_scores: scores must be floating point, got {scores.dtype}")
    rowptr_col = _exclude_csr(exclude, scores.shape[0], scores.shape[1], scores.device,
                              validate=validate)
    return _topk_of_scores_(scores.detach().clone(), k, rowptr_col)


def _topk_of_scores_(
    s: torch.Tensor, k: int, exclude: CsrPair | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overwrites ``s``. torch.topk picks the set; in rows where a tie straddles the k-th place
    (or too few candidates remain) the tied keys are re-chosen by index, so ties go to the
    smaller index exactly as in the kernels."""
    n, n_keys = s.shape
    blocked = torch.isnan(s)
    if exclude is not None:
        rowptr, col = exclude
        blocked[expand_rows(rowptr, col.numel()), col.long()] = True
    s.masked_fill_(blocked, float("-inf"))
    kk = min(k, n_keys)
    values = s.new_full((n, k), float("-inf"))
    indices = torch.full((n, k), -1, dtype=torch.int64, device=s.device)
    if kk == 0 or n == 0:
        return values, indices

    # One key more than asked: a tie straddles the k-th place exactly where the (k+1)-th
    # score equals the k-th (no pass over the whole rows to count ties).
    extra = kk < n_keys
    top, idx = torch.topk(s, kk + int(extra), dim=1)
    if extra:
        straddles = top[:, kk] == top[:, kk - 1]
        top, idx = top[:, :kk], idx[:, :kk]
    else:  # every key is in the set: no tie can be left out
        straddles = torch.zeros(n, dtype=torch.bool, device=s.device)
    kth = top[:, -1:]
    # Put equal scores in index order: sort by index, then stable-sort by score.
    idx, perm = idx.sort(dim=1)
    top, perm = top.gather(1, perm).sort(dim=1, descending=True, stable=True)
    idx = idx.gather(1, perm)
    redo = straddles | (kth[:, 0] == float("-inf"))
    if bool(redo.any()):
        # Keys scoring above the k-th are all in the set already (a prefix of the sorted row);
        # the slots after them go to the keys tied at the k-th score in index order, then to
        # nothing (-1). With the k-th at -inf (too few candidates) the ties are the unblocked
        # keys scored -inf, as candidates come before blocked keys. The ties are looked for in
        # column windows from the row's start, each 4x wider than the last, until every row has
        # its slots filled: where ties are many (a sparse scorer's zeros) the first window
        # serves, instead of a pass over whole rows.
        rows = redo.nonzero().squeeze(1)
        kth_r = kth[rows]
        sub_top, sub_idx = top[rows], idx[rows]
        n_above = (sub_top > kth_r).sum(1, keepdim=True)
        need = kk - n_above
        slot = torch.arange(kk, device=s.device).expand_as(sub_top)
        free = slot >= n_above
        sub_top = sub_top.masked_fill(free, float("-inf"))
        sub_idx = sub_idx.masked_fill(free, -1)
        found = torch.zeros_like(need)
        active = torch.arange(rows.numel(), device=s.device)
        start, width = 0, 256
        while active.numel() and start < n_keys:
            end = min(start + width, n_keys)
            at_rows = rows[active]
            tie = ((s[:, start:end].index_select(0, at_rows) == kth_r[active])
                   & ~blocked[:, start:end].index_select(0, at_rows))
            rank = tie.cumsum(1) + found[active]
            a_i, c_i = (tie & (rank <= need[active])).nonzero(as_tuple=True)
            r_i = active[a_i]
            at = n_above[r_i, 0] + rank[a_i, c_i] - 1
            sub_top[r_i, at] = kth_r[r_i, 0]
            sub_idx[r_i, at] = start + c_i
            found[active] += tie.sum(1, keepdim=True)
            active = active[(found[active] < need[active]).squeeze(1)]
            start, width = end, width * 4
        top[rows], idx[rows] = sub_top, sub_idx
    values[:, :kk] = top
    indices[:, :kk] = idx
    return values, indices


# ---------------------------------------------------------------------- checks
def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"topk_scores: k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"topk_scores: k must be >= 1, got {k}")


def _check_dense(queries: torch.Tensor, keys: torch.Tensor) -> None:
    for name, x in (("queries", queries), ("keys", keys)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"topk_scores: {name} must be a 2-D tensor [rows, d], got {_shape(x)}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"topk_scores: {name} must be float32 or float64, got {x.dtype}")
    if queries.dtype != keys.dtype:
        raise TypeError(f"topk_scores: queries are {queries.dtype} but keys are {keys.dtype}")
    if queries.device != keys.device:
        raise ValueError(
            f"topk_scores: queries are on {queries.device} but keys are on {keys.device}"
        )
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"topk_scores: queries have width {queries.shape[1]} but keys have width "
            f"{keys.shape[1]}"
        )


def _exclude_csr(
    exclude: Exclude, n_rows: int, n_keys: int, device: torch.device, validate: bool = False
) -> CsrPair | None:
    """``exclude`` as a (rowptr int64, col int32/int64) pair of the right length and device, or
    None. With ``validate`` a raw CSR's structure is checked too (sorted rowptr from 0 to nnz,
    ids in [0, n_keys)); a SparseGraph's never is: it was checked when built."""
    if exclude is None:
        return None
    if isinstance(exclude, SparseGraph):
        if exclude.shape != (n_rows, n_keys):
            raise ValueError(
                f"topk_scores: exclude must have shape (n_queries, n_keys) = {(n_rows, n_keys)}, "
                f"got {exclude.shape}"
            )
        rowptr, col = exclude.rowptr, exclude.col
    elif isinstance(exclude, (tuple, list)) and len(exclude) in (2, 3):
        rowptr, col = exclude[0], exclude[1]  # a CSR triple's values are ignored
        if not (isinstance(rowptr, torch.Tensor) and rowptr.dim() == 1
                and rowptr.dtype == torch.int64):
            raise TypeError(f"topk_scores: exclude rowptr must be a 1-D int64 tensor, got "
                            f"{_shape(rowptr)} {getattr(rowptr, 'dtype', '')}")
        if not (isinstance(col, torch.Tensor) and col.dim() == 1
                and col.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"topk_scores: exclude col must be a 1-D int32 or int64 tensor, got "
                            f"{_shape(col)} {getattr(col, 'dtype', '')}")
        if rowptr.numel() != n_rows + 1:
            raise ValueError(
                f"topk_scores: exclude must have one row per query (rowptr of {n_rows + 1} "
                f"entries), got {rowptr.numel()}"
            )
    else:
        raise TypeError(
            "topk_scores: exclude must be None, a SparseGraph or a (rowptr, col[, val]) CSR, got "
            f"{type(exclude).__name__}"
        )
    if rowptr.device != device or col.device != device:
        raise ValueError(f"topk_scores: exclude is on {rowptr.device} but queries are on {device}")
    if validate and not isinstance(exclude, SparseGraph):
        check_csr_indices(rowptr, col, n_keys, "topk_scores", rowptr_name="exclude rowptr",
                          col_holds="exclude holds key ids")
    return rowptr, col


# ---------------------------------------------------------------------- registration
if _ext.available():

    @torch.library.register_fake("mmfast::topk_scores")
    def _topk_scores_fake(queries, keys, k, exclude_rowptr=None, exclude_col=None):
        n = queries.shape[0]
        return queries.new_empty((n, k)), queries.new_empty((n, k), dtype=torch.int64)
