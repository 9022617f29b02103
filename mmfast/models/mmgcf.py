"""MMGCF (UMAP'26): LightGCN's ID line late-fused with projected multimodal item features, as
MMRec trains it.

Forward: [u; i] = mean of layers 0..``n_ui_layers`` of LightGCN on Â (during training on
FREEDOM's degree-sensitively pruned Â, redrawn every epoch with ``dropout`` of the edges
removed, :class:`mmfast.nn.edge_pruning.DegreeSensitivePruning`; evaluation on the full Â).
Each modality m (visual, then textual) is projected, x_m = W_m f_m + b_m, from its frozen raw
table f_m. The item vector fuses i with the x_m by ``fusion_mode`` (fuse = ``mean`` or ``sum``
of the stacked tensors, or ``concat`` then a Linear to the output width) and ``weighting``:

- ``equal``: x = fuse(x_v, x_t) (``concat``: its own Linear; one modality: x_m itself), then
  i' = fuse(i, x) (``concat``: a second Linear);
- ``alpha``: α = σ(a), a learnable scalar (0 at start); i' = fuse(α i, (1-α) x_v, (1-α) x_t);
- ``normalized``: i' = fuse(M î, x̂_v, x̂_t), ^ the L2 normalization of each row, M the number
  of modalities.

``mean``/``sum`` need ``feat_embed_dim`` = ``embedding_size``. Users are u (no modal part).
Without features the item vector is i.

Loss: BPR (log-sigmoid) on (u, i') + ``reg_weight`` (|e_u|² + |e_i+|² + |e_i-|²) / (2B) on the
batch's layer-0 ID embeddings, B the batch's size.

Plug-in views (``+SEA``/``+BMA``): behaviour = (u, i) of the training graph, modal features =
the x_m (``feat_embed_dim`` wide); no modal view of the user.

Reference: "Multimodal Graph Collaborative Filtering for Recommendation with Graph
Convolutional Networks." UMAP 2026 (MMRec's ``models/mmgcf.py``).

Differences from MMRec: none in the computation. The pruning draw comes from a model-owned
random stream (saved on resume) and uses exponential keys (the same distribution as MMRec's
``torch.multinomial`` without replacement). Unknown ``fusion_mode``/``weighting`` values and a
width mismatch are one-line errors where MMRec falls back to ``equal`` or fails inside
``torch.stack``; ``dropout`` must lie in [0, 1) (MMRec treats any value <= 0 as 0).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import batch_rows, bpr_loss
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.roles import image_text_roles

FUSION_MODES = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")


@register()
class MMGCF(Recommender):
    """MMGCF. Config: ``configs/model/MMGCF.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal_features")
    modal_width_key: ClassVar[str] = "feat_embed_dim"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.fusion_mode, self.weighting = str(config["fusion_mode"]), str(config["weighting"])
        if self.fusion_mode not in FUSION_MODES:
            raise ValueError(f"MMGCF: fusion_mode must be one of {FUSION_MODES}, "
                             f"got {self.fusion_mode!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"MMGCF: weighting must be one of {WEIGHTINGS}, "
                             f"got {self.weighting!r}")
        dim, feat_dim = int(config["embedding_size"]), int(config["feat_embed_dim"])
        if self.fusion_mode != "concat" and feat_dim != dim:
            raise ValueError(f"MMGCF: fusion_mode={self.fusion_mode!r} adds ID and modal vectors, "
                             f"so feat_embed_dim ({feat_dim}) must equal embedding_size ({dim})")
        self.roles = (image_text_roles(dataset.modalities, "MMGCF")
                      if dataset.modalities else [])
        raw = {m: dataset.feature(m).float() for m in self.roles}
        check_features(raw, "MMGCF")
        self.n_ui_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        # Built in MMRec's order, so a seed draws the same initial weights.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        self.modal = (ModalityProjection(raw, feat_dim, trainable=False) if raw else None)
        n_mod = len(self.roles)
        if self.weighting == "alpha":
            self.mm_alpha = nn.Parameter(torch.tensor(0.0))
        if self.fusion_mode == "concat" and n_mod:
            self.all_concat = nn.Linear(dim + n_mod * feat_dim, dim)
            self.mm_concat = nn.Linear(n_mod * feat_dim, feat_dim) if n_mod > 1 else None
            self.id_mm_concat = nn.Linear(dim + feat_dim, dim)
        self.pruning = DegreeSensitivePruning(dataset.train, float(config["dropout"]),
                                              self.device, owner="MMGCF")
        self.full_adj = self.pruning.full()
        self.train_adj = self.full_adj
        self.prune_gen = self.add_generator("edge_pruning")

    def pre_epoch_processing(self) -> None:
        self.train_adj = self.pruning.sample(self.prune_gen)

    def _fuse(self, tensors: list[torch.Tensor], concat: nn.Module | None) -> torch.Tensor:
        if self.fusion_mode == "concat":
            return concat(torch.cat(tensors, dim=-1))
        total = torch.stack(tensors)
        return total.mean(0) if self.fusion_mode == "mean" else total.sum(0)

    def fuse_items(self, items: torch.Tensor) -> torch.Tensor:
        """i' from the propagated item vectors i [n_items, d] and the projected features."""
        if not self.roles:
            return items
        feats = [self.modal(m) for m in self.roles]
        concat = self.fusion_mode == "concat"
        if self.weighting == "alpha":
            a = torch.sigmoid(self.mm_alpha)
            return self._fuse([items * a] + [f * (1.0 - a) for f in feats],
                              self.all_concat if concat else None)
        if self.weighting == "normalized":
            return self._fuse([F.normalize(items) * len(feats)] + [F.normalize(f) for f in feats],
                              self.all_concat if concat else None)
        mm = (self._fuse(feats, self.mm_concat if concat else None) if len(feats) > 1
              else feats[0])
        return self._fuse([items, mm], self.id_mm_concat if concat else None)

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        u, i = self.ids(self.train_adj, self.n_ui_layers)
        fused = self.fuse_items(i)
        loss = bpr_loss(*batch_rows(u, fused, users, positives, negatives))
        if self.reg_weight:
            reg = (self.ids.user(users).square().sum() + self.ids.item(positives).square().sum()
                   + self.ids.item(negatives).square().sum()) / (2 * users.shape[0])
            loss = loss + self.reg_weight * reg
        views = PluginViews(
            behavior=(u, i),
            modal_features=(lambda rows=None: {m: self.modal(m, rows) for m in self.roles})
            if self.roles else None)
        return loss, views

    def modal_feature_dims(self) -> dict[str, int]:
        """Widths of the per-modality item features (``+SEA`` splits them in half)."""
        return {m: self.modal.projections[m].out_features for m in self.roles}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.ids(self.full_adj, self.n_ui_layers)
        return u, self.fuse_items(i)
