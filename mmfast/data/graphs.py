"""User-item graphs of MODELS.md §1.4: Â (G1) and R̂ (G4), built vectorized and cached on disk.

The cache key is a SHA-256 of the training interactions (their canonical CSR arrays) and the
graph kind, so a different split or dataset never reads a stale file. Files are written to a
temporary name in the cache folder and moved into place with ``os.replace``, so readers never
see a half-written graph, even with several processes building at once.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from mmfast.data.dataset import Interactions
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


def _degrees(train: Interactions) -> tuple[torch.Tensor, torch.Tensor]:
    return train.user_degrees().double(), train.item_degrees().double()


def _inv_sqrt(deg: torch.Tensor) -> torch.Tensor:
    # Zero-degree nodes get 0 rather than inf (MODELS.md G1).
    return torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))


def build_normalized_adjacency(train: Interactions, dtype: torch.dtype = torch.float32) -> SparseGraph:
    """Â = D^-1/2 A D^-1/2 over the n_users + n_items nodes (users first), A binary, no loops."""
    n_u, n_i = train.n_users, train.n_items
    u, i = train.users(), train.items
    du, di = _degrees(train)
    w = (_inv_sqrt(du)[u] * _inv_sqrt(di)[i]).to(dtype)
    # User rows are the training CSR itself; item rows are its transpose (one stable sort,
    # which keeps users ascending inside each item row). Pairs are unique, so no summing.
    by_item = torch.sort(i, stable=True).indices
    item_rowptr = torch.zeros(n_i + 1, dtype=torch.int64)
    torch.cumsum(di.long(), 0, out=item_rowptr[1:])
    rowptr = torch.cat([train.rowptr, item_rowptr[1:] + train.nnz])
    col = torch.cat([i + n_u, u[by_item]])
    col = col.to(torch.int32 if n_u + n_i < 2**31 else torch.int64)
    return SparseGraph(rowptr, col, torch.cat([w, w[by_item]]), (n_u + n_i, n_u + n_i),
                       is_symmetric=True)


def build_user_item_lift(train: Interactions, dtype: torch.dtype = torch.float32) -> SparseGraph:
    """R̂ [n_users, n_items], R̂_ui = 1 / sqrt(deg_u deg_i): the user x item block of Â."""
    du, di = _degrees(train)
    w = (_inv_sqrt(du)[train.users()] * _inv_sqrt(di)[train.items]).to(dtype)
    col = train.items.to(torch.int32 if train.n_items < 2**31 else torch.int64)
    return SparseGraph(train.rowptr.clone(), col, w, (train.n_users, train.n_items))


def _save_atomic(graph: SparseGraph, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"rowptr": graph.rowptr, "col": graph.col, "val": graph.val,
                        "shape": graph.shape, "is_symmetric": graph.is_symmetric}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(path: Path) -> SparseGraph | None:
    try:
        d = torch.load(path, weights_only=True)
        return SparseGraph(d["rowptr"], d["col"], d["val"], d["shape"],
                           is_symmetric=d["is_symmetric"])
    except Exception:  # unreadable or corrupt: rebuild and overwrite
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
        graph = _load(path)
        if graph is not None:
            return graph
    graph = build(train, dtype)
    _save_atomic(graph, path)
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
