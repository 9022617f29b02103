"""The ID line every graph recommender shares: user and item ID embeddings propagated over Â."""
from __future__ import annotations

import torch
from torch import nn

from mmfast.ops import SparseGraph, propagate
from mmfast.ops.rows import consecutive_rows


class _JoinedRows(torch.autograd.Function):
    """[a; b] as a view of the storage the two parameters share (no copy); the gradient is
    split back into the two row ranges (views of it, no copy either)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.rows = a.shape[0]
        return a.detach().as_strided((a.shape[0] + b.shape[0], a.shape[1]), (a.shape[1], 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[:ctx.rows], grad[ctx.rows:]


class LightGCNEmbeddings(nn.Module):
    """User and item ID tables (xavier-uniform, as MMRec initializes them) and LightGCN's
    propagation, He et al. SIGIR'20 Eq. (3)-(4): E^(k+1) = Â E^(k), combined over layers
    0..L (``combine="mean"``: LightGCN's alpha_k = 1/(L+1)), split back into users and items.
    """

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self._tie()

    def _tie(self) -> None:
        """Make the user and item tables consecutive rows of one storage (same values), so
        that :meth:`ego` is a view: no 4 MB copy in, nor one out of, every step."""
        u, i = self.user.weight, self.item.weight
        if not consecutive_rows(u, i):
            table = torch.cat([u.detach(), i.detach()])
            u.data, i.data = table[:self.n_users], table[self.n_users:]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # .to() / .double() give each table its own storage
        self._tie()
        return self

    def ego(self) -> torch.Tensor:
        """E^(0) = [users; items], [n_users + n_items, dim]: a view of the tables' shared
        storage (a copy only if something untied them)."""
        u, i = self.user.weight, self.item.weight
        if consecutive_rows(u, i):
            return _JoinedRows.apply(u, i)
        return torch.cat([u, i])

    def forward(
        self, adj: SparseGraph, layers: int, combine: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors [n_users, dim], item vectors [n_items, dim]) after ``layers`` steps."""
        out = propagate(adj, self.ego(), layers, combine)
        # split, not two slices: its backward writes one [n_users + n_items, dim] gradient
        # (slicing's backward zero-fills a full-size tensor per slice, then adds them).
        users, items = torch.split(out, [self.n_users, self.n_items])
        return users, items
