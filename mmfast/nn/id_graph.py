"""The ID line every graph recommender shares: user and item ID embeddings propagated over Â."""
from __future__ import annotations

import torch
from torch import nn

from mmfast.ops import SparseGraph, propagate


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

    def ego(self) -> torch.Tensor:
        """E^(0) = [users; items], [n_users + n_items, dim]."""
        return torch.cat([self.user.weight, self.item.weight])

    def forward(
        self, adj: SparseGraph, layers: int, combine: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors [n_users, dim], item vectors [n_items, dim]) after ``layers`` steps."""
        out = propagate(adj, self.ego(), layers, combine)
        # split, not two slices: its backward writes one [n_users + n_items, dim] gradient
        # (slicing's backward zero-fills a full-size tensor per slice, then adds them).
        users, items = torch.split(out, [self.n_users, self.n_items])
        return users, items
