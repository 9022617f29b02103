"""The user-item graph as torch_geometric's ``MessagePassing`` aggregates over it in the Wei et
al. models (MMGCN, DualGNN, DRAGON): messages x_j from every neighbour j of the symmetric
bipartite edge list (each training pair in both directions, no self-loops), combined at the
target i by

- ``"add"`` with DualGNN/DRAGON's message normalization deg_i^-1/2 deg_j^-1/2:
  (Â x)_i = Σ_j x_j / sqrt(deg_i deg_j), i.e. Â = D^-1/2 A D^-1/2 (G1, :func:`normalized_adjacency`);
- ``"mean"`` (MMGCN's aggregation, DualGNN/DRAGON's ``aggr_mode: mean``):
  (D^-1 A x)_i = (1/deg_i) Σ_j x_j, row-stochastic; a node without edges gets 0.

Both are frozen SparseGraphs over the n_users + n_items nodes (users first), built from the
training split and cached on disk like Â.
"""
from __future__ import annotations

import os

import torch

from mmfast.data.graphs import _cached, normalized_adjacency
from mmfast.data.interactions import Interactions
from mmfast.ops.sparse_graph import SparseGraph

AGGREGATIONS = ("add", "mean")


def build_mean_adjacency(train: Interactions, dtype: torch.dtype = torch.float32) -> SparseGraph:
    """D^-1 A over users + items (see the module docstring)."""
    users, items = train.users(), train.items
    n_users = train.n_users
    n = n_users + train.n_items
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    deg = torch.bincount(rows, minlength=n).double()
    val = (1.0 / deg.clamp(min=1))[rows].to(dtype)
    return SparseGraph.from_coo(rows, cols, val, (n, n), sum_duplicates=False)


def aggregation_graph(
    train: Interactions,
    aggr: str,
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> SparseGraph:
    """The propagation matrix of ``aggr`` (``"add"``: Â; ``"mean"``: D^-1 A), cached on disk."""
    if aggr == "add":
        return normalized_adjacency(train, dtype=dtype, cache=cache, cache_dir=cache_dir)
    if aggr == "mean":
        return _cached("mean_adj", build_mean_adjacency, train, dtype, cache, cache_dir)
    raise ValueError(f"aggr_mode must be one of {AGGREGATIONS}, got {aggr!r}")
