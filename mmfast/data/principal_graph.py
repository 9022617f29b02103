"""PGL's global principal subgraph (Principal Graph Learning, AAAI'25, "global" mode): a sparse
graph over the n_users + n_items nodes built once from the training interactions.

With L = D^-1/2 A D^-1/2 (A the symmetric user-item adjacency, D its degrees + 1e-7, as MMRec
normalizes it) and its truncated SVD of rank r (``embedding_size``), L ≈ U diag(s) V^T with s
descending, q = int(r / 4):

    M = U[:, :q] diag(s_0 s_{r-q}, ..., s_{q-1} s_{r-1}) V[:, :q]^T,

each of the q leading singular directions weighted by its singular value times the matching one
of the q smallest kept; entries with |M_ab| < 1e-3 are dropped (MMRec's ``sparsesvd`` route).

The SVD: MMRec calls ``sparsesvd`` (SVDLIBC's Lanczos), which no longer builds. L is symmetric,
so its singular triplets are (|λ|, x, sign(λ) x) of its eigenpairs (λ, x) of largest magnitude,
which SciPy's ARPACK (``eigsh``, fixed start vector, so deterministic) finds; a small L
(``dense_below`` nodes) uses a dense ``eigh``. On a bipartite graph the spectrum is symmetric,
so singular values come in equal pairs and M does not depend on the basis chosen inside a pair
(the test compares it with a dense SVD). M is thresholded in row blocks (O(block x n) memory,
never n x n dense) and cached on disk like Â.
"""
from __future__ import annotations

import os

from typing import TYPE_CHECKING

import numpy as np
import torch

from mmfast.data.graphs import _cached, bipartite_normalized
from mmfast.data.interactions import Interactions
from mmfast.ops.sparse_graph import SparseGraph

if TYPE_CHECKING:
    import scipy.sparse as sp


def _scipy():
    """scipy.sparse and its linalg, an optional dependency (PGL's global mode only)."""
    try:
        import scipy.sparse
        import scipy.sparse.linalg
    except ImportError:
        raise ImportError("PGL's global mode needs SciPy's sparse SVD: pip install scipy "
                          '(or pip install "mmfast[pgl]")') from None
    return scipy.sparse, scipy.sparse.linalg

PGL_DEGREE_EPS = 1e-7
_BLOCK_ELEMENTS = 1 << 24


def normalized_adjacency_scipy(train: Interactions) -> sp.csr_matrix:
    """MMRec's L = D^-1/2 A D^-1/2 (degrees + 1e-7) as a float64 SciPy CSR matrix."""
    g = bipartite_normalized(train.users(), train.items, train.n_users, train.n_items,
                             dtype=torch.float64, degree_eps=PGL_DEGREE_EPS)
    sp, _ = _scipy()
    return sp.csr_matrix((g.val.cpu().numpy(), g.col.cpu().numpy(), g.rowptr.cpu().numpy()),
                         shape=g.shape)


def truncated_svd_symmetric(
    matrix: sp.spmatrix, rank: int, *, dense_below: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U [n, r], s [r] descending, V [n, r]) of the rank-``rank`` truncated SVD of a symmetric
    matrix, from its ``rank`` eigenpairs of largest magnitude (u = x, v = sign(λ) x)."""
    n = matrix.shape[0]
    if not 1 <= rank <= n:
        raise ValueError(f"truncated SVD: rank must be in [1, {n}], got {rank}")
    if n < dense_below or rank >= n - 1:
        lam, x = np.linalg.eigh(matrix.toarray())
    else:
        v0 = np.random.default_rng(0).standard_normal(n)
        _, spla = _scipy()
        lam, x = spla.eigsh(matrix.astype(np.float64), k=rank, which="LM", v0=v0, tol=0)
    order = np.argsort(-np.abs(lam), kind="stable")[:rank]
    lam, x = lam[order], x[:, order]
    sign = np.where(lam < 0, -1.0, 1.0)
    return x, np.abs(lam), x * sign


def principal_subgraph_from_svd(
    u: np.ndarray, s: np.ndarray, v: np.ndarray, *, threshold: float = 1e-3,
    dtype: torch.dtype = torch.float32,
) -> SparseGraph:
    """M of the module docstring from a truncated SVD, thresholded, in row blocks."""
    rank, n = s.shape[0], u.shape[0]
    q = int(0.25 * rank)
    weights = s[:q] * s[rank - q:] if q else s[:0]
    left, right = u[:, :q] * weights, v[:, :q]
    rows, cols, vals = [], [], []
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for b0 in range(0, n, block):
        m = left[b0:b0 + block] @ right.T
        r, c = np.nonzero(np.abs(m) >= threshold)
        rows.append(r + b0)
        cols.append(c)
        vals.append(m[r, c])
    rows_t, cols_t, vals_t = (torch.from_numpy(np.concatenate(x)) for x in (rows, cols, vals))
    return SparseGraph.from_coo(rows_t, cols_t, vals_t.to(dtype), (n, n))


def build_principal_subgraph(train: Interactions, rank: int, *, dense_below: int = 512,
                             dtype: torch.dtype = torch.float32) -> SparseGraph:
    """PGL's global principal subgraph of ``train`` (rank-``rank`` SVD), not cached."""
    u, s, v = truncated_svd_symmetric(normalized_adjacency_scipy(train), rank,
                                      dense_below=dense_below)
    return principal_subgraph_from_svd(u, s, v, dtype=dtype)


def principal_subgraph(
    train: Interactions,
    rank: int,
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> SparseGraph:
    """:func:`build_principal_subgraph`, read from / written to the on-disk cache."""
    return _cached(f"pgl_global_r{int(rank)}",
                   lambda t, d: build_principal_subgraph(t, rank, dtype=d),
                   train, dtype, cache, cache_dir)
