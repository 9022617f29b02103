"""DualGNN (Wang et al., TMM'21) as MMRec trains it: per-modality GNNs on the user-item graph,
users fused by learned per-user modality weights, then smoothed over the user-user
co-interaction graph resampled every epoch.

Per modality m (MMRec's ``GCN``, :class:`mmfast.nn.ModalityGNN`): item MLP d_m -> 256 -> 64,
a user preference table P_m, x = rownorm([P_m; MLP(X_m)]), E_m = x + Ĝx + Ĝ²x with Ĝ the
``aggr_mode`` graph (``add``: Â; ``mean``: D^-1 A). Items: Σ_m E_m (items). Users:
e_u = w_u1 (E_v + E_t)_u + w_u2 (E_t)_u (the weights start as a softmax of xavier-normal draws,
then train freely), then e_u + Σ_j a_uj e_{n_uj} over the epoch's 40 sampled co-interaction
neighbours (:class:`mmfast.nn.user_graph.UserGraphAggregation`, softmax of the counts). Loss:
BPR with log2, plus ``reg_weight`` times [Σ_m mean(P_m[u]²) + mean(w_user²) + mean(w_item²)].

The user-user graph is ``<dataset>/user_graph_dict.npy`` when that file exists (MMRec's
``user_graph_dict_file``), else mmfast builds it from the training split exactly as MMRec's
``preprocessing/dualgnn-gen-u-u-matrix.py`` does (:mod:`mmfast.data.user_graph`, cached).

MMRec quirks, each the default and a switch:
- ``user_inplace_sum: true``: MMRec adds the text line into the image line in place before
  weighting the users, so a user is w_u1 (E_v + E_t) + w_u2 E_t; ``false``: w_u1 E_v + w_u2 E_t.
- the item weights w_item (I x 2) enter only the regularizer, as in MMRec.

Reference: Qifan Wang, Yinwei Wei, Jianhua Yin, Jianlong Wu, Xuemeng Song, Liqiang Nie.
"DualGNN: Dual Graph Neural Network for Multimedia Recommendation." IEEE TMM 2021.

Differences from MMRec: evaluation recomputes the representation after the epoch (MMRec
scores with the one of the epoch's last training forward, one optimizer step older); the GNN
width follows ``embedding_size`` and the propagation depth ``n_layers`` (MMRec hard-codes 64
and 2, the defaults here); the neighbour padding draws come from the model's own random stream
(same distribution); repeated neighbours add their weights in one graph entry.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mmfast.data.aggregation import aggregation_graph
from mmfast.data.dataset import Dataset
from mmfast.data.user_graph import dataset_user_graph
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import (
    ModalityGNN, UserModalityWeights, batch_rows, bpr_loss, check_features, log2_scale,
)
from mmfast.nn.roles import visual_textual_roles
from mmfast.nn.user_graph import UserGraphAggregation


class DualGraphBase(Recommender):
    """What DualGNN and DRAGON share: the per-modality GNNs on the ``aggr_mode`` user-item
    graph, the per-user modality weights, the resampled user-user graph and the regularizer on
    the batch users' preferences."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        self.roles = visual_textual_roles(dataset.modalities, name)
        self.modalities = list(self.roles.values())
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        for m, x in raw.items():  # frozen inputs, not saved in checkpoints
            self.register_buffer(f"raw_{m}", x.to(self.device), persistent=False)
        dim = int(config["embedding_size"])
        self.gnns = nn.ModuleDict({
            m: ModalityGNN(self.n_users, x.shape[1], hidden=4 * dim, dim=dim,
                           layers=int(config["n_layers"])) for m, x in raw.items()})
        self.adj = aggregation_graph(dataset.train, str(config["aggr_mode"])).to(self.device)
        self.user_weights = UserModalityWeights(self.n_users, 2)  # MMRec's weight_u
        self.reg_weight = float(config["reg_weight"])
        graph, self.user_graph_source = dataset_user_graph(
            dataset, config.get("user_graph_dict_file") or None)
        self.user_graph = UserGraphAggregation(graph, int(config["user_graph_k"]),
                                               str(config["user_aggr_mode"]), self.device)
        self._user_graph_rng = self.add_generator("user_graph")
        self.user_graph.resample(self._user_graph_rng)

    def pre_epoch_processing(self) -> None:
        """MMRec's ``topk_sample``: this epoch's neighbours and weights."""
        self.user_graph.resample(self._user_graph_rng)

    def lines(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{modality: (users, items)} of the per-modality GNNs, v role first."""
        return {m: self.gnns[m](self.adj, getattr(self, f"raw_{m}")) for m in self.modalities}

    def preference_reg(self, users: torch.Tensor) -> torch.Tensor:
        """Σ_m mean(P_m[users]²) + mean(w_user²), the terms both models regularize."""
        reg = self.user_weights.weight.square().mean()
        for m in self.modalities:
            reg = reg + self.gnns[m].preference[users].square().mean()
        return reg

    def run_info(self) -> dict[str, Any]:
        return {"user_graph": self.user_graph_source}


@register()
class DualGNN(DualGraphBase):
    """DualGNN. Config: see ``configs/model/DualGNN.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.inplace_sum = bool(config["user_inplace_sum"])
        init = nn.init.xavier_normal_(torch.empty(self.n_items, 2))
        self.item_weights = nn.Parameter(torch.softmax(init, dim=1))  # MMRec's weight_i

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        lines = self.lines()
        items = None
        for _, i in lines.values():
            items = i if items is None else items + i
        if len(lines) == 2:
            (v, _), (t, _) = lines.values()
            if self.inplace_sum:
                v = v + t
            w = self.user_weights.weight
            users = w[:, 0:1] * v + w[:, 1:2] * t
        else:
            users = next(iter(lines.values()))[0]
        return users + self.user_graph(users), items

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.forward()
        loss = log2_scale(bpr_loss(*batch_rows(u, i, users, positives, negatives)))
        reg = self.preference_reg(users) + self.item_weights.square().mean()
        return loss + self.reg_weight * reg

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()
