"""User-item graphs of MODELS.md §1.4: Â (G1) and R̂ (G4), built vectorized and cached on disk.

The cache key is a SHA-256 of the training interactions (their canonical CSR arrays) and the
graph kind, so a different split or dataset never reads a stale file. Files are written
atomically (:mod:`mmfast._atomic`), so readers never see a half-written graph, even with
several processes building at once.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from mmfast._atomic import atomic_torch_save
from mmfast.data.interactions import Interactions
from mmfast.ops.sparse_graph import SparseGraph

_CACHE_VERSION = 1  # bump when a graph's definition changes


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$MMFAST_CACHE``, else ``~/.cache/mmfast``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("MMFAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mmfast"


def interactions_hash(train: Interactions) -> str:
    """Hex SHA-256 of the pairs and the id ranges (independent of input row order)."""
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}:{train.n_users}:{train.n_items}:".encode())
    h.update(train.rowptr.cpu().numpy().tobytes())
    h.update(train.items.cpu().numpy().tobytes())
    return h.hexdigest()


def _inv_sqrt(deg: torch.Tensor, eps: float) -> torch.Tensor:
    # Zero-degree nodes get 0 rather than inf (MODELS.md G1); FREEDOM's form adds eps instead.
    if eps:
        return (deg + eps).rsqrt()
    return torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))


def bipartite_normalized(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    *,
    dtype: torch.dtype = torch.float32,
    degree_eps: float = 0.0,
) -> SparseGraph:
    """Â = D^-1/2 A D^-1/2 over the n_users + n_items nodes (users first) of the bipartite
    graph with the given distinct (user, item) edges: binary A, no self-loops, degrees counted
    from these edges. The one builder of Â: the training graph (G1) and FREEDOM's pruned
    graphs both come from here. ``degree_eps`` > 0 is FREEDOM's ``degree + 1e-7`` form."""
    du = torch.bincount(users, minlength=n_users).double()
    di = torch.bincount(items, minlength=n_items).double()
    w = (_inv_sqrt(du, degree_eps)[users] * _inv_sqrt(di, degree_eps)[items]).to(dtype)
    n = n_users + n_items
    return SparseGraph.from_coo(torch.cat([users, items + n_users]),
                                torch.cat([items + n_users, users]), torch.cat([w, w]), (n, n),
                                sum_duplicates=False, is_symmetric=True)


def build_normalized_adjacency(train: Interactions, dtype: torch.dtype = torch.float32) -> SparseGraph:
    """Â (G1) of the training interactions."""
    return bipartite_normalized(train.users(), train.items, train.n_users, train.n_items,
                                dtype=dtype)


def build_user_item_lift(train: Interactions, dtype: torch.dtype = torch.float32) -> SparseGraph:
    """R̂ [n_users, n_items], R̂_ui = 1 / sqrt(deg_u deg_i): the user x item block of Â."""
    du, di = train.user_degrees().double(), train.item_degrees().double()
    w = (_inv_sqrt(du, 0.0)[train.users()] * _inv_sqrt(di, 0.0)[train.items]).to(dtype)
    col = train.items.to(torch.int32 if train.n_items < 2**31 else torch.int64)
    return SparseGraph(train.rowptr.clone(), col, w, (train.n_users, train.n_items))


def save_graph(graph: SparseGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` (moved to CPU) to ``path`` atomically, for :func:`load_graph`."""
    graph = graph.to("cpu")
    atomic_torch_save({"rowptr": graph.rowptr, "col": graph.col, "val": graph.val,
                       "shape": graph.shape, "is_symmetric": graph.is_symmetric}, path)


def load_graph(path: str | os.PathLike) -> SparseGraph | None:
    """The graph :func:`save_graph` wrote, validated; None when unreadable or corrupt (the
    caller rebuilds and overwrites it)."""
    try:
        d = torch.load(path, weights_only=True)
        return SparseGraph(d["rowptr"], d["col"], d["val"], d["shape"],
                           is_symmetric=d["is_symmetric"])
    except Exception:
        return None


def _cached(
    kind: str,
    build: Callable[[Interactions, torch.dtype], SparseGraph],
    train: Interactions,
    dtype: torch.dtype,
    cache: bool,
    cache_path: str | os.PathLike | None,
) -> SparseGraph:
    if not cache:
        return build(train, dtype)
    name = f"{kind}-{str(dtype).removeprefix('torch.')}-{interactions_hash(train)[:32]}.pt"
    path = cache_dir(cache_path) / "graphs" / name
    if path.is_file():
        graph = load_graph(path)
        if graph is not None:
            return graph
    graph = build(train, dtype)
    save_graph(graph, path)
    return graph


def normalized_adjacency(
    train: Interactions,
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> SparseGraph:
    """Â (G1) as a symmetric SparseGraph, read from / written to the on-disk cache."""
    return _cached("norm_adj", build_normalized_adjacency, train, dtype, cache, cache_dir)


def user_item_lift(
    train: Interactions,
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> SparseGraph:
    """R̂ (G4) as a SparseGraph [n_users, n_items], read from / written to the on-disk cache."""
    return _cached("user_item_lift", build_user_item_lift, train, dtype, cache, cache_dir)
