"""Message passing whose edge weights are learned: a fixed edge list, values given per call.

GRCN (Wei et al., MM'20) weighs every user-item edge by an attention score computed from the
nodes it joins, and then by a per-node confidence, so the weights change every step and the
loss differentiates through them. :class:`EdgeList` holds the structure once (the CSR order of
the edges and of their transpose) and computes, for weights ``w`` given in edge order,

    y = A(w) x,   y_t = sum_{e : dst_e = t} w_e x_{src_e}                                   (1)

differentiable in both ``w`` and ``x``: dL/dx = A(w)^T dL/dy (the transpose product) and
dL/dw_e = <dL/dy_{dst_e}, x_{src_e}> (the sampled dense-dense product on the edges).
:func:`segment_softmax` is the attention of a graph attention layer (PyG's ``softmax``),

    alpha_e = exp(s_e - m_t) / (sum_{e' : dst_e' = t} exp(s_e' - m_t) + 1e-16),  t = dst_e,   (2)

with m_t = max of the scores into node t (a shift that cancels; it only keeps exp finite), and
the attention scores themselves are edge-wise inner products,

    s_e = <a_{dst_e}, b_{src_e}>,                                                            (3)

whose gradients are again products with the graph: dL/da = A(g) b, dL/db = A(g)^T a,
g = dL/ds.

With the ``mmfast`` backend, (1) and its x-gradient run on the compiled ``spmm`` kernel (the
values put into a :class:`mmfast.ops.SparseGraph` each call, deterministic on CPU and CUDA);
(3) and the w-gradient of (1) run on ``torch.sparse.sampled_addmm`` over the edges' CSR
pattern. With the ``torch`` backend, (1) is a plain ``index_add`` over the edges and (3) a
gather of both ends, differentiated by autograd: the reference the tests compare with.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from mmfast.ops import SparseGraph, spmm
from mmfast.ops._backend import resolve
from mmfast.ops.csr import rowptr_from_rows


class EdgeList:
    """The structure of a directed graph from ``n_cols`` source nodes to ``n_rows`` target
    nodes: edge e carries a message from ``src[e]`` to ``dst[e]``. Repeated edges are allowed
    (they add up). Built once; weights come with each :meth:`aggregate` call, in edge order."""

    def __init__(self, dst: torch.Tensor, src: torch.Tensor, shape: Sequence[int]) -> None:
        dst, src = torch.as_tensor(dst).long(), torch.as_tensor(src).long()
        if dst.dim() != 1 or dst.shape != src.shape:
            raise ValueError(f"EdgeList: dst and src must be 1-D of equal length, got "
                             f"{tuple(dst.shape)} and {tuple(src.shape)}")
        self.shape = (int(shape[0]), int(shape[1]))
        for name, idx, bound in (("dst", dst, self.shape[0]), ("src", src, self.shape[1])):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
                raise ValueError(f"EdgeList: {name} holds indices outside [0, {bound})")
        self.dst, self.src = dst, src
        # CSR of A (rows = targets) and of A^T (rows = sources): edge positions in each order.
        rows, self.order = torch.sort(dst, stable=True)
        self.rowptr = rowptr_from_rows(rows, self.shape[0])
        self.col = src[self.order].to(torch.int32)
        cols, self.order_t = torch.sort(src, stable=True)
        self.rowptr_t = rowptr_from_rows(cols, self.shape[1])
        self.col_t = dst[self.order_t].to(torch.int32)
        self._patterns: dict[torch.dtype, torch.Tensor] = {}

    @property
    def n_edges(self) -> int:
        return self.dst.numel()

    @property
    def device(self) -> torch.device:
        return self.dst.device

    def to(self, device: torch.device | str) -> "EdgeList":
        """A copy on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = EdgeList.__new__(EdgeList)
        moved.shape, moved._patterns = self.shape, {}
        for name in ("dst", "src", "order", "rowptr", "col", "order_t", "rowptr_t", "col_t"):
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def graph(self, w: torch.Tensor) -> SparseGraph:
        """A(w) as a :class:`SparseGraph` (constant values; its transpose built from the same
        weights, no sort)."""
        g = SparseGraph._unchecked(self.rowptr, self.col, w[self.order], self.shape, None)
        g._transpose = SparseGraph._unchecked(self.rowptr_t, self.col_t, w[self.order_t],
                                              self.shape[::-1], g)
        return g

    def aggregate(self, w: torch.Tensor, x: torch.Tensor, backend: str | None = None
                  ) -> torch.Tensor:
        """Eq. (1): y [n_rows, d] from weights w [n_edges] (edge order) and x [n_cols, d],
        differentiable in both."""
        if w.shape != (self.n_edges,):
            raise ValueError(f"EdgeList.aggregate: need one weight per edge ({self.n_edges}), "
                             f"got shape {tuple(w.shape)}")
        if x.dim() != 2 or x.shape[0] != self.shape[1]:
            raise ValueError(f"EdgeList.aggregate: x must be [{self.shape[1]}, d], got "
                             f"{tuple(x.shape)}")
        if resolve(backend) == "torch":
            return aggregate_reference(self, w, x)
        return _Aggregate.apply(w, x, self)

    def edge_dot(self, a: torch.Tensor, b: torch.Tensor, backend: str | None = None
                 ) -> torch.Tensor:
        """Eq. (3): s_e = <a_{dst_e}, b_{src_e}> for every edge, [n_edges] in edge order, from
        a [n_rows, d] and b [n_cols, d]; differentiable in both."""
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.shape[0] \
                or b.shape[0] != self.shape[1] or a.shape[1] != b.shape[1]:
            raise ValueError(f"EdgeList.edge_dot: need a [{self.shape[0]}, d] and "
                             f"b [{self.shape[1]}, d], got {tuple(a.shape)} and {tuple(b.shape)}")
        if resolve(backend) == "torch":
            return edge_dot_reference(self, a, b)
        return _EdgeDot.apply(a, b, self)

    def segment_sum(self, values: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """sum_{e : dst_e = t} values_e for every target t, [n_rows]; differentiable."""
        ones = values.new_ones(self.shape[1], 1)
        return self.aggregate(values, ones, backend)[:, 0]

    def _sampled_dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Eq. (3) without autograd, by ``torch.sparse.sampled_addmm`` on the CSR pattern (one
        fused pass; a gather of both operands per edge costs ~10x more on CPU)."""
        pattern = self._patterns.get(a.dtype)
        if pattern is None:
            with warnings.catch_warnings():  # torch flags sparse CSR as beta on every build
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(
                    self.rowptr, self.col.long(), torch.zeros(self.n_edges, dtype=a.dtype,
                                                       device=self.device),
                    self.shape, check_invariants=False)
            self._patterns[a.dtype] = pattern
        dots = torch.sparse.sampled_addmm(pattern, a.contiguous(), b.T, beta=0.0).values()
        return torch.empty_like(dots).index_copy_(0, self.order, dots)


def aggregate_reference(edges: EdgeList, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. (1) in plain PyTorch: gather the sources, scale, ``index_add`` into the targets."""
    out = x.new_zeros(edges.shape[0], x.shape[1])
    return out.index_add(0, edges.dst, w.unsqueeze(1) * x[edges.src])


def edge_dot_reference(edges: EdgeList, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. (3) in plain PyTorch: gather both ends of every edge, multiply, sum."""
    return (a[edges.dst] * b[edges.src]).sum(1)


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, x, edges):
        graph = edges.graph(w.detach())
        ctx.edges, ctx.graph = edges, graph
        ctx.save_for_backward(x)
        return spmm(graph, x.detach(), backend="mmfast")

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_w = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = spmm(ctx.graph.T, grad, backend="mmfast")
        if ctx.needs_input_grad[0]:
            grad_w = ctx.edges._sampled_dots(grad, x.detach())
        return grad_w, grad_x, None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, edges):
        ctx.edges = edges
        ctx.save_for_backward(a, b)
        return edges._sampled_dots(a.detach(), b.detach())

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        graph = ctx.edges.graph(grad.contiguous())
        grad_a = spmm(graph, b.detach(), backend="mmfast") if ctx.needs_input_grad[0] else None
        grad_b = spmm(graph.T, a.detach(), backend="mmfast") if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


def segment_softmax(
    scores: torch.Tensor, edges: EdgeList, keep: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Eq. (2): the softmax of the edge scores over the edges into each target node, in edge
    order. ``keep`` (0/1 per edge) removes edges from the softmax (their weight is 0), as if
    they were not in the graph."""
    shift = scores.detach().new_zeros(edges.shape[0]).scatter_reduce(
        0, edges.dst, scores.detach(), "amax", include_self=False)
    e = torch.exp(scores - shift[edges.dst])
    if keep is not None:
        e = e * keep
    total = edges.segment_sum(e, backend)
    return e / (total[edges.dst] + 1e-16)
