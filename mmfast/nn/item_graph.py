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
the dense top-k-and-scatter form: the selection itself is piecewise constant). The sum of
the learned and frozen graphs is a union of sparse edge lists (duplicate pairs add up, as in
a dense sum), and :func:`valued_spmm` multiplies by it, differentiably in its values.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mmfast.ops import SparseGraph, spmm, topk_scores


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


def kept_cosines(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """cos(x_i, x_cols[i, j]) [n, k], differentiable in x (through the normalization too)."""
    xn = unit_rows(x)
    return (xn.unsqueeze(1) * xn[cols]).sum(-1)


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


class LearnedItemGraph(nn.Module):
    """S = (1 - λ) A_learned + λ sum_m w_m S̃_m (module docstring), w = softmax(ω) over the
    modalities (ω starts at 0.5 each, trainable; one modality: w = 1).

    Use: :meth:`structure` (no gradient: each modality's top k and the union with the frozen
    graphs), then :meth:`values` (differentiable in the features and ω) for that structure;
    ``structure.graph(values.detach())`` is the constant graph, :func:`valued_spmm` the
    differentiable product."""

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

    @torch.no_grad()
    def structure(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, EdgeUnion]:
        """(the learned columns [n, M k], modalities side by side, and the union of their
        edges with the frozen graphs' edges) from the projected features of each modality."""
        cols = torch.cat([knn_columns(features[m], self.k, self.block_rows)
                          for m in self.modalities], dim=1)
        n = cols.shape[0]
        rows = [torch.arange(n, device=cols.device).repeat_interleave(cols.shape[1])]
        frozen = [self.frozen(m) for m in self.modalities]
        union = EdgeUnion(rows + [g.row_indices() for g in frozen],
                          [cols.reshape(-1)] + [g.col for g in frozen], n)
        return cols, union

    def values(self, features: Mapping[str, torch.Tensor], cols: torch.Tensor) -> torch.Tensor:
        """The union's values [nnz] in parts order: (1 - λ) A_learned then λ w_m S̃_m."""
        w = self.weights()
        k = cols.shape[1] // len(self.modalities)
        learned = torch.cat([w[j] * kept_cosines(features[m], cols[:, j * k:(j + 1) * k])
                             for j, m in enumerate(self.modalities)], dim=1)
        learned = symmetric_row_normalize(learned, cols)
        lam = self.lambda_coeff
        parts = [(1.0 - lam) * learned.reshape(-1)]
        parts += [lam * w[j] * self.frozen(m).val for j, m in enumerate(self.modalities)]
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, k={self.k}, lambda_coeff={self.lambda_coeff}"
