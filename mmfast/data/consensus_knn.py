"""DA-MRS's denoised item-item graphs of two modalities (MMRec DAMRS ``get_knn_adj_mat``), built in
row blocks and cached on disk like the kNN graphs of :mod:`mmfast.data.knn`.

With S^v and S^t the cosine similarity matrices of the visual and textual features and
mu_v = mean(S^v), mu_t = mean(S^t) their means over all item pairs (the item with itself
included), a pair (a, b) is a candidate only when both modalities agree it is above average:
C_ab = [S^v_ab >= mu_v and S^t_ab >= mu_t] (the paper's "denoising" of the item-item graphs:
an edge one modality does not support is dropped). Item a keeps k_a = min(k, #{b: C_ab S^t_ab
!= 0}) neighbours in each graph: the k_a largest entries of its row of C ∘ S^v for the visual
graph, of C ∘ S^t for the textual one (``torch.topk`` over the masked row, so when fewer than k
candidates exist the neighbours are exactly the candidates). Edges are binary and normalized as
1 / sqrt(r_a r_b) with r = k + 1e-7 per row (MMRec's ``compute_normalized_laplacian``; directed,
r_b is b's own neighbour count).

mu needs no items x items matrix: mean_ab <x̂_a, x̂_b> = ||sum_a x̂_a||² / n². The masked rows
are computed one block of items at a time ([block, n_items] dense, O(n² d) in all, as
:func:`mmfast.data.knn.knn_graph`). A zero feature row has similarity 0 to every item (MMRec
gets NaN); NaN or infinite features raise a ValueError.
"""
from __future__ import annotations

import os

import torch

from mmfast.data.graphs import cache_dir as _cache_folder
from mmfast.data.graphs import load_graph, save_graph
from mmfast.data.knn import Features, _as_tensor, _cache_key
from mmfast.ops.sparse_graph import SparseGraph

_BLOCK_ELEMENTS = 1 << 23  # similarity entries per row block and modality (32 MiB in float32)


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if x.shape[0] and not bool(torch.isfinite(norms).all()):
        raise ValueError(f"consensus_knn_graphs: the {name} features hold NaN or infinite values")
    return x / norms.clamp(min=torch.finfo(x.dtype).tiny)


def build_consensus_knn_graphs(visual: Features, textual: Features, k: int = 10,
                               block_elements: int = _BLOCK_ELEMENTS,
                               device: torch.device | str | None = None, eps: float = 1e-7,
                               ) -> tuple[SparseGraph, SparseGraph]:
    """(visual graph, textual graph), each [n_items, n_items] (see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"consensus_knn_graphs: k must be a positive int, got {k!r}")
    xv = _unit_rows(_as_tensor(visual, "visual features", device), "visual")
    xt = _unit_rows(_as_tensor(textual, "textual features", device), "textual")
    n = xv.shape[0]
    if xt.shape[0] != n:
        raise ValueError(f"consensus_knn_graphs: {n} visual rows but {xt.shape[0]} textual rows")
    mean_v = (xv.double().sum(0).square().sum() / max(n, 1) ** 2).to(xv.dtype)
    mean_t = (xt.double().sum(0).square().sum() / max(n, 1) ** 2).to(xt.dtype)
    per = min(k, n)
    block = max(1, block_elements // max(n, 1))
    counts, cols_v, cols_t = [], [], []
    for b0 in range(0, n, block):
        sv, st = xv[b0:b0 + block] @ xv.T, xt[b0:b0 + block] @ xt.T
        drop = (sv < mean_v) | (st < mean_t)
        sv, st = sv.masked_fill(drop, 0), st.masked_fill(drop, 0)
        counts.append((st != 0).sum(1).clamp(max=per))
        cols_v.append(torch.topk(sv, per, dim=1).indices)
        cols_t.append(torch.topk(st, per, dim=1).indices)
    if not counts:
        empty = SparseGraph.from_coo(torch.zeros(0, dtype=torch.int64),
                                     torch.zeros(0, dtype=torch.int64), None, (0, 0))
        return empty, empty
    kept = torch.cat(counts)  # k_a
    keep = torch.arange(per, device=kept.device) < kept.unsqueeze(1)  # the first k_a of each row
    rows = torch.arange(n, device=kept.device).unsqueeze(1).expand(n, per)[keep]
    inv = (kept.double() + eps).rsqrt()
    graphs = []
    for cols in (torch.cat(cols_v)[keep], torch.cat(cols_t)[keep]):
        g = SparseGraph.from_coo(rows, cols, inv[rows] * inv[cols], (n, n))
        graphs.append(SparseGraph(g.rowptr, g.col, g.val.float(), (n, n)))
    return graphs[0], graphs[1]


def consensus_knn_graphs(visual: Features, textual: Features, k: int = 10, *, cache: bool = True,
                         cache_dir: str | os.PathLike | None = None,
                         device: torch.device | str | None = None,
                         ) -> tuple[SparseGraph, SparseGraph]:
    """:func:`build_consensus_knn_graphs`, read from / written to the on-disk cache (keyed by a
    SHA-256 of both feature tables and ``k``; written atomically)."""
    if not cache:
        return build_consensus_knn_graphs(visual, textual, k, device=device)
    feats = {"visual": visual, "textual": textual}
    key = _cache_key(feats, sorted(feats), {"visual": 1.0, "textual": 1.0}, k, "damrs")[:32]
    folder = _cache_folder(cache_dir) / "graphs"
    paths = [folder / f"knn-damrs-{role}-k{k}-{key}.pt" for role in ("visual", "textual")]
    if all(p.is_file() for p in paths):
        loaded = [load_graph(p) for p in paths]
        if all(g is not None for g in loaded):
            return tuple(g if device is None else g.to(device) for g in loaded)  # type: ignore
    graphs = build_consensus_knn_graphs(visual, textual, k, device=device)
    for g, p in zip(graphs, paths):
        save_graph(g, p)
    return graphs

