"""LayerGCN (Zhou et al., ICDE'23): LightGCN whose every layer is rescaled by its agreement
with the ego layer, on a user-item graph pruned every epoch, as MMRec trains it.

Forward on a graph G: x^(0) = [E_user; E_item]; for l = 1..L (``n_layers``)
  h = G x^(l-1),   x^(l) = cos(h, x^(0)) ⊙ h      (one cosine per node, rows scaled)
and [U; I] = x^(1) + ... + x^(L) (the ego layer itself is left out of the sum).

Training graph: with ``dropout`` > 0, each epoch keeps int((1 - dropout) |E|) training edges,
drawn without replacement, and re-normalizes them symmetrically with degrees + 1e-7
(:class:`mmfast.nn.edge_pruning.DegreeSensitivePruning`, shared with FREEDOM). MMRec alternates
the draw between epochs: even epochs (the first is 0) weigh edges by 1/sqrt(d_u d_i), odd
epochs draw uniformly (``alternate_pruning: true``; false prunes by degree every epoch). With
``dropout`` 0 the training graph is Â. Evaluation uses Â.

Loss on a batch of (u, i+, i-), scores from [U; I], ego rows e from the ID tables:
  L = sum_b -log sigmoid(<U_u, I_i+> - <U_u, I_i->)           (summed over the batch, not mean)
      + reg_weight * (||e_u||^2 + ||e_i+||^2 + ||e_i-||^2) / 2   (MMRec's L2Loss, not / B)
The ID tables are xavier-uniform (users first).

Config (MMRec's keys): ``embedding_size``, ``n_layers``, ``dropout``, ``reg_weight``; and
``alternate_pruning`` (above).

Differences from MMRec: Â is mmfast's cached D^-1/2 A D^-1/2 without MMRec's +1e-7 on the
degrees (the pruned graphs keep it); the edge draws come from the model's ``edge_pruning``
stream (the exponential-keys form of weighted sampling without replacement, and a uniform
subset by the same top-k) instead of ``torch.multinomial`` and Python's ``random.sample``;
which draw an epoch makes follows its epoch number, so a resumed run continues the
alternation. MMRec's file imports ``models.common``, a package its tree does not have at
e775373 (the base classes live in ``common``), so MMRec as shipped does not load LayerGCN.

Reference: Xin Zhou, Donghui Lin, Yong Liu, Chunyan Miao. "Layer-refined Graph Convolutional
Networks for Recommendation." ICDE 2023.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import batch_rows, bpr_loss, half_squared_norm_loss
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.ops import SparseGraph, spmm


@register()
class LayerGCN(Recommender):
    """Layer-refined GCN (module docstring). Config: ``configs/model/LayerGCN.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.n_layers = int(config["n_layers"])
        if self.n_layers < 1:
            raise ValueError(f"LayerGCN: n_layers must be >= 1, got {self.n_layers}")
        self.reg_weight = float(config["reg_weight"])
        self.dropout = float(config["dropout"])
        self.alternate = bool(config.get("alternate_pruning", True))
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, int(config["embedding_size"]))
        self.adj = dataset.norm_adj().to(self.device)
        self.pruning = DegreeSensitivePruning(dataset.train, self.dropout, self.device,
                                              owner="LayerGCN")
        self.pruning_rng = self.add_generator("edge_pruning") if self.dropout > 0 else None
        self.train_adj: SparseGraph | None = None  # None: Â (no pruning, or before the first epoch)

    def pre_epoch_processing(self) -> None:
        if self.pruning_rng is None:
            return
        uniform = self.alternate and self.current_epoch % 2 == 1
        self.train_adj = self.pruning.sample(self.pruning_rng, uniform=uniform).to(
            self.adj.device, self.adj.dtype)

    def forward(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, d], items [n_items, d]): the sum of the refined layers 1..L."""
        ego = self.ids.ego()
        x, total = ego, torch.zeros_like(ego)
        for _ in range(self.n_layers):
            x = spmm(adj, x)
            x = F.cosine_similarity(x, ego, dim=-1).unsqueeze(1) * x
            total = total + x
        return total[: self.n_users], total[self.n_users:]

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.forward(self.adj if self.train_adj is None else self.train_adj)
        # a sum, as MMRec
        mf = bpr_loss(*batch_rows(u, i, users, positives, negatives)) * users.shape[0]
        reg = half_squared_norm_loss(self.ids.user(users), self.ids.item(positives),
                                     self.ids.item(negatives))
        return mf + self.reg_weight * reg

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.adj)
