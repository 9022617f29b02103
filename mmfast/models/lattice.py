"""LATTICE (Zhang et al., MM'21): a latent item-item graph learned from the projected modality
features, rebuilt every epoch, smooths the item ID embeddings; a collaborative-filtering line
(LightGCN by default) runs on the user-item graph.

Forward: x_m = W_m f_m + b_m for each modality m (the raw tables f_m fine-tuned, as MMRec's
``nn.Embedding.from_pretrained(freeze=False)``); the item graph
S = (1 - λ) D^-1/2 (Σ_m w_m kNN_k(cos x_m)) D^-1/2 + λ Σ_m w_m S̃_m with w = softmax(ω) and
S̃_m the frozen G3 graphs of the raw features (:class:`mmfast.nn.item_graph.LearnedItemGraph`);
h = S^L e_item (L = ``n_layers``); the CF line on P = D^-1 (A + I) (MMRec's self-looped,
row-normalized ``norm_adj``): ``lightgcn`` (mean of layers 0..len(weight_size)), ``ngcf``
(bi-interaction layers with message dropout, normalized layer outputs, mean) or ``mf`` (the ID
tables). User vector u; item vector i + h / ||h||. Loss: BPR (log-sigmoid) +
``reg_weight`` ½(|u|² + |i+|² + |i-|²) / ``train_batch_size`` (the configured size, also for the
last smaller batch, as MMRec).

When S is built (MMRec's ``build_item_graph`` flag): on the first batch of every epoch, with
gradients through the kept similarities (to the features, W_m and ω), and at every evaluation
(without); the other batches of an epoch reuse that graph as a constant, so W_m, the feature
tables and ω learn on one batch per epoch, as in MMRec. Each modality's top k is found without
gradients, in row blocks, and only the kept values are recomputed with gradients; nothing
items x items is ever built (MMRec multiplies a dense items x items S every batch) and nothing
is read back to the host inside a step.

Plug-in views (``+BMA``/``+SEA``): behaviour = the CF line (u, i); modal = (R̂ ĥ, ĥ) with
ĥ = h / ||h|| (LATTICE has no modal user vector, so users are lifted by R̂ as in MGCN); modal
features = the projected x_m.

Reference: Jinghao Zhang, Yanqiao Zhu, Qiang Liu, Shu Wu, Shuhui Wang, Liang Wang. "Mining
Latent Structures for Multimedia Recommendation." ACM MM 2021 (MMRec's ``models/lattice.py``).

Differences from MMRec: a row of the learned graph whose kept similarities sum to a negative
degree gets weight 0 (MMRec: NaN); a zero feature row has similarity 0 (MMRec: NaN); ties in
the top k go to the smaller item index; message dropout (``ngcf``) draws from the model's own
saved stream. With one modality ω is unused, as in MMRec.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.data.rw_adjacency import random_walk_adjacency
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import batch_rows, bpr_loss
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.item_graph import LearnedItemGraph
from mmfast.nn.lift import UserLift
from mmfast.nn.roles import image_text_roles
from mmfast.ops import SparseGraph, propagate, spmm

CF_MODELS = ("lightgcn", "ngcf", "mf")


@register()
class LATTICE(Recommender):
    """LATTICE. Config: ``configs/model/LATTICE.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "feat_embed_dim"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        roles = image_text_roles(dataset.modalities, "LATTICE")
        raw = {m: dataset.feature(m).float() for m in roles}
        check_features(raw, "LATTICE")
        self.cf_model = str(config["cf_model"])
        if self.cf_model not in CF_MODELS:
            raise ValueError(f"LATTICE: cf_model must be one of {CF_MODELS}, got {self.cf_model!r}")
        dim = int(config["embedding_size"])
        widths = [int(w) for w in config["weight_size"]]
        self.n_ui_layers, self.n_layers = len(widths), int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.batch_size = int(config["train_batch_size"])
        # Built in MMRec's order, so a seed draws the same initial weights.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        if self.cf_model == "ngcf":
            sizes = [dim] + widths
            self.gc, self.bi = nn.ModuleList(), nn.ModuleList()
            for a, b in zip(sizes[:-1], sizes[1:]):
                self.gc.append(nn.Linear(a, b))
                self.bi.append(nn.Linear(a, b))
            self.mess_dropout = [float(p) for p in config["mess_dropout"]]
            if len(self.mess_dropout) < self.n_ui_layers:
                raise ValueError(f"LATTICE: mess_dropout needs one rate per layer of weight_size "
                                 f"({self.n_ui_layers}), got {self.mess_dropout}")
            self.dropout_stream = self.add_generator("mess_dropout")
        self.modal = ModalityProjection(raw, int(config["feat_embed_dim"]),
                                        trainable=not bool(config.get("freeze_features", False)))
        k = int(config["knn_k"])
        # S̃_m: G3 of each modality's raw features, built once (cached on disk), frozen.
        frozen = {m: item_knn_graph(raw[m], k, style="mgcn", device=self.device).to(self.device)
                  for m in roles}
        self.item_graph = LearnedItemGraph(frozen, k, float(config["lambda_coeff"]))
        self.adj = random_walk_adjacency(dataset.train).to(self.device)
        self.lift = UserLift(dataset.user_item_lift().to(self.device))
        self.build_item_graph = True
        self._graph: SparseGraph | None = None

    # ------------------------------------------------------------------ the item graph
    def projected(self) -> dict[str, torch.Tensor]:
        """x_m [n_items, feat_embed_dim] of every modality."""
        return {m: self.modal(m) for m in self.item_graph.modalities}

    def pre_epoch_processing(self) -> None:
        """The epoch's first batch rebuilds S."""
        self.build_item_graph = True

    def item_line(self, build: bool) -> torch.Tensor:
        """h = S^L e_item; ``build``: S rebuilt from the current features, differentiably."""
        h = self.ids.item.weight
        if not build:
            return propagate(self._graph, h, self.n_layers, "last")
        graph = self.item_graph.build(self.projected())
        self._graph = graph.constant()
        for _ in range(self.n_layers):
            h = graph.multiply(h)
        return h

    # ------------------------------------------------------------------ the CF line
    def cf_line(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cf_model == "mf":
            return self.ids.user.weight, self.ids.item.weight
        if self.cf_model == "lightgcn":
            return self.ids(self.adj, self.n_ui_layers)
        ego = self.ids.ego()
        layers = [ego]
        for i in range(self.n_ui_layers):
            side = spmm(self.adj, ego)
            ego = F.leaky_relu(self.gc[i](side)) + F.leaky_relu(self.bi[i](ego * side))
            p = self.mess_dropout[i]
            if self.training and p > 0:
                keep = torch.rand(ego.shape, generator=self.dropout_stream, device=ego.device,
                                  dtype=ego.dtype) >= p
                ego = ego * keep / (1.0 - p)
            layers.append(F.normalize(ego, p=2, dim=1))
        out = torch.stack(layers, dim=1).mean(dim=1)
        return out[: self.n_users], out[self.n_users:]

    # ------------------------------------------------------------------ loss, views
    def modal_feature_dims(self) -> dict[str, int]:
        """Widths of the per-modality item features (``+SEA`` splits them in half)."""
        return {m: self.modal.projections[m].out_features for m in self.modal.modalities}

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        build, self.build_item_graph = self.build_item_graph, False
        h = F.normalize(self.item_line(build), p=2, dim=1)
        u_cf, i_cf = self.cf_line()
        items = i_cf + h
        u, p, n = batch_rows(u_cf, items, users, positives, negatives)
        loss = bpr_loss(u, p, n) + self.reg_weight * 0.5 * (
            u.square().sum() + p.square().sum() + n.square().sum()) / self.batch_size
        views = PluginViews(
            behavior=(u_cf, i_cf), modal=(self.lift(h), h),
            modal_features=lambda rows=None: {m: self.modal(m, rows)
                                              for m in self.item_graph.modalities})
        return loss, views

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MMRec's ``full_sort_predict``: S rebuilt from the current features."""
        h = F.normalize(self.item_line(True), p=2, dim=1)
        u, i = self.cf_line()
        return u, i + h
