"""MGCN (Yu et al., MM'23): multi-view graph convolution with behaviour-guided purifiers and a
behaviour-aware fuser, as MMRec trains it (AlignRec derives from it).

Forward (all users and items, every batch): for each of the two modalities v and t,
x_m = W_m f_m + b_m (the raw tables f_m fine-tuned, as MMRec's
``nn.Embedding.from_pretrained(freeze=False)``); the purifier p_m = e^id ⊙ σ(G_m x_m + g_m)
(Eq. 2, :class:`mmfast.nn.BehaviorPurifier`); the item view p_m <- S̃_m^L p_m on the frozen G3
kNN graph of f_m (L = ``n_layers``), users lifted by R̂ (Eq. 6), E_m = [R̂ p_m; p_m]. The
user-item view H = mean of layers 0..``n_ui_layers`` of LightGCN on Â. The fuser: attention
weights a = softmax_m(q(E_m)) with the shared query q = Linear-tanh-Linear (Eq. 10-11,
:class:`mmfast.nn.ModalityFusion` ``attn``), common C = Σ_m a_m E_m, specific
Ê_m = σ(P_m H + b) ⊙ (E_m - C), side M = (Ê_v + Ê_t + C) / 3, final Z = H + M.
Loss: BPR (log-sigmoid) on Z + ``reg_weight`` ½(|z_u|² + |z_i+|² + |z_i-|²) / ``train_batch_size``
(the configured size, also for the last smaller batch, as MMRec) + ``cl_loss`` (NCE(M_I, H_I)
over the positives' rows + NCE(M_U, H_U) over the batch users' rows): in-batch InfoNCE, tau 0.2,
one direction, duplicate rows counted as negatives (:func:`mmfast.ops.solosim_loss`); the loss is
:func:`mmfast.nn.multiview.multiview_loss`, which SMORE shares.

Plug-in views (``+BMA``/``+SEA``): behaviour = H (users, items), modal = M (users, items),
modal features = the projected x_m.

Reference: Penghang Yu, Zhiyi Tan, Guanming Lu, Bing-Kun Bao. "Multi-View Graph Convolutional
Network for Multimedia Recommendation." ACM MM 2023 (MMRec's ``models/mgcn.py``).

Differences from MMRec: none in the computation (a zero feature row has similarity 0 in the
frozen graph where MMRec's would be NaN). MMRec's YAML key ``lambda_coeff`` is kept and unused,
as in MMRec.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import register
from mmfast.nn.alignment import BehaviorPurifier
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.lift import UserLift
from mmfast.nn.modal_fusion import ModalityFusion
from mmfast.nn.multiview import lifted_item_view, multiview_loss
from mmfast.nn.roles import image_text_roles


@register()
class MGCN(Recommender):
    """MGCN. Config: ``configs/model/MGCN.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "embedding_size"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.roles = image_text_roles(dataset.modalities, "MGCN", need=2)
        raw = {m: dataset.feature(m).float() for m in self.roles}
        check_features(raw, "MGCN")
        dim = int(config["embedding_size"])
        self.n_ui_layers, self.n_layers = int(config["n_ui_layers"]), int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.batch_size = int(config["train_batch_size"])
        self.cl_weight = float(config["cl_loss"])
        self.cl_temperature = float(config["cl_temperature"])
        # Built in MMRec's order, so a seed draws the same initial weights.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        self.modal = ModalityProjection(raw, dim,
                                        trainable=not bool(config.get("freeze_features", False)))
        self.fuse = ModalityFusion(dim, "attn")
        self.purifiers = nn.ModuleDict({m: BehaviorPurifier(dim) for m in self.roles})
        self.prefer = nn.ModuleDict({m: nn.Linear(dim, dim) for m in self.roles})
        k = int(config["knn_k"])
        # S̃_m: G3 of each modality's raw features, built once (cached on disk), frozen.
        for m in self.roles:
            graph = item_knn_graph(raw[m], k, style="mgcn", device=self.device).to(self.device)
            setattr(self, f"item_graph_{m}", graph)
        self.adj = dataset.norm_adj().to(self.device)
        self.lift = UserLift(dataset.user_item_lift().to(self.device))

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, M), each [n_users + n_items, d], users first: the user-item view and the side
        (fused modal) representation; Z = H + M."""
        content = torch.cat(self.ids(self.adj, self.n_ui_layers))
        branches = []
        for m in self.roles:
            p = self.purifiers[m](self.ids.item.weight, self.modal(m))
            branches.append(
                lifted_item_view(getattr(self, f"item_graph_{m}"), p, self.n_layers, self.lift))
        common = self.fuse(branches)
        side = common
        for m, e in zip(self.roles, branches):
            side = side + torch.sigmoid(self.prefer[m](content)) * (e - common)
        return content, side / 3

    def modal_feature_dims(self) -> dict[str, int]:
        """Widths of the per-modality item features (``+SEA`` splits them in half)."""
        return {m: self.modal.projections[m].out_features for m in self.roles}

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        content, side = self.views()
        loss = multiview_loss(content, side, users, positives, negatives, n_users=self.n_users,
                              reg_weight=self.reg_weight, batch_size=self.batch_size,
                              cl_weight=self.cl_weight, temperature=self.cl_temperature)
        nu = self.n_users
        views = PluginViews(
            behavior=(content[:nu], content[nu:]), modal=(side[:nu], side[nu:]),
            modal_features=lambda rows=None: {m: self.modal(m, rows) for m in self.roles})
        return loss, views

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        content, side = self.views()
        z = content + side
        return z[: self.n_users], z[self.n_users:]
