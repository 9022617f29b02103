"""The training, valid and test interactions of a dataset: per-user CSR.

A leaf of :mod:`mmfast.data` (it imports nothing else from the package), so the graph
builders and the sampler can take ``Interactions`` while :mod:`mmfast.data.dataset` builds on
them.
"""
from __future__ import annotations

import numpy as np
import torch

from mmfast.ops.csr import expand_rows, rowptr_from_rows
from mmfast.ops.sparse_graph import SparseGraph


class DataFormatError(ValueError):
    """A data file does not have the expected layout or content."""


class Interactions:
    """(user, item) pairs grouped by user as CSR: ``rowptr`` (int64, n_users + 1) and ``items``.

    Items inside a user's row are sorted ascending and unique, so two sets of the same pairs
    always have identical arrays (the graph cache keys on that).
    """

    def __init__(self, rowptr: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int):
        if rowptr.dtype != torch.int64 or rowptr.numel() != n_users + 1:
            raise ValueError(f"Interactions: rowptr must be int64 with {n_users + 1} entries")
        if items.dtype != torch.int64 or items.numel() != int(rowptr[-1]):
            raise ValueError("Interactions: items must be int64 with rowptr[-1] entries")
        self.rowptr, self.items = rowptr, items
        self.n_users, self.n_items = int(n_users), int(n_items)

    @classmethod
    def from_pairs(
        cls, users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor,
        n_users: int, n_items: int,
    ) -> "Interactions":
        """Group pairs by user; repeated pairs are kept once (callers warn before that)."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.int64)
        items = torch.as_tensor(np.asarray(items), dtype=torch.int64)
        # Sorted by (user, item), deduplicated; sort + unique_consecutive beats torch.unique on CPU.
        key = torch.unique_consecutive(torch.sort(users * n_items + items).values)
        u, i = key // max(n_items, 1), key % max(n_items, 1)
        return cls(rowptr_from_rows(u, n_users), i, n_users, n_items)

    def __len__(self) -> int:
        return self.items.numel()

    @property
    def nnz(self) -> int:
        return self.items.numel()

    def users(self) -> torch.Tensor:
        """The user of every stored pair (COO rows), int64."""
        return expand_rows(self.rowptr, self.nnz)

    def user_degrees(self) -> torch.Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def item_degrees(self) -> torch.Tensor:
        return torch.bincount(self.items, minlength=self.n_items)

    def history(self, user: int) -> torch.Tensor:
        """Items of one user (for inspection and tests; not for hot loops)."""
        return self.items[self.rowptr[user]: self.rowptr[user + 1]]

    def active_users(self) -> torch.Tensor:
        """Users with at least one pair, ascending."""
        return torch.nonzero(self.user_degrees() > 0).flatten()

    def to_graph(self) -> SparseGraph:
        """The binary user x item matrix as a SparseGraph (val = 1)."""
        return SparseGraph(
            self.rowptr, self.items.to(torch.int32 if self.n_items < 2**31 else torch.int64),
            torch.ones(self.nnz, dtype=torch.float32), (self.n_users, self.n_items),
        )

    def __repr__(self) -> str:
        return f"Interactions(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz})"
