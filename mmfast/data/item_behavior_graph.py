"""DA-MRS's item-item behaviour graph (MODELS.md §1.6: DAMRS "needs ``item_graph_dict_2.npy``"),
built by mmfast from the training split and cached on disk, and the "session" adjacency MMRec's
DAMRS makes of it.

What the file is. MMRec's DAMRS loads ``item_graph_dict_2.npy`` (``item_graph_dict_file``) from
the dataset folder, and MMRec ships no script for it. It comes from the authors' repository
(XMUDM/DA-MRS, ``build_iib_graph.py``; its README runs ``python -u build_iib_graph.py
--dataset=baby --topk=2``, and the script saves ``item_graph_dict_<topk>.npy``), the Item-Item
Behaviour graph of the KDD'24 paper: for items a != b, c_ab = |U_a ∩ U_b|, the number of
distinct training users (``x_label == 0`` rows) who interacted with both, kept only when
c_ab >= 2 (the script writes a count only then); each item keeps its ``topk`` (2) largest
counts (all non-zero ones when it has at most ``topk``), as ``torch.topk`` on the item's dense
float32 row returns them, and the file is a pickled ``{item: [neighbours, counts]}`` with every
item 0..n_items-1 as a key (an item with no pair gets ``[[], []]``).

This is DualGNN's user-user co-interaction graph with users and items swapped and a floor of 2,
so it is built by the same code (:func:`mmfast.data.user_graph.build_user_graph` on the
transposed training interactions, ``min_count=2``), which reproduces ``torch.topk``'s choice
and order among equal counts. An ``item_graph_dict_2.npy`` (any ``item_graph_dict_file``) in
the dataset folder is read instead when present (:func:`dataset_item_graph`); keys it lacks are
items with no neighbours, as MMRec's ``get_session_adj`` reads them.

The session adjacency (:func:`session_adjacency`, MMRec's ``get_session_adj`` +
``compute_normalized_laplacian``): A = I + the binary neighbour pattern (directed: row a lists
a's neighbours), normalized as A_ab / sqrt(r_a r_b) with r = row sums + 1e-7. MMRec collects
the counts and then builds A from ones, so the counts do not enter the graph; ``weighted=True``
uses them (self-loop weight 1, r the weighted row sums) instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mmfast.data.interactions import Interactions
from mmfast.data.user_graph import UserGraph, load_graph_dict, user_graph
from mmfast.ops.sparse_graph import SparseGraph

ITEM_GRAPH_FILE = "item_graph_dict_2.npy"  # MMRec's DAMRS ``item_graph_dict_file``
ITEM_GRAPH_TOPK = 2  # build_iib_graph.py --topk=2, as the DA-MRS README runs it
ITEM_GRAPH_MIN_COUNT = 2  # gen_item_matrix writes a count only when >= 2 users share the pair


def transposed(train: Interactions) -> Interactions:
    """The same pairs grouped by item: rows are items, "items" are users."""
    return Interactions.from_pairs(train.items, train.users(), train.n_items, train.n_users)


def item_behavior_graph(train: Interactions, topk: int = ITEM_GRAPH_TOPK,
                        min_count: int = ITEM_GRAPH_MIN_COUNT, **cache_kwargs) -> UserGraph:
    """The item-item behaviour graph of ``train`` (rows are items; see the module docstring),
    read from / written to the on-disk cache."""
    return user_graph(transposed(train), topk, min_count=min_count, kind="item-graph",
                      **cache_kwargs)


def read_item_graph_dict(path: str | os.PathLike, n_items: int) -> UserGraph:
    """An ``item_graph_dict_<k>.npy`` (a pickled ``{item: [neighbours, counts]}``); missing
    keys are items without neighbours."""
    full: dict[int, Any] = {}
    for key, value in load_graph_dict(path, "item").items():
        item = int(key)
        if not 0 <= item < n_items:
            raise ValueError(f"{path}: key {item} is not an item of the dataset "
                             f"(0..{n_items - 1})")
        full[item] = value
    for item in range(n_items):
        full.setdefault(item, [[], []])
    return UserGraph.from_dict(full, n_items, where=str(path))


def dataset_item_graph(dataset, file: str | None = ITEM_GRAPH_FILE, topk: int = ITEM_GRAPH_TOPK,
                       min_count: int = ITEM_GRAPH_MIN_COUNT, **cache_kwargs
                       ) -> tuple[UserGraph, str]:
    """(graph, where it came from) for a :class:`mmfast.data.Dataset`: ``<dataset folder>/<file>``
    when that file exists, else built from the training split (cached)."""
    if file and dataset.source is not None:
        path = Path(dataset.source) / file
        if path.is_file():
            return read_item_graph_dict(path, dataset.n_items), str(path)
    graph = item_behavior_graph(dataset.train, topk, min_count, **cache_kwargs)
    return graph, f"built from the training split (top {topk}, >= {min_count} common users)"


def session_adjacency(graph: UserGraph, *, weighted: bool = False,
                      eps: float = 1e-7) -> SparseGraph:
    """MMRec DAMRS's ``session_adj`` [n_items, n_items] of an item graph (module docstring):
    (I + A) normalized by 1 / sqrt(r_a r_b), r = row sums + ``eps``; A binary unless
    ``weighted``. Repeated entries (a file listing a neighbour twice, or the item itself) add."""
    n = graph.n_users
    rows = torch.cat([torch.arange(n), torch.repeat_interleave(torch.arange(n), graph.lengths)])
    cols = torch.cat([torch.arange(n), graph.neighbours])
    vals = (torch.cat([torch.ones(n, dtype=torch.float64), graph.counts.double()]) if weighted
            else torch.ones(rows.numel(), dtype=torch.float64))
    inv = (torch.zeros(n, dtype=torch.float64).index_add_(0, rows, vals) + eps).rsqrt()
    w = vals * inv[rows] * inv[cols]
    adj = SparseGraph.from_coo(rows, cols, w, (n, n))
    return SparseGraph(adj.rowptr, adj.col, adj.val.float(), (n, n))
