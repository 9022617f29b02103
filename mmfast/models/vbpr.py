"""VBPR (He & McAuley, AAAI'16) as MMRec trains it: matrix factorisation whose item vector carries
a linear map of the item's content features.

Forward: user u = [γ_u ‖ θ_u] (one 2d-wide table), item i = [γ_i ‖ E f_i + b], f_i the
concatenation of the item's feature tables (MMRec's order: text, then image; TikTok's audio
plays text's role), E one ``Linear(Σ d_m, d)``; score = <u, i>. The features are frozen.
Loss: MMRec's ``BPRLoss`` -log(1e-10 + σ(<u,i+> − <u,i−>)) plus ``reg_weight`` times its
``EmbLoss`` (the Frobenius norms, not squared, of the batch's u, i+ and i− rows, over the batch
size). Init as MMRec: both tables Xavier-uniform, E Xavier-normal with a zero bias.

Plug-ins (``-m VBPR+SEA``, ``-m VBPR+BMA``; ``mmfast/models/plugins.py``): the behaviour view is
(γ_u, γ_i), the modal view (θ_u, E f_i + b), the two halves of VBPR's own score; the modal
features are each modality's share of E, E_m f_i^m (d wide, split d/2 | d/2 by SEA).

Reference: Ruining He and Julian McAuley. "VBPR: Visual Bayesian Personalized Ranking from
Implicit Feedback." AAAI 2016.

Differences from MMRec: none in training. (MMRec's ``forward`` takes a dropout argument it
always calls with 0, a no-op left out; its loss is a one-element tensor, here a scalar.) With
more than two modalities the tables are concatenated, the non-image ones in the dataset's order
and image last (MMRec reads only image and text). VBPR+SEA: the SEA authors' ``XVBPR`` (MODELS.md
§2.6) printed two extra maps, 384 -> 64 and 4096 -> 64, whose use its logs do not show; here SEA
splits the per-modality blocks of VBPR's own E instead, so SEA acts on the vectors that score.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.plugins import wants_view
from mmfast.models.registry import register
from mmfast.nn import batch_rows, bpr_loss, check_features, embedding_norm_loss
from mmfast.ops import select_rows


def concat_order(modalities: list[str]) -> list[str]:
    """MMRec's concatenation order: the non-image modalities (text), then image."""
    return [m for m in modalities if m != "image"] + [m for m in modalities if m == "image"]


@register()
class VBPR(Recommender):
    """Visual BPR. Config: ``embedding_size``, ``reg_weight``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "embedding_size"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        if not dataset.modalities:
            raise ValueError(f"VBPR needs item features, and dataset {dataset.name!r} has none "
                             "(<modality>_feat.npy files beside the .inter file)")
        self.modalities = concat_order(list(dataset.modalities))
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, "VBPR")
        self.dim = d = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"])
        # MMRec's order of draws: the two tables, then the linear map (its default init, then
        # Xavier-normal over it).
        self.u_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.i_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        features = torch.cat([raw[m] for m in self.modalities], dim=1)
        self.item_linear = nn.Linear(features.shape[1], d)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)
        # Frozen inputs, rebuilt from the dataset (not in checkpoints).
        self.register_buffer("features", features.to(self.device), persistent=False)
        bounds = torch.tensor([0] + [raw[m].shape[1] for m in self.modalities]).cumsum(0).tolist()
        self.blocks = {m: (bounds[k], bounds[k + 1]) for k, m in enumerate(self.modalities)}

    # ------------------------------------------------------------------ forward
    def content(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """E f_i + b for ``rows`` (all items when None)."""
        return self.item_linear(self.features if rows is None else self.features[rows])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, 2d], items [n_items, 2d]) = ([γ_u ‖ θ_u], [γ_i ‖ E f_i + b])."""
        return self.u_embedding, torch.cat([self.i_embedding, self.content()], dim=1)

    def vbpr_loss(self, u, pos, neg) -> torch.Tensor:
        loss = bpr_loss(u, pos, neg, eps=1e-10)
        return loss + self.reg_weight * embedding_norm_loss(u, pos, neg)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        # Only the batch's items go through E: the same rows and gradients as MMRec's
        # projection of every item.
        def item(rows):
            return torch.cat([self.i_embedding[rows], self.content(rows)], dim=1)

        users_b = select_rows(self.u_embedding, users)
        return self.vbpr_loss(users_b, item(positives), item(negatives))

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        """VBPR's loss and its views: behaviour (γ_u, γ_i), modal (θ_u, E f_i + b), the
        per-modality blocks E_m f^m as modal features."""
        features = None
        if wants_view(self, "modal_features"):
            # E f + b as the sum of the blocks SEA reads: one pass of E over the items, not two.
            blocks = self.modal_features(None)
            content = sum(blocks.values()) + self.item_linear.bias
            features = lambda rows: blocks if rows is None else {  # noqa: E731
                m: b[rows] for m, b in blocks.items()}
        else:
            content = self.content()
        items = torch.cat([self.i_embedding, content], dim=1)
        u = self.u_embedding
        loss = self.vbpr_loss(*batch_rows(u, items, users, positives, negatives))
        d = self.dim
        return loss, PluginViews(behavior=(u[:, :d], self.i_embedding), modal=(u[:, d:], content),
                                 modal_features=features)

    def modal_features(self, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{modality: E_m f^m[rows]}, each modality's block of E (no bias), d wide."""
        x = self.features if rows is None else self.features[rows]
        w = self.item_linear.weight
        return {m: F.linear(x[:, a:b], w[:, a:b]) for m, (a, b) in self.blocks.items()}

    def modal_feature_dims(self) -> dict[str, int]:
        return {m: self.dim for m in self.modalities}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()

    @torch.no_grad()
    def mask_modality(self, modality: str, items: torch.Tensor) -> None:
        """Zero ``modality``'s columns of the concatenated features for ``items``."""
        if modality not in self.blocks:
            raise ValueError(f"VBPR holds no {modality!r} features to mask")
        a, b = self.blocks[modality]
        self.features[items.to(self.features.device), a:b] = 0
