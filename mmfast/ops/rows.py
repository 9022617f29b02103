"""Row gathers for the batch: ``select_rows(table, index) == table[index]``, faster on the CPU.

A loss reads a few thousand rows of a propagated table (``u[users]``, ``i[positives]``). On
the CPU, ATen's ``table[index]`` gathers through the generic advanced-indexing kernel and its
backward is ``index_put_(accumulate=True)``, whose float path with two or more threads costs
several times a plain serial scatter (about 0.36 against 0.15 ms for 2,048 rows of a
[9,308, 64] table at two threads). ``select_rows`` gathers with ``index_select`` and scatters
its gradient with ``index_add_`` into one zeroed table, adding rows in index order at any
thread count (deterministic); at one thread that is ``index_put_``'s order, so the gradients
equal ``table[index]``'s bit for bit, and at more they may differ in the last bits.

On other devices it is ``table[index]`` (CUDA's ``index_put_`` sorts its indices and is
deterministic where ``index_add_``'s atomics are not). The ``torch`` backend is ``table[index]``
everywhere.
"""
from __future__ import annotations

import torch

from mmfast.ops._backend import resolve


class _SelectRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.n_rows,) + tuple(grad.shape[1:]))
        return out.index_add_(0, index, grad), None


def select_rows(table: torch.Tensor, index: torch.Tensor,
                backend: str | None = None) -> torch.Tensor:
    """``table[index]`` for a 1-D integer ``index`` of row numbers in ``[0, len(table))``;
    differentiable in ``table``. An index outside the table raises ``IndexError`` (on the CPU
    ``index_select``'s own check, which also refuses negative numbers instead of wrapping them)."""
    if not isinstance(table, torch.Tensor) or table.dim() < 1:
        got = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise ValueError(f"select_rows: table must be a tensor with rows, got {got}")
    if (not isinstance(index, torch.Tensor) or index.dim() != 1
            or index.dtype not in (torch.int64, torch.int32)):
        got = ((index.dtype, tuple(index.shape)) if isinstance(index, torch.Tensor)
               else type(index).__name__)
        raise ValueError(f"select_rows: index must be a 1-D int64 or int32 tensor, got {got}")
    if index.device != table.device:
        raise ValueError(f"select_rows: index is on {index.device} but the table is on "
                         f"{table.device}")
    if resolve(backend) == "torch" or table.device.type != "cpu":
        return table[index]
    if not table.requires_grad or not torch.is_grad_enabled():
        return table.index_select(0, index)
    return _SelectRows.apply(table, index)


def consecutive_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the 2-D tables ``a`` and ``b`` are consecutive rows of one storage (``b``'s first
    row right after ``a``'s last), so that [a; b] is a view of it and needs no copy."""
    return (a.dim() == b.dim() == 2 and a.shape[1] == b.shape[1] and a.dtype == b.dtype
            and a.device == b.device and a.is_contiguous() and b.is_contiguous()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and b.storage_offset() == a.storage_offset() + a.numel())
