"""LightGCN (He et al., SIGIR'20) as MMRec trains it: mean of layers 0..L on Â, BPR + EmbLoss.

Reference: Xiangnan He et al. "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation." SIGIR 2020.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import LightGCNEmbeddings, batch_rows, bpr_loss, embedding_norm_loss


@register()
class LightGCN(Recommender):
    """ID-only graph baseline. Config: ``embedding_size``, ``n_layers``, ``reg_weight``.

    Loss: MMRec's BPRLoss on the propagated vectors plus ``reg_weight`` times EmbLoss on the
    layer-0 (ego) vectors of the batch.
    """

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, int(config["embedding_size"]))
        self.adj = dataset.norm_adj().to(self.device)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.ids(self.adj, self.n_layers)
        mf = bpr_loss(*batch_rows(u, i, users, positives, negatives), eps=1e-10)
        reg = embedding_norm_loss(self.ids.user(users), self.ids.item(positives),
                                  self.ids.item(negatives))
        return mf + self.reg_weight * reg

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids(self.adj, self.n_layers)
