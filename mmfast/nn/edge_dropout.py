"""Inverted dropout on the stored entries of a sparse graph, at a rate drawn per call.

For a graph G with entries g_e, one draw is

    p = r * max_rate,  r ~ U[0, 1);     G~_e = g_e * 1[v_e >= p] / (1 - p),  v_e ~ U[0, 1) i.i.d.

(``max_rate = 0`` keeps G). Every stored entry is its own trial, so the two directions of an
undirected edge of Â are dropped independently; this is the ``sparse_dropout`` of the LightGCN
encoder SelfCF uses in MMRec (``drop_ratio = 1.0``, so p ~ U[0, 1)). A dropped entry keeps its
place with value 0 rather than leaving the structure: the product G~ x is the same, the shapes
never depend on the draw, and nothing is read back to the host. The transpose the backward
pass multiplies by is built from the same values through :class:`mmfast.nn.edge_weights.EdgeList`
(the structure and both orders computed once).
"""
from __future__ import annotations

import torch

from mmfast.nn.edge_weights import EdgeList
from mmfast.ops import SparseGraph


class RandomRateEdgeDropout:
    """Draws G~ (module docstring) for ``graph``, from ``generator``."""

    def __init__(self, graph: SparseGraph, max_rate: float, generator: torch.Generator) -> None:
        max_rate = float(max_rate)
        if not 0.0 <= max_rate <= 1.0:
            raise ValueError(f"edge dropout ratio must lie in [0, 1], got {max_rate}")
        self.max_rate, self.generator = max_rate, generator
        self.edges = EdgeList(graph.row_indices(), graph.col.long(), graph.shape)

    def to(self, device: torch.device | str) -> "RandomRateEdgeDropout":
        self.edges = self.edges.to(device)
        return self

    def rate_and_keep(self, nnz: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, 0/1 keep mask [nnz]) of one draw, on the generator's device."""
        dev = self.generator.device
        p = torch.rand((), generator=self.generator, device=dev, dtype=torch.float64) * self.max_rate
        v = torch.rand(nnz, generator=self.generator, device=dev, dtype=torch.float64)
        return p, v >= p

    def __call__(self, graph: SparseGraph) -> SparseGraph:
        """G~ of ``graph`` (the structure given at construction; values as ``graph`` holds
        them now, so ``.double()`` and friends follow the graph)."""
        if self.max_rate == 0.0:
            return graph
        p, keep = self.rate_and_keep(graph.nnz)
        scale = (1.0 / (1.0 - p)).to(graph.val.device, graph.val.dtype)
        return self.edges.graph(graph.val * keep.to(graph.val.device, graph.val.dtype) * scale)
