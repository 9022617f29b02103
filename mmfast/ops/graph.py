"""Sparse graph propagation: ``spmm`` and fused multi-layer ``propagate``.

``propagate`` computes ``E = sum_k c_k G^k x0`` for k = 0..layers (LightGCN's layer
combination) by Horner's rule, ``h <- c_k x0 + G h``, each step one fused kernel.
Its gradient ``dx0 = sum_k c_k (G^T)^k dE`` is the same op on the transpose, so
neither direction keeps per-layer tensors: memory is O(1) in the number of layers.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from mmfast import _ext
from mmfast.ops._backend import resolve
from mmfast.ops.sparse_graph import SparseGraph

Combine = Union[str, Sequence[float]]
COMBINES = ("mean", "sum", "last")


def layer_coefficients(layers: int, combine: Combine) -> list[float]:
    """The weights c_0..c_layers that ``combine`` gives to x0, Gx0, ..., G^layers x0."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"layers must be a non-negative int, got {layers!r}")
    if isinstance(combine, str):
        if combine == "mean":
            return [1.0 / (layers + 1)] * (layers + 1)
        if combine == "sum":
            return [1.0] * (layers + 1)
        if combine == "last":
            return [0.0] * layers + [1.0]
        raise ValueError(f"combine must be one of {COMBINES} or a list of weights, got {combine!r}")
    coeffs = [float(c) for c in combine]
    if len(coeffs) != layers + 1:
        raise ValueError(
            f"combine weights need one entry per layer output (layers + 1 = {layers + 1}), "
            f"got {len(coeffs)}"
        )
    return coeffs


def spmm(graph: SparseGraph, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``graph @ x`` for x of shape [n_cols, d]; differentiable in x."""
    _check_operand(graph, x, "spmm")
    if resolve(backend) == "torch":
        return spmm_reference(graph, x)
    return torch.ops.mmfast.spmm(*_csr_args(graph), x)


def propagate(
    graph: SparseGraph,
    x0: torch.Tensor,
    layers: int,
    combine: Combine = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """LightGCN-style propagation: combine(x0, G x0, ..., G^layers x0) in one fused op.

    ``combine`` is ``"mean"``, ``"sum"``, ``"last"`` or explicit per-layer weights.
    ``graph`` must be square. Differentiable in ``x0``.
    """
    coeffs = layer_coefficients(layers, combine)
    _check_operand(graph, x0, "propagate")
    if graph.n_rows != graph.n_cols:
        raise ValueError(f"propagate: graph must be square, got shape {graph.shape}")
    if resolve(backend) == "torch":
        return propagate_reference(graph, x0, coeffs)
    return torch.ops.mmfast.propagate(*_csr_args(graph), x0, coeffs)


# ---------------------------------------------------------------------- references
def spmm_reference(graph: SparseGraph, x: torch.Tensor) -> torch.Tensor:
    """Pure PyTorch: ``torch.sparse.mm`` on the CSR tensor, as MMRec-style code does."""
    return torch.sparse.mm(graph.to_torch(), x)


def propagate_reference(
    graph: SparseGraph, x0: torch.Tensor, coeffs: Sequence[float]
) -> torch.Tensor:
    """Pure PyTorch: the per-layer ``torch.sparse.mm`` chain that LightGCN code writes."""
    out = coeffs[0] * x0
    x = x0
    for c in coeffs[1:]:
        x = spmm_reference(graph, x)
        out = out + c * x
    return out


# ---------------------------------------------------------------------- internals
def _csr_args(graph: SparseGraph) -> tuple[torch.Tensor, ...]:
    if graph.val.requires_grad:
        raise NotImplementedError(
            "graph values are constants for the mmfast kernels; gradients with respect to "
            "SparseGraph.val are not supported (use backend='torch')"
        )
    t = graph.T
    return graph.rowptr, graph.col, graph.val, t.rowptr, t.col, t.val


def _check_operand(graph: SparseGraph, x: torch.Tensor, op: str) -> None:
    if not isinstance(graph, SparseGraph):
        raise TypeError(f"{op}: graph must be a mmfast.ops.SparseGraph, got {type(graph).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: x must be a 2-D tensor [n_nodes, d], got {shape}")
    if x.shape[0] != graph.n_cols:
        raise ValueError(
            f"{op}: x has {x.shape[0]} rows but the graph has {graph.n_cols} columns "
            f"(graph shape {graph.shape})"
        )
    if x.device != graph.device:
        raise ValueError(
            f"{op}: x is on {x.device} but the graph is on {graph.device}; use graph.to(x.device)"
        )
    if x.dtype != graph.dtype:
        raise TypeError(
            f"{op}: x is {x.dtype} but the graph values are {graph.dtype}; use "
            f"graph.to(dtype=x.dtype)"
        )


# ---------------------------------------------------------------------- registration
# Schemas and CPU/CUDA kernels come from csrc/; autograd and shape inference live here,
# in Python, so that torch.compile traces through the ops without graph breaks.
if _ext.available():

    @torch.library.register_fake("mmfast::spmm")
    def _spmm_fake(rowptr, col, val, rowptr_t, col_t, val_t, x):
        return x.new_empty((rowptr.shape[0] - 1, x.shape[1]))

    @torch.library.register_fake("mmfast::propagate")
    def _propagate_fake(rowptr, col, val, rowptr_t, col_t, val_t, x, coeffs):
        return torch.empty_like(x)

    def _setup_context(ctx, inputs, output):
        ctx.csr = inputs[:3]
        ctx.csr_t = inputs[3:6]
        ctx.coeffs = inputs[7] if len(inputs) > 7 else None

    def _spmm_backward(ctx, grad):
        grad_x = torch.ops.mmfast.spmm(*ctx.csr_t, *ctx.csr, grad)
        return None, None, None, None, None, None, grad_x

    def _propagate_backward(ctx, grad):
        grad_x = torch.ops.mmfast.propagate(*ctx.csr_t, *ctx.csr, grad, ctx.coeffs)
        return None, None, None, None, None, None, grad_x, None

    torch.library.register_autograd(
        "mmfast::spmm", _spmm_backward, setup_context=_setup_context
    )
    torch.library.register_autograd(
        "mmfast::propagate", _propagate_backward, setup_context=_setup_context
    )
