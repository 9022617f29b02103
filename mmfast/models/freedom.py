"""FREEDOM (Zhou & Shen, MM'23): a frozen item kNN graph from the features (G2) and a
user-item graph pruned by degree every epoch, as MMRec trains it.

Forward: h = S^L_mm e_item (S the mixed kNN graph, frozen); [u; i] = mean of layers
0..L_ui of Â_pruned [e_user; e_item]; item vector = i + h. Loss: BPR(u, i+h) plus
``reg_weight`` times the BPR of the users against each modality's projected features
(``Linear(feature) -> feat_embed_dim``). Evaluation uses the full Â, no pruning.

Differences from MMRec: none in value. Each modality term is computed as <u W_m, x_p - x_n>
(:meth:`mmfast.nn.ModalityProjection.bpr_loss`), half the products of projecting the positive
and negative rows; the bias b_m cancels in the difference, so its gradient is zero in both,
and with a nonzero ``weight_decay`` MMRec's Adam shrinks b_m toward zero where mmfast leaves it.

Plug-ins (``-m FREEDOM+SEA``, ``-m FREEDOM+BMA``; ``mmfast/models/plugins.py``): the behaviour
view is (u, i) of the pruned Â, the modal view (R̂ h, h) (users lifted by the training graph's
R̂), the modal features the per-modality projections W_m x^m + b_m (``feat_embed_dim`` wide).

Reference: Xin Zhou and Zhiqi Shen. "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation." ACM MM 2023.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph, modality_weights
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.plugins import wants_view
from mmfast.models.registry import register
from mmfast.nn import DegreeSensitivePruning, LightGCNEmbeddings, ModalityProjection, bpr_loss
from mmfast.nn.lift import UserLift
from mmfast.ops import SparseGraph, propagate, select_rows


@register()
class FREEDOM(Recommender):
    """Multimodal baseline. Config: ``embedding_size``, ``feat_embed_dim``, ``n_mm_layers``,
    ``n_ui_layers``, ``knn_k``, ``mm_image_weight``, ``dropout``, ``reg_weight``,
    ``freeze_features``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "feat_embed_dim"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        modalities = list(dataset.modalities)
        if not modalities:
            raise ValueError(
                f"FREEDOM needs item features, and dataset {dataset.name!r} has none "
                "(<modality>_feat.npy files beside the .inter file)"
            )
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, int(config["embedding_size"]))
        raw = {m: dataset.feature(m).float() for m in modalities}
        # MMRec keeps the raw features as trainable embedding tables (fine-tuned by the
        # modality BPR terms); freeze_features keeps them fixed.
        self.modal = ModalityProjection(raw, int(config["feat_embed_dim"]),
                                        trainable=not bool(config.get("freeze_features", False)))
        weights = modality_weights(modalities, float(config["mm_image_weight"]))
        # G2, built once (cached on disk) and frozen.
        self.mm_adj = item_knn_graph(
            raw, int(config["knn_k"]), style="freedom", weights=weights, device=self.device
        ).to(self.device)
        self.pruning = DegreeSensitivePruning(dataset.train, float(config["dropout"]), self.device)
        self.full_adj = self.pruning.full()
        self.train_adj = self.full_adj
        # R̂, for the modal view's users; built only when a plug-in reads that view.
        self.lift = (UserLift(dataset.user_item_lift().to(self.device))
                     if wants_view(self, "modal") else None)

    def pre_epoch_processing(self) -> None:
        self.train_adj = self.pruning.sample()

    def lines(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items) of the user-item graph and h = S^L e_item of the kNN graph; the item
        vector is items + h."""
        h = propagate(self.mm_adj, self.ids.item.weight, self.n_mm_layers, "last")
        u, i = self.ids(adj, self.n_ui_layers)
        return u, i, h

    def forward(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        u, i, h = self.lines(adj)
        return u, i + h

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.forward(self.train_adj)
        return self.freedom_loss(u, i, users, positives, negatives)

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        """FREEDOM's loss and its views: behaviour (u, i), modal (R̂ h, h), the per-modality
        projections as modal features."""
        u, i, h = self.lines(self.train_adj)
        loss = self.freedom_loss(u, i + h, users, positives, negatives)
        return loss, PluginViews(
            behavior=(u, i),
            modal=(self.lift(h), h) if self.lift is not None else None,
            modal_features=self.modal_features)

    def modal_features(self, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{modality: W_m x^m[rows] + b_m} (all items when ``rows`` is None)."""
        return {m: self.modal(m, rows) for m in self.modal.modalities}

    def modal_feature_dims(self) -> dict[str, int]:
        return {m: self.modal.projections[m].out_features for m in self.modal.modalities}

    def freedom_loss(self, u, i, users, positives, negatives) -> torch.Tensor:
        """FREEDOM's loss from the final user and item vectors."""
        ub = select_rows(u, users)
        loss = bpr_loss(ub, select_rows(i, positives), select_rows(i, negatives))
        if self.reg_weight:
            for m in self.modal.modalities:
                loss = loss + self.reg_weight * self.modal.bpr_loss(m, ub, positives, negatives)
        return loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.full_adj)
