"""Item kNN graphs of MODELS.md §1.4, built with ``topk_scores`` in row blocks.

Cosine similarity is the inner product of L2-normalized rows, so each block of items asks
:func:`mmfast.ops.topk_scores` for its k nearest items: memory stays O(items x k), never
items x items (63,001 x 4,096-d Elec features need 1 GiB for the features and 5 MiB for the
graph, where the dense similarity matrix would take 15.9 GB). The item itself is normally
among its k neighbours and is kept, as in FREEDOM and MGCN. A zero feature row (no
direction) gets similarity 0 to every item instead of MMRec's NaN.

- ``style="freedom"`` (G2, FREEDOM/DRAGON, used by SEA/SAND): binary edges normalized as
  1 / sqrt(r_a r_b), r = entries per row, i.e. every value is 1/k; row-stochastic, directed.
- ``style="mgcn"`` (G3, MGCN/LATTICE, used by AlignRec): the edge value is the similarity
  s_ab, normalized as s_ab / sqrt(d_a d_b) with d = the row sums of kept similarities
  (directed; a row with non-positive degree gets 0, where MMRec would produce NaN).

Several modalities are mixed as S = sum_m w_m S_m (FREEDOM: w_image = mm_image_weight = 0.1,
w_text = 0.9), or max-pooled entrywise, S = max_m S_m (SMORE, :func:`max_graphs`). Graphs are
cached on disk keyed by a SHA-256 of the features and every parameter, written atomically
(the cache helpers of :mod:`mmfast.data.graphs`).
"""
from __future__ import annotations

import hashlib
import os
from typing import Literal, Mapping, Sequence, Union

import numpy as np
import torch

from mmfast.data.graphs import cache_dir as _cache_folder
from mmfast.data.graphs import load_graph, save_graph
from mmfast.ops.sparse_graph import SparseGraph
from mmfast.ops.topk import topk_of_scores, topk_scores

Style = Literal["freedom", "mgcn"]
STYLES = ("freedom", "mgcn")
Features = Union[torch.Tensor, np.ndarray]
_KNN_CACHE_VERSION = 1  # bump when a graph's definition changes


def modality_weights(modalities: Sequence[str], image_weight: float = 0.1) -> dict[str, float]:
    """The mixing weights w_m of S = sum_m w_m S_m. MMRec mixes S = a S_image + (1 - a) S_text
    (a = ``mm_image_weight``); with other modality sets (TikTok's image + audio) the image
    keeps ``image_weight`` and the others share the rest equally; without an image modality
    all weigh the same (one modality: weight 1)."""
    modalities = list(modalities)
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" in modalities:
        rest = (1.0 - float(image_weight)) / (len(modalities) - 1)
        return {m: (float(image_weight) if m == "image" else rest) for m in modalities}
    return {m: 1.0 / len(modalities) for m in modalities}


def knn_graph(
    features: Features,
    k: int = 10,
    *,
    style: Style = "freedom",
    block_rows: int = 8192,
    device: torch.device | str | None = None,
    backend: str | None = None,
) -> SparseGraph:
    """The kNN graph [n_items, n_items] of one modality's features [n_items, d] (float32)."""
    if style not in STYLES:
        raise ValueError(f"knn_graph: style must be one of {STYLES}, got {style!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"knn_graph: k must be a positive int, got {k!r}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"knn_graph: block_rows must be a positive int, got {block_rows!r}")
    x = _as_tensor(features, "features", device)
    n = x.shape[0]
    # Normalized rows: cosine = inner product. Zero rows stay zero.
    norms = x.norm(dim=1, keepdim=True)
    # A NaN or inf anywhere in a row makes its norm non-finite: checked without an
    # items x d temporary.
    if n and not bool(torch.isfinite(norms).all()):
        raise ValueError("knn_graph: features holds NaN or infinite values")
    x = x / norms.clamp(min=torch.finfo(x.dtype).tiny)
    values = torch.empty(n, min(k, n), dtype=x.dtype, device=x.device)
    cols = torch.empty(n, min(k, n), dtype=torch.int64, device=x.device)
    for b0 in range(0, n, block_rows):
        v, i = topk_scores(x[b0:b0 + block_rows], x, min(k, n), backend=backend)
        values[b0:b0 + block_rows], cols[b0:b0 + block_rows] = v, i
    # Every row holds per = min(k, n) neighbours (no exclusion, so no padding).
    per = cols.shape[1]
    rows = torch.arange(n, device=x.device).repeat_interleave(per)
    cols, values = cols.reshape(-1), values.reshape(-1).double()
    if style == "freedom":
        r = torch.full((n,), float(per), dtype=torch.float64, device=x.device)
        w = (r[rows] * r[cols]).rsqrt()  # 1 / sqrt(r_a r_b) = 1 / k
    else:
        deg = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, rows, values)
        inv = torch.where(deg > 0, deg.clamp(min=1e-300).rsqrt(), torch.zeros_like(deg))
        w = inv[rows] * values * inv[cols]
    rowptr = torch.arange(n + 1, dtype=torch.int64, device=x.device) * per
    return SparseGraph(rowptr, cols.to(torch.int32), w.float(), (n, n))


def mix_graphs(graphs: Sequence[SparseGraph], weights: Sequence[float]) -> SparseGraph:
    """sum_m w_m G_m (the union of the patterns; entries present in several graphs add)."""
    if len(graphs) != len(weights) or not graphs:
        raise ValueError(
            f"mix_graphs: need one weight per graph, got {len(graphs)} graphs and "
            f"{len(weights)} weights"
        )
    shape = graphs[0].shape
    if any(g.shape != shape for g in graphs):
        raise ValueError(f"mix_graphs: graphs differ in shape: {[g.shape for g in graphs]}")
    if len(graphs) == 1 and float(weights[0]) == 1.0:
        return graphs[0]
    rows = torch.cat([g.row_indices() for g in graphs])
    cols = torch.cat([g.col.long() for g in graphs])
    vals = torch.cat([g.val.double() * float(w) for g, w in zip(graphs, weights)])
    mixed = SparseGraph.from_coo(rows, cols, vals, shape)
    return SparseGraph(mixed.rowptr, mixed.col, mixed.val.float(), shape)


def max_graphs(graphs: Sequence[SparseGraph]) -> SparseGraph:
    """max_m G_m entrywise over the union of the patterns (SMORE's max-pooled fusion graph):
    an entry present in one graph keeps its value, one present in several takes the largest."""
    if not graphs:
        raise ValueError("max_graphs: no graphs given")
    shape = graphs[0].shape
    if any(g.shape != shape for g in graphs):
        raise ValueError(f"max_graphs: graphs differ in shape: {[g.shape for g in graphs]}")
    n_cols = max(shape[1], 1)
    key = torch.cat([g.row_indices() * n_cols + g.col.long() for g in graphs])
    vals = torch.cat([g.val for g in graphs])
    key, inverse = torch.unique(key, return_inverse=True)
    top = torch.full((key.numel(),), float("-inf"), dtype=vals.dtype, device=vals.device)
    top.scatter_reduce_(0, inverse, vals, "amax")
    return SparseGraph.from_coo(key // n_cols, key % n_cols, top, shape)


def item_knn_graph(
    features: Union[Features, Mapping[str, Features]],
    k: int = 10,
    *,
    style: Style = "freedom",
    weights: Mapping[str, float] | None = None,
    image_weight: float = 0.1,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    backend: str | None = None,
) -> SparseGraph:
    """The item kNN graph of one or several modalities, mixed, read from / written to cache.

    ``features`` is one matrix or ``{modality: matrix}`` (e.g. ``dataset.features``). Mixing
    weights: ``weights`` if given, else :func:`modality_weights` with ``image_weight``.
    """
    feats = dict(features) if isinstance(features, Mapping) else {"features": features}
    if not feats:
        raise ValueError("item_knn_graph: no features given")
    w = _mixing_weights(feats, weights, image_weight)
    names = sorted(feats)
    if not cache:
        return _build(feats, names, w, k, style, device, backend)
    key = _cache_key(feats, names, w, k, style)
    path = _cache_folder(cache_dir) / "graphs" / f"knn-{style}-k{k}-{key[:32]}.pt"
    if path.is_file():
        graph = load_graph(path)
        if graph is not None:
            return graph if device is None else graph.to(device)
    graph = _build(feats, names, w, k, style, device, backend)
    save_graph(graph, path)
    return graph


# ---------------------------------------------------------------------- internals
def _build(feats, names, w, k, style, device, backend) -> SparseGraph:
    graphs = [knn_graph(feats[m], k, style=style, device=device, backend=backend) for m in names]
    return mix_graphs(graphs, [w[m] for m in names])


def _as_tensor(x: Features, name: str, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"knn_graph: {name} must be a 2-D [n_items, d] matrix, got {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"knn_graph: {name} must be floating point, got {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()
    if device is not None:
        x = x.to(device)
    return x


def _mixing_weights(feats, weights, image_weight) -> dict[str, float]:
    if weights is None:
        return modality_weights(list(feats), image_weight)
    if set(weights) != set(feats):
        raise ValueError(
            f"item_knn_graph: weights must name exactly the modalities {sorted(feats)}, got "
            f"{sorted(weights)}"
        )
    return {m: float(v) for m, v in weights.items()}


def _cache_key(feats, names, w, k, style) -> str:
    h = hashlib.sha256()
    h.update(f"knn-v{_KNN_CACHE_VERSION}:{style}:{k}:".encode())
    shapes = {feats[m].shape[0] for m in names}
    if len(shapes) != 1:
        raise ValueError(f"item_knn_graph: modalities differ in item count: "
                         f"{ {m: tuple(feats[m].shape) for m in names} }")
    for m in names:
        x = feats[m]
        if isinstance(x, torch.Tensor):
            arr = x.detach().cpu().contiguous().numpy()
        else:
            arr = np.ascontiguousarray(x)
        h.update(f"{m}:{arr.dtype.str}:{arr.shape}:{w[m]!r}:".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------- shrunk similarity
_SHRINK_BLOCK_ELEMENTS = 1 << 24  # scores per block: 64 MiB in float32


def shrunk_knn_graph(
    features: Features,
    k: int = 10,
    shrink: float = 10.0,
    *,
    block_rows: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> SparseGraph:
    """The item-item kNN scorer S of ItemKNNCBF (Dacrema et al., RecSys'19): for each item a, its
    k items b of largest shrunk cosine

        s_ab = <x_a, x_b> / (||x_a|| ||x_b|| + shrink),

    kept with that value (not normalized; directed; the item itself is normally among them).

    The shrink term makes s_ab no inner product of fixed vectors, so :func:`topk_scores` cannot
    rank it directly: each block of rows gets its dense [block, n_items] similarities and
    :func:`topk_of_scores` (ties to the smaller index, as the kernels) keeps the top k, so memory
    is O(block x n_items + n_items x k), never items x items. A pair whose denominator is 0
    (a zero feature row with ``shrink`` 0) gets similarity 0 where MMRec would produce NaN.
    Float64 features give a float64 graph (the test's reference), others float32. Cached on
    disk like :func:`item_knn_graph`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"shrunk_knn_graph: k must be a positive int, got {k!r}")
    if not float(shrink) >= 0.0:
        raise ValueError(f"shrunk_knn_graph: shrink must be >= 0, got {shrink!r}")
    x = _as_tensor(features, "features", device)
    if not cache:
        return _build_shrunk(x, k, float(shrink), block_rows)
    key = _cache_key({"features": x}, ["features"], {"features": 1.0}, k,
                     f"shrunk:{float(shrink)!r}")
    path = _cache_folder(cache_dir) / "graphs" / f"knn-shrunk-k{k}-{key[:32]}.pt"
    if path.is_file():
        graph = load_graph(path)
        if graph is not None:
            return graph.to(x.device)
    graph = _build_shrunk(x, k, float(shrink), block_rows)
    save_graph(graph, path)
    return graph


def _build_shrunk(x: torch.Tensor, k: int, shrink: float, block_rows: int | None) -> SparseGraph:
    n = x.shape[0]
    norms = x.norm(dim=1)
    if n and not bool(torch.isfinite(norms).all()):
        raise ValueError("shrunk_knn_graph: features holds NaN or infinite values")
    per = min(k, n)
    if block_rows is None:
        block_rows = max(1, _SHRINK_BLOCK_ELEMENTS // max(n, 1))
    values = torch.empty(n, per, dtype=x.dtype, device=x.device)
    cols = torch.empty(n, per, dtype=torch.int64, device=x.device)
    for b0 in range(0, n, block_rows):
        rows = slice(b0, b0 + block_rows)
        denom = norms[rows, None] * norms[None, :] + shrink
        sim = x[rows] @ x.T
        sim = torch.where(denom > 0, sim / denom.clamp(min=torch.finfo(x.dtype).tiny),
                          torch.zeros_like(sim))
        values[rows], cols[rows] = topk_of_scores(sim, per, validate=False)
    rowptr = torch.arange(n + 1, dtype=torch.int64, device=x.device) * per
    return SparseGraph(rowptr, cols.reshape(-1).to(torch.int32), values.reshape(-1), (n, n))
