"""Shared test helpers. The tests must exercise the compiled kernels: fail loudly if not built."""
from __future__ import annotations

import pytest
import torch

import mmfast
from mmfast import _ext
from mmfast.ops import SparseGraph

if not _ext.available():
    raise pytest.UsageError(
        f"{_ext.unavailable_message()} (imported {mmfast.__file__})"
    )

CUDA = torch.cuda.is_available() and mmfast.info(verbose=False).get("cuda_kernels", False)
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and the CUDA kernels")


def randn(*shape, seed=0, dtype=torch.float64, device="cpu", scale=1.0):
    """A seeded standard normal tensor, drawn in float64 and then cast (same values per seed)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def random_graph(
    n_rows: int,
    n_cols: int,
    avg_degree: float = 4.0,
    *,
    empty_rows: float = 0.2,
    dtype: torch.dtype = torch.float64,
    index_dtype: torch.dtype = torch.int32,
    seed: int = 0,
    duplicates: bool = False,
    symmetric: bool = False,
) -> SparseGraph:
    """A random CSR with a share of empty rows, skewed degrees and random nonzero values.

    Without ``duplicates`` no (row, col) pair repeats; with it, some rows hold a column twice.
    ``symmetric`` mirrors the pattern and values (square graphs only).
    """
    gen = torch.Generator().manual_seed(seed)
    nnz_target = int(n_rows * avg_degree)
    # Skewed row choice (some hubs), then drop a share of rows entirely.
    weights = torch.rand(n_rows, generator=gen) ** 3 + 0.05
    weights[torch.rand(n_rows, generator=gen) < empty_rows] = 0
    if nnz_target == 0 or n_cols == 0 or weights.sum() == 0:
        rows = torch.empty(0, dtype=torch.long)
    else:
        rows = torch.multinomial(weights, nnz_target, replacement=True, generator=gen)
    cols = torch.randint(0, max(n_cols, 1), (rows.numel(),), generator=gen)
    if symmetric:
        rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])
    key = torch.unique(rows * max(n_cols, 1) + cols)
    rows, cols = key // max(n_cols, 1), key % max(n_cols, 1)
    if duplicates and rows.numel():
        pick = torch.randint(0, rows.numel(), (max(1, rows.numel() // 5),), generator=gen)
        rows, cols = torch.cat([rows, rows[pick]]), torch.cat([cols, cols[pick]])
    vals = torch.rand(rows.numel(), generator=gen, dtype=torch.float64) + 0.1
    if symmetric:
        lo, hi = torch.minimum(rows, cols), torch.maximum(rows, cols)
        vals = torch.sin(lo * 1.3 + hi * 0.7).abs() + 0.1  # the same value for (a, b) and (b, a)
    graph = SparseGraph.from_coo(
        rows, cols, vals.to(dtype), (n_rows, n_cols), sum_duplicates=not duplicates,
        is_symmetric=symmetric,
    )
    if index_dtype != graph.col.dtype:
        graph = SparseGraph(graph.rowptr, graph.col.to(index_dtype), graph.val, graph.shape,
                            is_symmetric=symmetric)
    return graph


def dense_reference(graph: SparseGraph) -> torch.Tensor:
    """The graph as a dense float64 matrix, built independently of the ops under test."""
    dense = torch.zeros(graph.shape, dtype=torch.float64)
    rows = graph.row_indices().cpu()
    dense.index_put_((rows, graph.col.long().cpu()), graph.val.double().cpu(), accumulate=True)
    return dense
