"""CSR index helpers, the one home of the row bookkeeping every layer repeats: row pointers
from counts, the row of every entry, row gathers, and the structural check of a CSR.
Vectorized on the tensors' device (no per-row Python loops)."""
from __future__ import annotations

import torch


def rowptr_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``[0, c0, c0 + c1, ...]``: int64 row pointers [n + 1] of rows holding ``counts`` entries."""
    rowptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr


def rowptr_from_rows(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row pointers [n_rows + 1] of the CSR whose entries have the (sorted) row ids ``rows``."""
    return rowptr_from_counts(torch.bincount(rows, minlength=n_rows))


def expand_rows(rowptr: torch.Tensor, nnz: int | None = None) -> torch.Tensor:
    """The row of every entry (COO rows), int64 [nnz]. Pass ``nnz`` when it is known to save
    a device-to-host read of ``rowptr[-1]``."""
    n_rows = rowptr.numel() - 1
    counts = rowptr[1:] - rowptr[:-1]
    return torch.repeat_interleave(
        torch.arange(n_rows, device=rowptr.device), counts,
        output_size=int(rowptr[-1]) if nnz is None else nnz,
    )


def gather_rows(
    rowptr: torch.Tensor, col: torch.Tensor, rows: torch.Tensor, total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR made of rows ``rows`` (in that order) of the CSR (rowptr, col). Pass ``total``
    (the entries of those rows) when it is known, e.g. from a host copy of ``rowptr``, to save
    a device-to-host read."""
    start = rowptr[rows]
    counts = rowptr[rows + 1] - start
    out_rowptr = rowptr_from_counts(counts)
    if total is None:
        total = int(out_rowptr[-1])
    # Entry e of output row r comes from start[r] + (e - out_rowptr[r]).
    shift = torch.repeat_interleave(start - out_rowptr[:-1], counts, output_size=total)
    return out_rowptr, col[shift + torch.arange(total, device=col.device)]


def check_csr_indices(
    rowptr: torch.Tensor,
    col: torch.Tensor,
    n_cols: int,
    where: str,
    rowptr_name: str = "rowptr",
    col_holds: str = "col holds column indices",
) -> None:
    """The CSR structure itself: ``rowptr`` starts at 0, ends at nnz and never decreases, and
    every ``col`` entry lies in [0, n_cols). Errors start with ``where``. The facts are
    gathered on the tensors' device and read back at once: one device-to-host read on a valid
    CSR (the error paths read more)."""
    nnz = col.numel()
    ends = torch.stack([rowptr[0], rowptr[-1], (rowptr[1:] < rowptr[:-1]).any().long()])
    if nnz:
        ends = torch.cat([ends, torch.stack([col.min(), col.max()]).long()])
    first, last, falling, *bounds = ends.tolist()
    if first != 0 or last != nnz:
        raise ValueError(
            f"{where}: {rowptr_name} must start at 0 and end at nnz = {nnz}, got "
            f"{int(rowptr[0])} ... {int(rowptr[-1])}"
        )
    if falling:
        bad = int((rowptr[1:] < rowptr[:-1]).nonzero()[0])
        raise ValueError(
            f"{where}: {rowptr_name} must be non-decreasing (sorted CSR); rowptr[{bad + 1}] = "
            f"{int(rowptr[bad + 1])} < rowptr[{bad}] = {int(rowptr[bad])}"
        )
    if bounds:
        lo, hi = bounds
        if lo < 0 or hi >= n_cols:
            raise ValueError(f"{where}: {col_holds} outside [0, {n_cols}): min {lo}, max {hi}")
