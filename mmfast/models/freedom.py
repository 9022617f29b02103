"""FREEDOM (Zhou & Shen, MM'23): a frozen item kNN graph from the features (G2) and a
user-item graph pruned by degree every epoch, as MMRec trains it.

Forward: h = S^L_mm e_item (S the mixed kNN graph, frozen); [u; i] = mean of layers
0..L_ui of Â_pruned [e_user; e_item]; item vector = i + h. Loss: BPR(u, i+h) plus
``reg_weight`` times the BPR of the users against each modality's projected features
(``Linear(feature) -> feat_embed_dim``). Evaluation uses the full Â, no pruning.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import DegreeSensitivePruning, bpr_loss
from mmfast.ops import SparseGraph, propagate


def modality_weights(modalities: list[str], image_weight: float) -> dict[str, float]:
    """MMRec mixes S = a S_image + (1 - a) S_text; with other modality sets (TikTok's image +
    audio) the image keeps ``image_weight`` and the others share the rest equally, and
    without an image modality all weigh the same (one modality: weight 1)."""
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" in modalities:
        rest = (1.0 - image_weight) / (len(modalities) - 1)
        return {m: (image_weight if m == "image" else rest) for m in modalities}
    return {m: 1.0 / len(modalities) for m in modalities}


@register()
class FREEDOM(Recommender):
    """Multimodal baseline. Config: ``embedding_size``, ``feat_embed_dim``, ``n_mm_layers``,
    ``n_ui_layers``, ``knn_k``, ``mm_image_weight``, ``dropout``, ``reg_weight``,
    ``freeze_features``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        modalities = [m for m in dataset.modalities]
        if not modalities:
            raise ValueError(
                f"FREEDOM needs item features, and dataset {dataset.name!r} has none "
                "(<modality>_feat.npy files beside the .inter file)"
            )
        d, f = int(config["embedding_size"]), int(config["feat_embed_dim"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        raw = {m: dataset.feature(m).float() for m in modalities}
        freeze = bool(config.get("freeze_features", False))
        # MMRec keeps the raw features as trainable embedding tables (fine-tuned by the
        # modality BPR terms); freeze_features keeps them fixed.
        self.features = nn.ParameterDict(
            {m: nn.Parameter(t.clone(), requires_grad=not freeze) for m, t in raw.items()}
        )
        self.projections = nn.ModuleDict({m: nn.Linear(t.shape[1], f) for m, t in raw.items()})
        weights = modality_weights(modalities, float(config["mm_image_weight"]))
        # G2, built once (cached on disk) and frozen.
        self.mm_adj = item_knn_graph(
            raw, int(config["knn_k"]), style="freedom", weights=weights, device=self.device
        ).to(self.device)
        self.pruning = DegreeSensitivePruning(dataset.train, float(config["dropout"]), self.device)
        self.full_adj = self.pruning.full()
        self.train_adj = self.full_adj

    def pre_epoch_processing(self) -> None:
        self.train_adj = self.pruning.sample()

    def forward(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        h = propagate(self.mm_adj, self.item_id_embedding.weight, self.n_mm_layers, "last")
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        out = propagate(adj, ego, self.n_ui_layers, "mean")
        return out[: self.n_users], out[self.n_users:] + h

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.forward(self.train_adj)
        ub = u[users]
        loss = bpr_loss(ub, i[positives], i[negatives])
        if self.reg_weight:
            for m, proj in self.projections.items():
                # Project only the batch's rows: the same values and gradients as projecting
                # every item and then indexing (MMRec's order), at a fraction of the work.
                feats = self.features[m]
                loss = loss + self.reg_weight * bpr_loss(
                    ub, proj(feats[positives]), proj(feats[negatives]))
        return loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.full_adj)
