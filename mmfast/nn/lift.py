"""The user lift R̂ (MODELS.md G4): item-side vectors mapped onto users."""
from __future__ import annotations

import torch
from torch import nn

from mmfast.ops import SparseGraph, spmm


class UserLift(nn.Module):
    """h_u = sum_{i in N(u)} h_i / sqrt(|N(u)| |N(i)|), i.e. H_users = R̂ H_items with R̂ the
    user x item block of Â (MGCN Eq. (6), AlignRec's user modal representation). R̂ is fixed
    (built from the training interactions, ``dataset.user_item_lift()``, on the model's
    device)."""

    def __init__(self, lift: SparseGraph) -> None:
        super().__init__()
        self.lift = lift

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[n_users, d] from item vectors [n_items, d]."""
        return spmm(self.lift, items)
