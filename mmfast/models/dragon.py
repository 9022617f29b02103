"""DRAGON (Zhou et al., ECAI'23) as MMRec trains it: DualGNN's per-modality GNNs on the user-item
(heterogeneous) graph, fused by attentive concatenation, plus the two homogeneous graphs: the
user-user co-interaction graph (resampled every epoch) and the frozen item kNN graph of the
features (MODELS.md §1.4 G2).

Per modality m (:class:`mmfast.nn.ModalityGNN`): item MLP d_m -> 256 -> 64 on the raw
features, a user preference table P_m, x = rownorm([P_m; MLP(X_m)]), E_m = x + Ĝx + Ĝ²x
(Ĝ: ``aggr_mode`` ``add`` = Â, ``mean`` = D^-1 A). Heterogeneous line: items [E_v || E_t],
users [w_u1 E_v || w_u2 E_t] (per-user weights, a softmax of xavier-normal draws at the start,
then free). Homogeneous line: h_i = S^L items (S = α S_v + (1 - α) S_t, the top-``knn_k``
cosine graphs of the raw features, every value 1/k; L = ``n_mm_layers``) and
h_u = Σ_j a_uj e_{n_uj} over the epoch's 40 sampled co-interaction neighbours (softmax of the
counts, :class:`mmfast.nn.user_graph.UserGraphAggregation`). Scores: <e_u + h_u, e_i + h_i>.
Loss: BPR with log2 plus ``reg_weight`` times [Σ_m mean(P_m[u]²) + mean(w_user²)].

The user-user graph is ``<dataset>/user_graph_dict.npy`` when that file exists (MMRec's
``user_graph_dict_file``), else mmfast builds it from the training split exactly as MMRec's
``preprocessing/dualgnn-gen-u-u-matrix.py`` does (:mod:`mmfast.data.user_graph`, cached).

Plug-ins (:meth:`loss_and_views`): the behaviour line is the heterogeneous one (e_u, e_i), the
modal line the homogeneous one (h_u, h_i), both 128-d; SEA's per-modality item features are the
GNNs' item MLP outputs MLP(X_m) (64-d).

Reference: Hongyu Zhou, Xin Zhou, Lingzi Zhang, Zhiqi Shen. "Enhancing Dyadic Relations with
Homogeneous Graphs for Multimodal Recommendation." ECAI 2023.

Differences from MMRec: evaluation recomputes the representation after the epoch (MMRec
scores with the one of the epoch's last training forward, one optimizer step older); the kNN
values are 1/k where MMRec's are 1/(k + 1e-7), and equal similarities keep the lower item
index; the GNN width follows ``embedding_size`` and the depth ``n_layers`` (MMRec hard-codes 64
and 2, the defaults here); the neighbour padding draws come from the model's own random stream
(same distribution); repeated neighbours add their weights in one graph entry. MMRec reuses a
``mm_adj_<k>.pt`` it finds in the dataset folder whatever built it; mmfast's kNN cache is keyed
by the features and every parameter.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.models.base import PluginViews
from mmfast.models.dualgnn import DualGraphBase
from mmfast.models.registry import register
from mmfast.nn import RelationGraph, batch_rows, bpr_loss, log2_scale


@register()
class DRAGON(DualGraphBase):
    """DRAGON. Config: see ``configs/model/DRAGON.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "embedding_size"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        alpha = float(config["mm_image_weight"])
        if len(self.roles) == 2:  # MMRec: alpha S_v + (1 - alpha) S_t
            weights = {self.roles["v"]: alpha, self.roles["t"]: 1.0 - alpha}
        else:
            weights = {self.modalities[0]: 1.0}
        raw = {m: getattr(self, f"raw_{m}") for m in self.modalities}
        knn = item_knn_graph(raw, int(config["knn_k"]), style="freedom", weights=weights,
                             device=self.device)
        self.item_graph = RelationGraph(knn.to(self.device), int(config["n_mm_layers"]))  # S^L

    def heterogeneous(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, M*d], items [I, M*d]) of the user-item graph, attentively concatenated."""
        lines = list(self.lines().values())
        items = torch.cat([i for _, i in lines], dim=1)
        if len(lines) == 2:
            users = self.user_weights([u for u, _ in lines])
        else:
            users = lines[0][0]
        return users, items

    def represent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e_u, e_i, h_u, h_i): the heterogeneous and homogeneous lines."""
        users, items = self.heterogeneous()
        return users, items, self.user_graph(users), self.item_graph(items)

    def _loss(self, u, i, users, positives, negatives) -> torch.Tensor:
        loss = log2_scale(bpr_loss(*batch_rows(u, i, users, positives, negatives)))
        return loss + self.reg_weight * self.preference_reg(users)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        e_u, e_i, h_u, h_i = self.represent()
        return self._loss(e_u + h_u, e_i + h_i, users, positives, negatives)

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        e_u, e_i, h_u, h_i = self.represent()
        loss = self._loss(e_u + h_u, e_i + h_i, users, positives, negatives)
        return loss, PluginViews(behavior=(e_u, e_i), modal=(h_u, h_i),
                                 modal_features=self.modal_features)

    def modal_features(self, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{modality: MLP_m(X_m)[rows]}, the per-modality item representations (64-d)."""
        out = {}
        for m in self.modalities:
            x = getattr(self, f"raw_{m}")
            out[m] = self.gnns[m].item_mlp(x if rows is None else x[rows])
        return out

    def modal_feature_dims(self) -> dict[str, int]:
        return {m: self.gnns[m].item_mlp[-1].out_features for m in self.modalities}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        e_u, e_i, h_u, h_i = self.represent()
        return e_u + h_u, e_i + h_i
