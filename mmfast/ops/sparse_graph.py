"""SparseGraph: a validated CSR matrix with its transpose built once and cached."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from mmfast.ops.csr import check_csr_indices, expand_rows, rowptr_from_rows

_INDEX_DTYPES = (torch.int32, torch.int64)
_VALUE_DTYPES = (torch.float32, torch.float64)


class SparseGraph:
    """A sparse matrix in CSR form, checked on construction, as the graph ops take it.

    ``rowptr`` (int64, ``n_rows + 1``), ``col`` (int32 or int64, ``nnz``) and ``val``
    (float32 or float64, ``nnz``) live on one device. Columns inside a row need not be
    sorted; repeated columns in a row add up. The transpose, which every backward pass
    multiplies by, is built once here, eagerly, so that code compiled with torch.compile
    never has to build it (``is_symmetric=True`` makes it the graph itself, at no cost).
    """

    def __init__(
        self,
        rowptr: torch.Tensor,
        col: torch.Tensor,
        val: torch.Tensor,
        shape: Sequence[int],
        *,
        is_symmetric: bool = False,
        validate: bool = True,
    ) -> None:
        if len(shape) != 2:
            raise ValueError(f"SparseGraph: shape must have two entries, got {tuple(shape)}")
        self.rowptr, self.col, self.val = rowptr, col, val
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.is_symmetric = bool(is_symmetric)
        if validate:
            self._validate()
        self._torch_csr: torch.Tensor | None = None
        self._transpose: SparseGraph = self if self.is_symmetric else self._build_transpose()

    @classmethod
    def _unchecked(cls, rowptr, col, val, shape, transpose: "SparseGraph | None") -> "SparseGraph":
        """A non-symmetric graph from trusted parts, linked to ``transpose`` (set later if None)."""
        graph = cls.__new__(cls)
        graph.rowptr, graph.col, graph.val = rowptr, col, val
        graph.shape, graph.is_symmetric = (int(shape[0]), int(shape[1])), False
        graph._torch_csr, graph._transpose = None, transpose
        return graph

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_coo(
        cls,
        rows: torch.Tensor,
        cols: torch.Tensor,
        vals: torch.Tensor | None,
        shape: Sequence[int],
        *,
        sum_duplicates: bool = True,
        is_symmetric: bool = False,
    ) -> "SparseGraph":
        """Build from coordinate lists (any order). ``vals=None`` means all ones.

        Repeated (row, col) pairs are summed into one entry unless ``sum_duplicates=False``.
        """
        rows = torch.as_tensor(rows)
        cols = torch.as_tensor(cols)
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if rows.dim() != 1 or cols.dim() != 1 or rows.numel() != cols.numel():
            raise ValueError(
                f"SparseGraph.from_coo: rows and cols must be 1-D of equal length, got "
                f"{tuple(rows.shape)} and {tuple(cols.shape)}"
            )
        for name, idx, bound in (("rows", rows, n_rows), ("cols", cols, n_cols)):
            if idx.dtype.is_floating_point or idx.dtype == torch.bool:
                raise TypeError(f"SparseGraph.from_coo: {name} must be integers, got {idx.dtype}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
                raise ValueError(
                    f"SparseGraph.from_coo: {name} holds indices outside [0, {bound}): "
                    f"min {int(idx.min())}, max {int(idx.max())}"
                )
        if vals is None:
            vals = torch.ones(rows.numel(), dtype=torch.float32, device=rows.device)
        vals = torch.as_tensor(vals)
        if vals.shape != rows.shape:
            raise ValueError(
                f"SparseGraph.from_coo: vals must match rows in shape, got {tuple(vals.shape)} "
                f"and {tuple(rows.shape)}"
            )
        rows, cols = rows.long(), cols.long()
        key = rows * n_cols + cols
        key, order = torch.sort(key, stable=True)
        vals = vals[order]
        if sum_duplicates and key.numel():
            key, inverse = torch.unique_consecutive(key, return_inverse=True)
            vals = torch.zeros(key.numel(), dtype=vals.dtype, device=vals.device).index_add_(
                0, inverse, vals
            )
        rows, cols = key // max(n_cols, 1), key % max(n_cols, 1)
        rowptr = rowptr_from_rows(rows, n_rows)
        col_dtype = torch.int32 if n_cols < 2**31 else torch.int64
        return cls(rowptr, cols.to(col_dtype), vals, (n_rows, n_cols), is_symmetric=is_symmetric)

    @classmethod
    def from_torch(cls, t: torch.Tensor, *, is_symmetric: bool = False) -> "SparseGraph":
        """Build from a torch sparse COO or CSR tensor, or a dense 2-D tensor."""
        if t.dim() != 2:
            raise ValueError(f"SparseGraph.from_torch: need a 2-D tensor, got {t.dim()}-D")
        if t.layout == torch.sparse_csr:
            return cls(
                t.crow_indices().long(), t.col_indices(), t.values(), t.shape,
                is_symmetric=is_symmetric,
            )
        if t.layout == torch.strided:
            t = t.to_sparse()
        if t.layout != torch.sparse_coo:
            raise TypeError(f"SparseGraph.from_torch: unsupported layout {t.layout}")
        t = t.coalesce()
        rows, cols = t.indices()
        return cls.from_coo(rows, cols, t.values(), t.shape, is_symmetric=is_symmetric)

    # ------------------------------------------------------------------ properties
    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.rowptr.device

    @property
    def dtype(self) -> torch.dtype:
        return self.val.dtype

    @property
    def T(self) -> "SparseGraph":
        """The transpose (built at construction; the graph itself when symmetric)."""
        return self._transpose

    def row_indices(self) -> torch.Tensor:
        """The row of every stored entry (COO rows), int64."""
        return expand_rows(self.rowptr, self.nnz)

    def degrees(self) -> torch.Tensor:
        """Stored entries per row, int64."""
        return self.rowptr[1:] - self.rowptr[:-1]

    # ------------------------------------------------------------------ conversion
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> "SparseGraph":
        """A copy on ``device`` with values of ``dtype`` (the transpose moves with it)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        if self.is_symmetric:
            return SparseGraph(
                self.rowptr.to(device), self.col.to(device), self.val.to(device, dtype),
                self.shape, is_symmetric=True, validate=False,
            )
        t = self._transpose
        moved = SparseGraph._unchecked(
            self.rowptr.to(device), self.col.to(device), self.val.to(device, dtype), self.shape, None
        )
        moved._transpose = SparseGraph._unchecked(
            t.rowptr.to(device), t.col.to(device), t.val.to(device, dtype), t.shape, moved
        )
        return moved

    def to_torch(self) -> torch.Tensor:
        """The same matrix as a torch sparse CSR tensor (cached; shares storage)."""
        if self._torch_csr is None:
            with warnings.catch_warnings():  # torch flags sparse CSR as beta on every build
                warnings.simplefilter("ignore", UserWarning)
                self._torch_csr = torch.sparse_csr_tensor(
                    self.rowptr, self.col.long(), self.val, self.shape, check_invariants=False
                )
        return self._torch_csr

    def to_dense(self) -> torch.Tensor:
        """Dense copy; repeated columns in a row are summed."""
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return dense.index_put_((self.row_indices(), self.col.long()), self.val, accumulate=True)

    def __repr__(self) -> str:
        sym = ", symmetric" if self.is_symmetric else ""
        return (
            f"SparseGraph(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, "
            f"device={self.device}{sym})"
        )

    # ------------------------------------------------------------------ internals
    def _validate(self) -> None:
        rowptr, col, val = self.rowptr, self.col, self.val
        n_rows, n_cols = self.shape
        where = f"SparseGraph{self.shape}"
        if n_rows < 0 or n_cols < 0:
            raise ValueError(f"{where}: shape must be non-negative")
        if not (isinstance(rowptr, torch.Tensor) and isinstance(col, torch.Tensor)
                and isinstance(val, torch.Tensor)):
            raise TypeError(f"{where}: rowptr, col and val must be tensors")
        if rowptr.dtype != torch.int64 or rowptr.dim() != 1:
            raise TypeError(
                f"{where}: rowptr must be a 1-D int64 tensor, got {rowptr.dim()}-D {rowptr.dtype}"
            )
        if col.dtype not in _INDEX_DTYPES or col.dim() != 1:
            raise TypeError(
                f"{where}: col must be a 1-D int32 or int64 tensor, got {col.dim()}-D {col.dtype}"
            )
        if val.dtype not in _VALUE_DTYPES or val.dim() != 1:
            raise TypeError(
                f"{where}: val must be a 1-D float32 or float64 tensor, got {val.dim()}-D {val.dtype}"
            )
        if not (rowptr.device == col.device == val.device):
            raise ValueError(
                f"{where}: rowptr, col and val must share a device, got {rowptr.device}, "
                f"{col.device} and {val.device}"
            )
        if rowptr.numel() != n_rows + 1:
            raise ValueError(
                f"{where}: rowptr must have n_rows + 1 = {n_rows + 1} entries, got {rowptr.numel()}"
            )
        if col.numel() != val.numel():
            raise ValueError(
                f"{where}: col and val must have one entry per nonzero, got {col.numel()} and "
                f"{val.numel()}"
            )
        check_csr_indices(rowptr, col, n_cols, where)
        if col.numel() and not bool(torch.isfinite(val).all()):
            raise ValueError(f"{where}: val holds NaN or infinite values")
        if self.is_symmetric and n_rows != n_cols:
            raise ValueError(f"{where}: is_symmetric=True needs a square graph")

    def _build_transpose(self) -> "SparseGraph":
        rows = self.row_indices()
        # A stable sort by column keeps rows ascending inside each transposed row.
        col_sorted, order = torch.sort(self.col.long(), stable=True)
        row_dtype = torch.int32 if self.n_rows < 2**31 else torch.int64
        return SparseGraph._unchecked(
            rowptr_from_rows(col_sorted, self.n_cols), rows[order].to(row_dtype),
            self.val[order], (self.n_cols, self.n_rows), self,
        )
