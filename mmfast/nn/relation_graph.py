"""Relation graphs of a modal line: a frozen item-item graph, and a user-user kNN graph rebuilt
from the current user vectors (DRepMRec's modal-specific relation graphs, MODELS.md §4.2-4.3)."""
from __future__ import annotations

import torch
from torch import nn

from mmfast.data.knn import knn_graph
from mmfast.ops import SparseGraph, propagate


class RelationGraph(nn.Module):
    """Ē = S^L h on a fixed square graph S (``propagate(..., "last")``; the G3 item graph of
    MGCN/LATTICE with L = 1 in DRepMRec). The graph follows the model's ``.to()``/``.double()``."""

    def __init__(self, graph: SparseGraph | None, layers: int = 1) -> None:
        super().__init__()
        if graph is not None and graph.shape[0] != graph.shape[1]:
            raise ValueError(f"RelationGraph: the graph must be square, got {graph.shape}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"RelationGraph: layers must be a positive int, got {layers!r}")
        self.graph, self.layers = graph, layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            raise RuntimeError("RelationGraph: no graph yet (UserKNNGraph: call rebuild first)")
        return propagate(self.graph, x, self.layers, "last")


class UserKNNGraph(RelationGraph):
    """A user-user graph from the cosine kNN of given user vectors, (G3)-style normalization
    (edge = similarity, s_ab / sqrt(d_a d_b), directed, k neighbours, the user itself included).
    :meth:`rebuild` makes it from detached vectors (DRepMRec: once per epoch, from the lifted
    modal vectors); no cache, no gradient."""

    def __init__(self, k: int = 10, layers: int = 1) -> None:
        super().__init__(None, layers)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"UserKNNGraph: k must be a positive int, got {k!r}")
        self.k = k

    @torch.no_grad()
    def rebuild(self, users: torch.Tensor) -> None:
        g = knn_graph(users.detach(), self.k, style="mgcn")
        self.graph = g.to(users.device, users.dtype)

    def extra_repr(self) -> str:
        return f"k={self.k}, layers={self.layers}"
