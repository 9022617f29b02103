"""PGL (Principal Graph Learning, AAAI'25) as MMRec trains it: LightGCN over a principal subgraph
of the user-item graph, items carried by their modality features, plus a frozen item kNN line.

Forward on a user-item graph G: users e_u = [e_u^visual ‖ e_u^textual] (two ID tables),
items x_i = [norm(W_v v_i + b_v) ‖ norm(W_t t_i + b_t)] (the raw feature tables fine-tuned,
rows L2-normalized per modality; TikTok's audio plays the textual role); h = S^L_mm x (S the
frozen FREEDOM-style kNN graph, image weight ``mm_image_weight``); [u; i] = mean of layers
0..``n_ui_layers`` of G^l [e; x]; the item vector is i + h.

Training graph, by ``mode``:

- ``local`` (MMRec's default): every epoch keeps ``edge_keep`` = 30 % of the training edges,
  drawn without replacement with probability proportional to 1/sqrt(d_u d_i), and
  re-normalizes them symmetrically (FREEDOM's degree-sensitive pruning, the share kept fixed);
- ``global``: the fixed principal subgraph M of :mod:`mmfast.data.principal_graph` (truncated
  SVD of rank ``embedding_size`` of the normalized adjacency).

Evaluation uses the full normalized adjacency. Loss: BPR (log-sigmoid form) on (u, i + h) plus
``reg_weight`` times the mean of two self-InfoNCE terms (temperature 0.2), each between two
dropout (``dropout``) views of the batch's user rows, resp. positive item rows.

Reference: Penghang Yu, Zhiyi Tan, Guanming Lu, Bing-Kun Bao. "Mind Individual Information!
Principal Graph Learning for Multimedia Recommendation." AAAI 2025.

Differences from MMRec: the SVD of ``global`` mode comes from SciPy's ARPACK on the symmetric
matrix (``sparsesvd`` no longer builds), the same decomposition up to rounding. The contrastive
term is skipped when ``reg_weight`` is 0 (MMRec computes it and multiplies by 0; only the
dropout draws differ). The edge-sampling weights use the exact degrees where MMRec adds 1e-7.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph, modality_weights
from mmfast.data.principal_graph import principal_subgraph
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import batch_rows, bpr_loss
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.roles import image_text_roles
from mmfast.ops import SparseGraph, propagate, solosim_loss

MODES = ("local", "global")
CL_TEMPERATURE = 0.2


@register()
class PGL(Recommender):
    """Principal Graph Learning. Config: ``embedding_size``, ``feat_embed_dim``, ``n_mm_layers``,
    ``n_ui_layers``, ``knn_k``, ``mm_image_weight``, ``dropout``, ``reg_weight``, ``mode``,
    ``edge_keep``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.mode = str(config["mode"])
        if self.mode not in MODES:
            raise ValueError(f"PGL: mode must be one of {MODES}, got {self.mode!r}")
        d, d_feat = int(config["embedding_size"]), int(config["feat_embed_dim"])
        if d != d_feat:
            raise ValueError(f"PGL: embedding_size ({d}) and feat_embed_dim ({d_feat}) must be "
                             "equal (users and items share the user-item graph)")
        self.modalities = image_text_roles(dataset.modalities, "PGL", need=2)
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, "PGL")
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.dropout = float(config["dropout"])
        # MMRec's order of draws: textual table, visual table, Xavier on visual, then textual.
        user_text = nn.Embedding(self.n_users, d)
        user_image = nn.Embedding(self.n_users, d)
        nn.init.xavier_uniform_(user_image.weight)
        nn.init.xavier_uniform_(user_text.weight)
        self.user_tables = nn.ParameterList([user_image.weight, user_text.weight])
        self.modal = ModalityProjection(raw, d_feat, trainable=True)
        self.mm_adj = item_knn_graph(
            raw, int(config["knn_k"]), style="freedom",
            weights=modality_weights(self.modalities, float(config["mm_image_weight"])),
            device=self.device).to(self.device)
        keep = float(config.get("edge_keep", 0.3))
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"PGL: edge_keep must be in (0, 1], got {keep}")
        self.pruning = DegreeSensitivePruning(dataset.train, 1.0 - keep if keep < 1 else 0.0,
                                              self.device)
        self.pruning.keep = int(dataset.train.items.numel() * keep)  # MMRec: int(0.3 * nnz)
        self.full_adj = self.pruning.full()
        self.train_adj: SparseGraph = self.full_adj
        if self.mode == "global":
            self.train_adj = principal_subgraph(dataset.train, d).to(self.device)

    def pre_epoch_processing(self) -> None:
        if self.mode == "local":
            self.train_adj = self.pruning.sample()

    def item_inputs(self) -> torch.Tensor:
        """x = [norm(W_v v + b_v) ‖ norm(W_t t + b_t)] [n_items, 2 d]."""
        return torch.cat([F.normalize(self.modal(m)) for m in self.modalities], dim=1)

    def forward(self, adj: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.item_inputs()
        h = propagate(self.mm_adj, items, self.n_mm_layers, "last")
        users = torch.cat(list(self.user_tables), dim=1)
        out = propagate(adj, torch.cat([users, items]), self.n_ui_layers, "mean")
        u, i = out.split([self.n_users, self.n_items])
        return u, i + h

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i = self.forward(self.train_adj)
        ub, pb, nb = batch_rows(u, i, users, positives, negatives)
        loss = bpr_loss(ub, pb, nb)
        if self.reg_weight:
            loss = loss + self.reg_weight * 0.5 * (self.self_nce(ub) + self.self_nce(pb))
        return loss

    def self_nce(self, x: torch.Tensor) -> torch.Tensor:
        """InfoNCE (temperature 0.2) between two dropout views of the same rows."""
        a = F.dropout(x, self.dropout, self.training)
        b = F.dropout(x, self.dropout, self.training)
        return solosim_loss(a, b, CL_TEMPERATURE)

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(self.full_adj)
