"""The user-user co-interaction graph of DualGNN and DRAGON (MODELS.md §1.6: "needs
``user_graph_dict.npy``"), built by mmfast from the training split and cached on disk.

For users a != b, c_ab = |I_a ∩ I_b|, the number of distinct training items both interacted
with (C = R Rᵀ with a zero diagonal, R the binary user x item matrix). Each user keeps its
``topk`` (200) largest entries: all of its non-zero entries when it has at most ``topk``,
ordered as ``torch.topk`` orders them, which is what MMRec's
``preprocessing/dualgnn-gen-u-u-matrix.py`` stores (``{user: [neighbours, counts]}``, counts as
floats). The order among equal counts is not by index: ``torch.topk`` on a CPU row of n_users
values picks and orders ties by its partial sort of the whole row (zeros included), and the
neighbour order matters downstream (the models take the first 40 of each list). So the build
reproduces the script's call exactly: the row block's dense counts [rows, n_users], grouped by
each row's k = min(non-zeros, topk), go through ``torch.topk(block, k)`` on the CPU, which
processes each row as the script's one-row call does. The counts themselves come from the
sparse product, one block of users at a time: no users x users matrix, no Python loop over
users (the cost is the block's dense row scan, O(users²) in C++ over the whole build, as in
the script, and once: the result is cached).

A ``user_graph_dict.npy`` in the dataset folder (MMRec's file, from the script or elsewhere) is
read instead when present (:func:`dataset_user_graph`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mmfast._atomic import atomic_torch_save
from mmfast.data.graphs import cache_dir as _cache_folder
from mmfast.data.graphs import interactions_hash
from mmfast.data.interactions import Interactions
from mmfast.ops.csr import gather_rows, rowptr_from_counts

USER_GRAPH_FILE = "user_graph_dict.npy"  # MMRec's ``user_graph_dict_file``
_USER_GRAPH_VERSION = 1  # bump when the definition changes
_BLOCK_ELEMENTS = 1 << 23  # dense counts per row block (64 MiB of int64)


@dataclass
class UserGraph:
    """Per user, an ordered neighbour list with its co-interaction counts, as CSR:
    ``rowptr`` (int64 [n_users + 1]), ``neighbours`` (int64 [nnz]), ``counts`` (float32 [nnz]).
    Row u is ``user_graph_dict[u]`` of MMRec's file, in the same order."""

    rowptr: torch.Tensor
    neighbours: torch.Tensor
    counts: torch.Tensor

    def __post_init__(self) -> None:
        n = self.rowptr.numel() - 1
        if (self.rowptr.dtype != torch.int64 or n < 0 or int(self.rowptr[0]) != 0
                or bool((self.rowptr[1:] < self.rowptr[:-1]).any())):
            raise ValueError("UserGraph: rowptr must be non-decreasing int64 starting at 0")
        nnz = int(self.rowptr[-1])
        if self.neighbours.shape != (nnz,) or self.counts.shape != (nnz,):
            raise ValueError(f"UserGraph: {nnz} entries by rowptr, got {tuple(self.neighbours.shape)}"
                             f" neighbours and {tuple(self.counts.shape)} counts")
        if nnz and (int(self.neighbours.min()) < 0 or int(self.neighbours.max()) >= n):
            raise ValueError(f"UserGraph: neighbour ids outside [0, {n})")

    @property
    def n_users(self) -> int:
        return self.rowptr.numel() - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def to_dict(self) -> dict[int, list[list]]:
        """MMRec's ``{user: [[neighbours], [counts]]}`` (ints and floats)."""
        rp, nb, ct = self.rowptr.tolist(), self.neighbours.tolist(), self.counts.tolist()
        return {u: [nb[rp[u]:rp[u + 1]], ct[rp[u]:rp[u + 1]]] for u in range(self.n_users)}

    @classmethod
    def from_dict(cls, graph: Mapping[Any, Any], n_users: int, where: str = "user graph") -> "UserGraph":
        """From MMRec's ``{user: [neighbours, counts]}``: keys 0..n_users-1, each value two
        equally long sequences (neighbour ids, counts)."""
        keys = sorted(int(k) for k in graph)
        if keys != list(range(n_users)):
            raise ValueError(f"{where}: has keys for {len(keys)} users, the dataset has {n_users} "
                             "(expected exactly the users 0..n_users-1)")
        lists = [graph[u] if u in graph else graph[np.int64(u)] for u in range(n_users)]
        lengths = []
        for u, entry in enumerate(lists):
            if len(entry) != 2 or len(entry[0]) != len(entry[1]):
                raise ValueError(f"{where}: user {u} must map to [neighbours, counts] of equal length")
            lengths.append(len(entry[0]))
        flat_n = [int(v) for entry in lists for v in entry[0]]
        flat_c = [float(v) for entry in lists for v in entry[1]]
        return cls(rowptr_from_counts(torch.tensor(lengths, dtype=torch.int64)),
                   torch.tensor(flat_n, dtype=torch.int64),
                   torch.tensor(flat_c, dtype=torch.float32))


def build_user_graph(train: Interactions, topk: int = 200,
                     block_elements: int = _BLOCK_ELEMENTS, min_count: int = 1) -> UserGraph:
    """The co-interaction graph of ``train`` (see the module docstring), on the CPU. Counts
    below ``min_count`` are dropped before the top-k (DA-MRS's item graph keeps pairs with
    at least 2 common users: :mod:`mmfast.data.item_behavior_graph`)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"build_user_graph: topk must be a positive int, got {topk!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"build_user_graph: min_count must be a positive int, got {min_count!r}")
    n_users, n_items = train.n_users, train.n_items
    rowptr, items = train.rowptr.cpu(), train.items.cpu()
    users_of = train.to_graph().T  # items x users: who interacted with each item
    item_rowptr, item_users = users_of.rowptr.cpu(), users_of.col.cpu().long()
    block = max(1, block_elements // max(n_users, 1))
    pieces_n, pieces_c, lengths = [], [], []
    for b0 in range(0, n_users, block):
        b1 = min(n_users, b0 + block)
        rows = b1 - b0
        # Every (user in block, item, co-user) path: the block's slice of R Rᵀ as counts.
        e0, e1 = int(rowptr[b0]), int(rowptr[b1])
        owner = torch.repeat_interleave(torch.arange(rows), rowptr[b0 + 1:b1 + 1] - rowptr[b0:b1])
        path_ptr, co_user = gather_rows(item_rowptr, item_users, items[e0:e1])
        path_owner = torch.repeat_interleave(owner, path_ptr[1:] - path_ptr[:-1],
                                             output_size=co_user.numel())
        counts = torch.bincount(path_owner * n_users + co_user, minlength=rows * n_users)
        dense = counts.view(rows, n_users).to(torch.float32)
        local = torch.arange(rows)
        dense[local, local + b0] = 0  # the script never counts a user with itself
        if min_count > 1:
            dense[dense < min_count] = 0
        k = (dense != 0).sum(1).clamp(max=topk)
        block_ptr = rowptr_from_counts(k)
        out_n = torch.empty(int(block_ptr[-1]), dtype=torch.int64)
        out_c = torch.empty(int(block_ptr[-1]), dtype=torch.float32)
        for kv in torch.unique(k).tolist():
            if kv == 0:
                continue
            sel = torch.nonzero(k == kv).flatten()
            values, index = torch.topk(dense[sel], kv)  # each row as the script's 1-row call
            at = (block_ptr[sel].unsqueeze(1) + torch.arange(kv)).flatten()
            out_n[at], out_c[at] = index.flatten(), values.flatten()
        pieces_n.append(out_n)
        pieces_c.append(out_c)
        lengths.append(k)
    if not lengths:
        return UserGraph(torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                         torch.zeros(0))
    return UserGraph(rowptr_from_counts(torch.cat(lengths)), torch.cat(pieces_n),
                     torch.cat(pieces_c))


def user_graph(train: Interactions, topk: int = 200, *, min_count: int = 1,
               cache: bool = True, cache_dir: str | os.PathLike | None = None,
               kind: str = "user-graph") -> UserGraph:
    """:func:`build_user_graph`, read from / written to the on-disk cache (keyed by a SHA-256
    of the training interactions, ``topk`` and ``min_count``; written atomically). ``kind``
    names the cache file (the item graph passes the transposed interactions and its own)."""
    if not cache:
        return build_user_graph(train, topk, min_count=min_count)
    floor = f":min{min_count}" if min_count != 1 else ""  # keeps the older keys valid
    key = hashlib.sha256(f"{kind}-v{_USER_GRAPH_VERSION}:{topk}{floor}:{interactions_hash(train)}"
                         .encode()).hexdigest()[:32]
    path = _cache_folder(cache_dir) / "graphs" / f"{kind}-top{topk}-{key}.pt"
    if path.is_file():
        graph = _load(path, train.n_users)
        if graph is not None:
            return graph
    graph = build_user_graph(train, topk, min_count=min_count)
    atomic_torch_save({"rowptr": graph.rowptr, "neighbours": graph.neighbours,
                       "counts": graph.counts}, path)
    return graph


def _load(path: Path, n_users: int) -> UserGraph | None:
    try:
        d = torch.load(path, weights_only=True)
        graph = UserGraph(d["rowptr"], d["neighbours"], d["counts"])
    except Exception:
        return None
    return graph if graph.n_users == n_users else None


def load_graph_dict(path: str | os.PathLike, node: str = "user") -> Mapping[Any, Any]:
    """The pickled ``{<node>: [neighbours, counts]}`` of a ``<node>_graph_dict*.npy`` file
    (MMRec's user graph, DA-MRS's item graph), with a one-line error naming the file."""
    try:
        obj = np.load(path, allow_pickle=True)
        graph = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise ValueError(f"{path}: not a readable {node}_graph_dict ({exc})") from None
    if not isinstance(graph, Mapping):
        raise ValueError(f"{path}: expected a pickled dict {{{node}: [neighbours, counts]}}, "
                         f"got {type(graph).__name__}")
    return graph


def read_user_graph_dict(path: str | os.PathLike, n_users: int) -> UserGraph:
    """A ``user_graph_dict.npy`` (MMRec's pickled ``{user: [neighbours, counts]}``)."""
    return UserGraph.from_dict(load_graph_dict(path, "user"), n_users, where=str(path))


def dataset_user_graph(dataset, file: str | None = USER_GRAPH_FILE, topk: int = 200,
                       **cache_kwargs) -> tuple[UserGraph, str]:
    """(graph, where it came from) for a :class:`mmfast.data.Dataset`: ``<dataset folder>/<file>``
    when that file exists (MMRec's ``user_graph_dict_file``), else built from the training
    split (cached)."""
    if file and dataset.source is not None:
        path = Path(dataset.source) / file
        if path.is_file():
            return read_user_graph_dict(path, dataset.n_users), str(path)
    return user_graph(dataset.train, topk, **cache_kwargs), f"built from the training split (top {topk})"
