"""BM3 (Zhou et al., WWW'23): bootstrapped latent views by dropout, no negatives and no
auxiliary graph, as MMRec trains it.

Forward: [u; i] = mean of layers 0..L of Â [E_user; E_item] (``n_layers``), the item vector
i + E_item (a residual of the item IDs); per modality m, f^m = W_m x^m + b_m on the raw feature
table x^m, which is fine-tuned (xavier-normal W_m). A shared predictor p (Linear d -> d,
xavier-normal) makes the online views; the target views are the same vectors, detached, under
inverted dropout ``dropout`` (:class:`mmfast.nn.ssl_views.DropoutView`; whole-table masks, so
repeated batch rows share one): ū, ī, f̄^m.

Loss on the batch's (user u, positive i) pairs, C(a, b) = 1 - mean_r cos(a_r, b_r):
  L = C(p(u), ī) + C(p(i), ū)                        (graph reconstruction)
      + reg_weight · (‖U‖_F + ‖I‖_F) / n_items        (MMRec's EmbLoss on the full tables)
      + cl_weight · Σ_m [C(p(f^m), ī) + C(p(f^m), f̄^m)]   (inter- and intra-modality alignment)
Score: <p(u), p(i)> on the full tables.

Config (MMRec's keys): ``embedding_size``, ``feat_embed_dim`` (read by nothing: MMRec sizes the
projections by ``embedding_size``, as the shared predictor requires), ``n_layers``,
``dropout``, ``reg_weight``, ``cl_weight``, ``use_neg_sampling: false`` (the trainer's batches
then hold no negatives). Any number of modalities (MMRec's code: image and text, either
optional); NaN features are an error.

Differences from MMRec: Â is mmfast's cached D^-1/2 A D^-1/2 without MMRec's +1e-7 on the
degrees (no effect at float32 precision for degrees >= 1); the modality projections and the
predictor run on the batch rows only (the same values and gradients as on every item, then
indexed).

Reference: Xin Zhou, Hongyu Zhou, Yong Liu, Zhiwei Zeng, Chunyan Miao, Pengwei Wang, Yuan You,
Feijun Jiang. "Bootstrap Latent Representations for Multi-modal Recommendation." WWW 2023.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.alignment import ui_cosine_loss
from mmfast.nn.bpr import embedding_norm_loss
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.ssl_views import DropoutView
from mmfast.ops import select_rows


@register()
class BM3(Recommender):
    """BM3 (module docstring). Config: ``configs/model/BM3.yaml``."""

    uses_negatives: ClassVar[bool] = False  # trains on (user, positive) pairs only

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        self.modalities = list(dataset.modalities)
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        dim = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.cl_weight = float(config["cl_weight"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)  # xavier-uniform
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.modal: ModalityProjection | None = None
        if raw:  # MMRec fine-tunes the raw tables (Embedding.from_pretrained(freeze=False))
            self.modal = ModalityProjection(raw, dim, trainable=True)
            for lin in self.modal.projections.values():
                nn.init.xavier_normal_(lin.weight)
        self.target_dropout = DropoutView(float(config["dropout"]),
                                          self.add_generator("target_dropout"))
        self.adj = dataset.norm_adj().to(self.device)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [n_users, d], items [n_items, d]) before the predictor: LightGCN mean of
        layers 0..L, items plus their ID embeddings."""
        u, i = self.ids(self.adj, self.n_layers)
        return u, i + self.ids.item.weight

    def calculate_loss(self, users, positives, negatives=None) -> torch.Tensor:
        u, i = self.forward()
        drop = self.target_dropout
        with torch.no_grad():  # target views: whole tables dropped, then the batch rows
            u_target = (u * drop.mask(u.shape, u))[users]
            i_target = (i * drop.mask(i.shape, i))[positives]
        u_online = self.predictor(select_rows(u, users))
        i_online = self.predictor(select_rows(i, positives))
        loss = ui_cosine_loss(u_online, i_target) + ui_cosine_loss(i_online, u_target)
        loss = loss + self.reg_weight * embedding_norm_loss(u, i)
        if self.modal is not None:
            cl = u.new_zeros(())
            for m in self.modal.modalities:
                f = self.modal(m, positives)
                with torch.no_grad():
                    f_target = f * drop.mask((self.n_items, f.shape[1]), f)[positives]
                f_online = self.predictor(f)
                cl = cl + ui_cosine_loss(f_online, i_target) + ui_cosine_loss(f_online, f_target)
            loss = loss + self.cl_weight * cl
        return loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.forward()
        return self.predictor(u), self.predictor(i)
