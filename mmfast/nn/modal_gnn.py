"""One modality's graph line in DualGNN, DRAGON and SEA: an item MLP over the modality's features,
a free user preference table, and parameter-free propagation over the user-item graph."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.ops import SparseGraph, propagate


class ModalityGNN(nn.Module):
    """DualGNN/DRAGON's per-modality GNN (MMRec's ``GCN`` with its two ``Base_gcn`` steps), which
    SEA/SAND keep (MODELS.md §2.2 step 3):

    a_i = W2 LeakyReLU(W1 z_i + c1) + c2 (d_in -> ``hidden`` -> ``dim``), a user preference
    table P (xavier-normal), X = rownorm([P; A]) and E = sum_{k=0..layers} Â^k X (a **sum**
    over layers, not a mean). ``forward`` returns E split into users and items. ``adj`` is the
    propagation matrix of MMRec's ``aggr_mode`` (:func:`mmfast.data.aggregation.aggregation_graph`:
    ``add`` = Â, ``mean`` = D^-1 A).
    """

    def __init__(self, n_users: int, in_dim: int, *, hidden: int = 256, dim: int = 64,
                 layers: int = 2) -> None:
        super().__init__()
        self.n_users, self.layers = n_users, layers
        self.item_mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(),
                                      nn.Linear(hidden, dim))
        self.preference = nn.Parameter(torch.empty(n_users, dim))
        nn.init.xavier_normal_(self.preference)

    def forward(self, adj: SparseGraph, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, dim], items [n_items, dim]) from item features z [n_items, d_in]."""
        x = F.normalize(torch.cat([self.preference, self.item_mlp(z)]), dim=1)
        out = propagate(adj, x, self.layers, "sum")
        return out[: self.n_users], out[self.n_users:]
