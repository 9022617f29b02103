"""BPR-MF (Rendle et al., UAI'09) as MMRec trains it: one ID vector per user and item, the
score their inner product.

Loss on a batch of (u, i+, i-) with e_u, e_i+, e_i- the rows of the two tables:
  L = -mean log(1e-10 + sigmoid(<e_u, e_i+> - <e_u, e_i->))          (MMRec's BPRLoss)
      + reg_weight * (||E_u||_F + ||E_i+||_F + ||E_i-||_F) / B      (MMRec's EmbLoss, norms not squared)
Both tables are xavier-normal (MMRec's ``xavier_normal_initialization``; users drawn first).

Config (MMRec's keys): ``embedding_size``, ``reg_weight``.

Differences from MMRec: none. (MMRec's ``forward`` applies a dropout of rate 0.0 to both tables,
which is the identity.)

Reference: Steffen Rendle, Christoph Freudenthaler, Zeno Gantner, Lars Schmidt-Thieme.
"BPR: Bayesian Personalized Ranking from Implicit Feedback." UAI 2009.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import bpr_loss, embedding_norm_loss


@register()
class BPR(Recommender):
    """Matrix factorisation trained with BPR (module docstring). Config: ``configs/model/BPR.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        dim = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        self.user = nn.Embedding(self.n_users, dim)
        self.item = nn.Embedding(self.n_items, dim)
        nn.init.xavier_normal_(self.user.weight)
        nn.init.xavier_normal_(self.item.weight)
        self.to(self.device)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, p, n = self.user(users), self.item(positives), self.item(negatives)
        return bpr_loss(u, p, n, eps=1e-10) + self.reg_weight * embedding_norm_loss(u, p, n)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight
