"""LightGCN (He et al., SIGIR'20) as MMRec trains it: mean of layers 0..L on Â, BPR + EmbLoss."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import bpr_loss, embedding_norm_loss
from mmfast.ops import propagate


@register()
class LightGCN(Recommender):
    """ID-only graph baseline. Config: ``embedding_size``, ``n_layers``, ``reg_weight``.

    Loss: MMRec's BPRLoss on the propagated vectors plus ``reg_weight`` times EmbLoss on the
    layer-0 (ego) vectors of the batch.
    """

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        d = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.adj = dataset.norm_adj().to(self.device)

    def propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(self.adj, ego, self.n_layers, "mean")
        return out[: self.n_users], out[self.n_users:]

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.propagated()
        mf = bpr_loss(u[users], i[positives], i[negatives], eps=1e-10)
        reg = embedding_norm_loss(
            self.user_embedding(users), self.item_embedding(positives),
            self.item_embedding(negatives),
        )
        return mf + self.reg_weight * reg

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagated()
