"""LATTICE's learned item graph (Zhang et al., MM'21, Eq. (1)-(6)), sparse from end to end.

Per modality m, the item-item cosine similarities of the projected features x_m (trainable)
are cut to each row's top k (the item itself included), the modalities are mixed with the
softmax weights w = softmax(ω) and normalized symmetrically by row sums,

    A_learned = D^-1/2 (sum_m w_m kNN_k(cos(x_m))) D^-1/2,   D = diag(row sums),

and mixed with the frozen graphs S̃_m (G3, the same construction on the raw input features,
built once) as

    S = (1 - λ) A_learned + λ sum_m w_m S̃_m                (λ = ``lambda_coeff``).

With one modality the weights are 1. Nothing here is items x items: the top k are found in
row blocks by :func:`mmfast.ops.topk_scores` without gradients, the kept similarities are then
recomputed differentiably as row-wise dot products of the normalized features for those
(row, col) pairs, so the gradient flows through the kept values only (the same gradient as
the dense top-k-and-scatter form: the selection itself is piecewise constant); their
gradient goes back to the features as two spmm on the graph of the kept pairs. The product
S x is the learned part by :func:`valued_spmm` (mmfast's spmm, differentiable in the values)
plus λ w_m S̃_m x by spmm; the constant S of the epoch's later batches is one SparseGraph, the
union of the sparse edge lists (duplicate pairs add up, as in MMRec's dense sum).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mmfast.ops import SparseGraph, spmm, topk_scores

_DOT_ROWS = 4096  # rows per block of the gathered row-wise dots (bounded temporaries)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| by rows (MMRec's ``build_sim`` normalization; a zero row stays zero instead
    of becoming NaN). Differentiable."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)


@torch.no_grad()
def knn_columns(x: torch.Tensor, k: int, block_rows: int = 8192,
                backend: str | None = None) -> torch.Tensor:
    """The columns [n, min(k, n)] of each row's k largest cosine similarities among the rows
    of x [n, d] (the row itself included), scored in row blocks: memory O(n k), never
    n x n."""
    xn = unit_rows(x.detach())
    n = xn.shape[0]
    cols = torch.empty(n, min(k, n), dtype=torch.int64, device=xn.device)
    for b0 in range(0, n, block_rows):
        cols[b0:b0 + block_rows] = topk_scores(xn[b0:b0 + block_rows], xn, min(k, n),
                                               backend=backend)[1]
    return cols


def _row_dots(a: torch.Tensor, b: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """<a_i, b_cols[i, j]> [n, r], in blocks of rows (bounded temporaries)."""
    out = torch.empty(cols.shape, dtype=a.dtype, device=a.device)
    for b0 in range(0, cols.shape[0], _DOT_ROWS):
        b1 = b0 + _DOT_ROWS
        out[b0:b1] = torch.bmm(b[cols[b0:b1]], a[b0:b1].unsqueeze(-1)).squeeze(-1)
    return out


class _KeptDots(torch.autograd.Function):
    """s_ij = <x_i, x_cols[i, j]>; ds gives dx = G x + G^T x with G the graph of the kept
    pairs valued ds (two mmfast spmm, no scatter of n r d temporaries)."""

    @staticmethod
    def forward(ctx, x, union):
        ctx.union = union
        ctx.save_for_backward(x)
        return _row_dots(x, x, union.row_cols)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        g = ctx.union.graph(grad.reshape(-1))
        return spmm(g, x) + spmm(g.T, x), None


def kept_cosines(x: torch.Tensor, cols: torch.Tensor,
                 union: "EdgeUnion | None" = None) -> torch.Tensor:
    """cos(x_i, x_cols[i, j]) [n, k], differentiable in x (through the normalization too).
    ``union``: ``EdgeUnion.from_rows(cols)`` when already built."""
    if union is None:
        with torch.no_grad():
            union = EdgeUnion.from_rows(cols)
    return _KeptDots.apply(unit_rows(x), union)


def symmetric_row_normalize(values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """w_ij = d_i^-1/2 v_ij d_j^-1/2 for a graph stored as dense rows: values [n, r] at columns
    cols [n, r] (repeated columns add up), d = the row sums (MMRec's
    ``compute_normalized_laplacian`` of the kNN adjacency: a directed graph, degrees are row
    sums only). A row with d <= 0 gets 0 (d = 0: as MMRec; d < 0: MMRec gives NaN)."""
    d = values.sum(-1)
    inv = torch.where(d > 0, d.clamp(min=torch.finfo(d.dtype).tiny).rsqrt(), torch.zeros_like(d))
    return inv.unsqueeze(1) * values * inv[cols]


class EdgeUnion:
    """The CSR structure of a sum of sparse n x n graphs given as COO parts (duplicates add),
    with the orders that put a value vector (parts concatenated) into CSR and transposed-CSR
    order. Built on the device with sorts and searches only (no host reads), so a structure
    prepared once serves every value vector: :meth:`graph` and :func:`valued_spmm`."""

    def __init__(self, rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor], n: int) -> None:
        self.n = int(n)
        self.rows = torch.cat([r.long() for r in rows])
        self.cols = torch.cat([c.long() for c in cols])
        nodes = torch.arange(self.n + 1, device=self.rows.device)
        rows_sorted, self.order = torch.sort(self.rows, stable=True)
        self.rowptr = torch.searchsorted(rows_sorted, nodes)
        col_csr = self.cols[self.order]
        cols_sorted, by_col = torch.sort(col_csr, stable=True)
        self.rowptr_t = torch.searchsorted(cols_sorted, nodes)
        self.order_t = self.order[by_col]
        index = torch.int32 if self.n < 2**31 else torch.int64
        self.col_csr = col_csr.to(index)
        self.col_t = rows_sorted[by_col].to(index)
        self.row_cols: torch.Tensor | None = None  # [n, r] when every row holds r entries

    @classmethod
    def from_rows(cls, cols: torch.Tensor) -> "EdgeUnion":
        """The graph whose row i holds the columns cols[i] ([n, r], r entries every row)."""
        n, r = cols.shape
        union = cls([torch.arange(n, device=cols.device).repeat_interleave(r)],
                    [cols.reshape(-1)], n)
        union.row_cols = cols
        return union

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def graph(self, values: torch.Tensor) -> SparseGraph:
        """The SparseGraph of these edges with ``values`` [nnz] (parts order), its transpose
        linked (no validation, no host read). ``values`` should be detached for the kernels."""
        shape = (self.n, self.n)
        g = SparseGraph._unchecked(self.rowptr, self.col_csr, values[self.order], shape, None)
        g._transpose = SparseGraph._unchecked(self.rowptr_t, self.col_t, values[self.order_t],
                                              shape, g)
        return g


class _ValuedSpmm(torch.autograd.Function):
    """S(values) @ x with gradients in both: dx = S^T g (mmfast spmm on the transpose),
    d values_e = <g_row(e), x_col(e)>."""

    @staticmethod
    def forward(ctx, values, x, union):
        graph = union.graph(values.detach())
        ctx.union, ctx.graph = union, graph
        ctx.save_for_backward(x)
        return spmm(graph, x.detach())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        union = ctx.union
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            if union.row_cols is not None:  # r per row: batched dots over blocks of rows
                grad_values = _row_dots(grad, x, union.row_cols).reshape(-1)
            else:
                grad_values = (grad[union.rows] * x[union.cols]).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_x = spmm(ctx.graph.T, grad)
        return grad_values, grad_x, None


def valued_spmm(union: EdgeUnion, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S @ x for S = the union's edges with ``values`` [nnz], differentiable in ``values`` and
    ``x`` (mmfast's ``spmm`` treats a graph's values as constants). Forward and dx are the
    mmfast kernels of the process backend; d values is one gather-dot over the edges."""
    return _ValuedSpmm.apply(values, x, union)


def edge_spmm(union: EdgeUnion, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same product as :func:`valued_spmm` written as a weighted segment sum
    (``index_add``) under plain autograd; kept as the reference it is tested against."""
    out = torch.zeros(union.n, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add(0, union.rows, values.unsqueeze(1) * x[union.cols])


class BuiltItemGraph:
    """One build of S: the learned part (its own CSR, values [n r] with gradients), the frozen
    graphs with their coefficients λ w_m (with gradients), and the union of all edges."""

    def __init__(self, learned: EdgeUnion, values: torch.Tensor, frozen: Sequence[SparseGraph],
                 coefs: torch.Tensor, union: EdgeUnion) -> None:
        self.learned, self.values, self.frozen, self.coefs = learned, values, list(frozen), coefs
        self.union = union

    def multiply(self, x: torch.Tensor) -> torch.Tensor:
        """S x, differentiable in x and in S's values (learned values and coefficients):
        the learned part by :func:`valued_spmm`, each frozen graph by mmfast's spmm."""
        out = valued_spmm(self.learned, self.values, x)
        for j, g in enumerate(self.frozen):
            out = out + self.coefs[j] * spmm(g, x)
        return out

    def constant(self) -> SparseGraph:
        """S as one constant SparseGraph (the union of the edges, duplicates adding)."""
        parts = [self.values.detach()] + [self.coefs[j].detach() * g.val
                                          for j, g in enumerate(self.frozen)]
        return self.union.graph(torch.cat(parts))


class LearnedItemGraph(nn.Module):
    """S = (1 - λ) A_learned + λ sum_m w_m S̃_m (module docstring), w = softmax(ω) over the
    modalities (ω starts at 0.5 each, trainable; one modality: w = 1).

    :meth:`build` finds each modality's top k without gradients and returns the
    :class:`BuiltItemGraph` whose values are differentiable in the features and ω:
    ``multiply`` for the product with gradients, ``constant`` for a plain SparseGraph."""

    def __init__(self, frozen: Mapping[str, SparseGraph], k: int, lambda_coeff: float,
                 *, block_rows: int = 8192) -> None:
        super().__init__()
        if not frozen:
            raise ValueError("LearnedItemGraph: no modality graphs given")
        self.modalities = list(frozen)
        for m, g in frozen.items():
            if g.shape[0] != g.shape[1]:
                raise ValueError(f"LearnedItemGraph: the {m} graph must be square, got {g.shape}")
            setattr(self, f"frozen_{m}", g)  # SparseGraph attributes move with the model
        self.k, self.lambda_coeff, self.block_rows = int(k), float(lambda_coeff), int(block_rows)
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))

    def frozen(self, modality: str) -> SparseGraph:
        return getattr(self, f"frozen_{modality}")

    def weights(self) -> torch.Tensor:
        """w_m: the softmax of ω, or [1] for one modality."""
        if len(self.modalities) == 1:
            return torch.ones_like(self.modal_weight)
        return torch.softmax(self.modal_weight, dim=0)

    def build(self, features: Mapping[str, torch.Tensor]) -> BuiltItemGraph:
        """S from the projected features of each modality [n, d_m]."""
        with torch.no_grad():
            per = [knn_columns(features[m], self.k, self.block_rows) for m in self.modalities]
            per_union = [EdgeUnion.from_rows(c) for c in per]
            cols = torch.cat(per, dim=1)
            learned = EdgeUnion.from_rows(cols)
            frozen = [self.frozen(m) for m in self.modalities]
            union = EdgeUnion([learned.rows] + [g.row_indices() for g in frozen],
                              [learned.cols] + [g.col for g in frozen], cols.shape[0])
        w = self.weights()
        values = torch.cat([w[j] * kept_cosines(features[m], per[j], per_union[j])
                            for j, m in enumerate(self.modalities)], dim=1)
        values = (1.0 - self.lambda_coeff) * symmetric_row_normalize(values, cols)
        return BuiltItemGraph(learned, values.reshape(-1), frozen, self.lambda_coeff * w, union)

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, k={self.k}, lambda_coeff={self.lambda_coeff}"
