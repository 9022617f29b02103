"""SelfCF_ed (Zhou et al., TORS'23) with a LightGCN encoder, as MMRec trains it: no negatives;
the target views are the online vectors under embedding dropout.

Encoder (training): [U; I] = mean of layers 0..L of Ã [E_user; E_item] (``n_layers``), where Ã
is Â under MMRec's edge dropout, redrawn every step: each stored entry of Â kept with
probability 1 - p and rescaled by 1/(1 - p), p ~ U[0, ``edge_drop_ratio``) drawn per step
(:class:`mmfast.nn.edge_dropout.RandomRateEdgeDropout`). Evaluation uses Â itself.

Loss on the batch's (user u, positive i) pairs, P a Linear(d, d) predictor (PyTorch's default
initialization, as MMRec leaves it), ū = drop(U_u), ī = drop(I_i) detached, with inverted
dropout of rate ``dropout`` on each batch row (repeated rows draw their own masks, as MMRec's
dropout of the gathered rows does):
  L = -mean cos(P(U_u), ī) / 2 - mean cos(P(I_i), ū) / 2
      + reg_weight * (||U_batch||^2 + ||I_batch||^2) / 2          (MMRec's L2Loss, not / B)
Score: <P(u), i> + <u, P(i)> on the full-graph vectors, which is the inner product of
[P(u) ‖ u] and [i ‖ P(i)]; ``embeddings()`` returns those 2d-wide vectors.

Config (MMRec's keys): ``embedding_size``, ``n_layers``, ``dropout``, ``reg_weight``,
``use_neg_sampling: false``; and ``edge_drop_ratio`` (MMRec's LightGCN encoder hard-codes
``drop_flag=True, drop_ratio=1.0``: 1.0 is that default; 0.0 trains on Â as the SelfCF
authors' own code does).

Differences from MMRec: Â is mmfast's cached D^-1/2 A D^-1/2 without MMRec's +1e-7 on the
degrees; dropped entries of Ã stay in the graph with value 0 (the same products; fixed shapes).
Random draws come from the model's streams (``edge_dropout``, ``target_dropout``), not numpy's
and torch's global ones.

Reference: Xin Zhou, Aixin Sun, Yong Liu, Jie Zhang, Chunyan Miao. "SelfCF: A Simple
Framework for Self-supervised Collaborative Filtering." ACM TORS 2023.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import half_squared_norm_loss
from mmfast.nn.edge_dropout import RandomRateEdgeDropout
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.ssl_views import DropoutView
from mmfast.ops import SparseGraph, select_rows


@register()
class SELFCFED_LGN(Recommender):
    """SelfCF_ed on LightGCN (module docstring). Config: ``configs/model/SELFCFED_LGN.yaml``."""

    uses_negatives: ClassVar[bool] = False  # trains on (user, positive) pairs only

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        dim = int(config["embedding_size"])
        # MMRec's encoder falls back to 3 layers when n_layers is None.
        layers = config.get("n_layers")
        self.n_layers = 3 if layers is None else int(layers)
        if self.n_layers < 0:
            raise ValueError(f"SELFCFED_LGN: n_layers must be >= 0, got {self.n_layers}")
        self.reg_weight = float(config["reg_weight"])
        # MMRec's draw order: the encoder's tables (users, items), then the predictor.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        self.predictor = nn.Linear(dim, dim)
        self.adj = dataset.norm_adj().to(self.device)
        self.edge_dropout = RandomRateEdgeDropout(
            self.adj, float(config.get("edge_drop_ratio", 1.0)), self.add_generator("edge_dropout"))
        self.target_dropout = DropoutView(float(config["dropout"]),
                                          self.add_generator("target_dropout"))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if "edge_dropout" in vars(self):
            self.edge_dropout.to(self.adj.device)
        return self

    def encode(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, d], items [n_items, d]): LightGCN mean of layers 0..L on ``adj``."""
        return self.ids(adj, self.n_layers)

    def calculate_loss(self, users, positives, negatives=None) -> torch.Tensor:
        u_all, i_all = self.encode(self.edge_dropout(self.adj))
        u, i = select_rows(u_all, users), select_rows(i_all, positives)
        drop = self.target_dropout
        with torch.no_grad():  # targets: the batch rows, detached, each under its own mask
            u_target = u * drop.mask(u.shape, u)
            i_target = i * drop.mask(i.shape, i)
        reg = half_squared_norm_loss(u, i)
        loss_ui = -F.cosine_similarity(self.predictor(u), i_target, dim=-1).mean() / 2
        loss_iu = -F.cosine_similarity(self.predictor(i), u_target, dim=-1).mean() / 2
        return loss_ui + loss_iu + self.reg_weight * reg

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.encode(self.adj)
        return torch.cat([self.predictor(u), u], 1), torch.cat([i, self.predictor(i)], 1)
