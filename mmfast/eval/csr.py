"""Row gathers of per-user CSR tables, vectorized (no per-user Python loops)."""
from __future__ import annotations

import torch


def gather_rows(
    rowptr: torch.Tensor, col: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR made of rows ``rows`` (in that order) of the CSR (rowptr, col)."""
    start = rowptr[rows]
    counts = rowptr[rows + 1] - start
    out_rowptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rowptr.device)
    torch.cumsum(counts, 0, out=out_rowptr[1:])
    total = int(out_rowptr[-1])
    # Entry e of output row r comes from start[r] + (e - out_rowptr[r]).
    shift = torch.repeat_interleave(start - out_rowptr[:-1], counts, output_size=total)
    return out_rowptr, col[shift + torch.arange(total, device=col.device)]
