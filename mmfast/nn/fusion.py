"""Combining modality lines: per-user modality weights and item-item smoothing on a frozen graph
(DRAGON's fusion, which SEA keeps)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmfast.ops import SparseGraph, propagate


class UserModalityWeights(nn.Module):
    """r_u = [w_u1 e_u^1 || ... || w_uM e_u^M] (MODELS.md §2.2 step 4). The U x M weights start
    as a softmax over xavier-normal draws, taken **once**; afterwards they are free parameters
    (no re-normalization), as in DRAGON/SEA."""

    def __init__(self, n_users: int, n_modalities: int) -> None:
        super().__init__()
        init = torch.empty(n_users, n_modalities)
        nn.init.xavier_normal_(init)
        self.weight = nn.Parameter(torch.softmax(init, dim=1))

    def forward(self, lines: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate the users' modality vectors, each scaled by its weight."""
        if len(lines) != self.weight.shape[1]:
            raise ValueError(f"UserModalityWeights: {self.weight.shape[1]} weights per user but "
                             f"{len(lines)} modality lines")
        return torch.cat([self.weight[:, m:m + 1] * e for m, e in enumerate(lines)], dim=1)


class ItemGraphSmoothing(nn.Module):
    """r_i <- r_i + (S^L r)_i on a frozen item graph S (DRAGON's ``n_mm_layers`` loop; SEA uses
    the mixed kNN graph G2 with L = 1, MODELS.md §2.2 step 5)."""

    def __init__(self, graph: SparseGraph, layers: int = 1) -> None:
        super().__init__()
        if graph.shape[0] != graph.shape[1]:
            raise ValueError(f"ItemGraphSmoothing: the item graph must be square, got {graph.shape}")
        self.graph, self.layers = graph, layers

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return items + propagate(self.graph, items, self.layers, "last")
