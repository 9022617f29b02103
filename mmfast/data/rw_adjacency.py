"""The random-walk user-item adjacency with self-loops, D^-1 (A + I) (NGCF/LATTICE's
``norm_adj`` in MMRec), built vectorized and cached on disk like Â (G1)."""
from __future__ import annotations

import os

import torch

from mmfast.data.graphs import _cached
from mmfast.data.interactions import Interactions
from mmfast.ops.sparse_graph import SparseGraph


def build_random_walk_adjacency(train: Interactions,
                                dtype: torch.dtype = torch.float32) -> SparseGraph:
    """P = D^-1 (A + I) over the n_users + n_items nodes (users first): A the symmetric
    binary bipartite adjacency of the training pairs, D the row sums of A + I (degree + 1), so
    every row sums to 1. Not symmetric."""
    users, items = train.users(), train.items
    nu, ni = train.n_users, train.n_items
    n = nu + ni
    deg = torch.cat([torch.bincount(users, minlength=nu),
                     torch.bincount(items, minlength=ni)]).double() + 1.0
    inv = (1.0 / deg)
    nodes = torch.arange(n)
    rows = torch.cat([users, items + nu, nodes])
    cols = torch.cat([items + nu, users, nodes])
    return SparseGraph.from_coo(rows, cols, inv[rows].to(dtype), (n, n))


def random_walk_adjacency(
    train: Interactions,
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> SparseGraph:
    """D^-1 (A + I) of the training interactions, read from / written to the on-disk cache."""
    return _cached("rw_adj_self_loops", build_random_walk_adjacency, train, dtype, cache,
                   cache_dir)
