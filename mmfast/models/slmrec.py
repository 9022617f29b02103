"""SLMRec (Tao et al., TMM 2022): LightGCN on three item inputs (ID, image, text) sharing the
user IDs, fused by concatenation and one linear layer per side, trained with an in-batch
InfoNCE and a self-supervised task, as MMRec trains it.

Forward: x^m = x̂^m W_m + b_m on the L2-normalized, frozen features (xavier-uniform W_m);
for each branch b in (ID, image, text) H_b = mean of layers 0..L of Â [E_user; E_item^b]
(E_item^ID the item IDs, E_item^m = x^m); z_u = W_u [H_ID,u ‖ H_img,u ‖ H_txt,u] + b_u and
z_i = W_i [H_ID,i ‖ H_img,i ‖ H_txt,i] + b_i (``mm_fusion_mode: concat``). Score: <z_u, z_i>.

Loss on the batch's (user, positive) pairs, no negatives:
  L = NCE(z_u, z_i; temp) + ssl_alpha · L_ssl,
NCE(a, b; τ) = mean_r −log softmax_s(cos(a_r, b_s)/τ)[r] (:func:`mmfast.ops.solosim_loss`).
L_ssl by ``ssl_task``:
  ``FAC`` (fine and coarse, MMRec's default): on the batch's positive items, with linear heads
    g (xavier-uniform), a = g_i→iv(H_ID,i), L = NCE'(a, g_v→iv(H_img,i)) +
    NCE'(g_iva→ivat(g_iv→iva(a)), g_t→ivat(H_txt,i)), NCE' the same InfoNCE on raw dot products
    (no normalization), temperature ``ssl_temp``; the last two heads map to d/2.
  ``FD`` (feature dropout): two views from :func:`mmfast.nn.ssl_views.dropout_chain_views`
    (inverted dropout ``dropout_rate`` after every propagation step), fused as above;
    L = NCE(users_1, users_2; ssl_temp) + NCE(items_1, items_2; ssl_temp) on the batch rows.
  ``FM`` (feature masking): as FD without dropout, view k with the item input of one branch
    zeroed, the two branches distinct (:class:`mmfast.nn.ssl_views.BranchMasking`).
  ``FD+FM``: FM with FD's dropout.
Dropout masks and masked branches come from the model's own random streams (saved on resume).

Config (MMRec's keys): ``recdim``, ``layer_num``, ``ssl_task``, ``ssl_temp``, ``ssl_alpha``,
``temp``, ``dropout_rate``, ``mm_fusion_mode`` (concat | mean), ``init`` (xavier | normal),
``adj_type`` (pre | plain | norm | gcmc | mean), ``reg`` (read by nothing, as in MMRec);
``ssl_view_swap`` (mmfast's switch for MMRec's crossed view lists in FD/FM, default true).
Two modalities: image plus one other (TikTok: audio takes text's role).

Differences from MMRec: evaluation recomputes z after the epoch (MMRec scores with the vectors
of the epoch's last training forward, one optimizer step older; its sigmoid on the scores does
not change a ranking). MMRec's ``FD``, ``FM`` and ``FD+FM`` raise (they read an audio branch
the model never builds), as do ``mm_fusion_mode: mean`` (the fusion layer is sized for concat)
and ``init: normal`` (a misspelled attribute); here they run as the code reads without audio:
three branches, fusion layers sized for the fused width, both ID tables N(0, 0.1²). The unused
head ``g_a_iva`` is not built. Â (``adj_type: pre``) is mmfast's cached D^-1/2 A D^-1/2 without
MMRec's +1e-8 on the degrees (no effect at float32 precision for degrees >= 1).

Reference: Zhulin Tao, Xiaohao Liu, Yewei Xia, Xiang Wang, Lifang Yang, Xianglin Huang,
Tat-Seng Chua. "Self-supervised Learning for Multimedia Recommendation." IEEE Transactions on
Multimedia, 2022.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.interactions import Interactions
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.separation import ordered_modalities
from mmfast.nn.ssl_views import (
    BranchMasking,
    DropoutView,
    dropout_chain_views,
    mask_item_branches,
)
from mmfast.ops import SparseGraph, propagate, select_rows, solosim_loss

SSL_TASKS = ("FAC", "FD", "FM", "FD+FM")
FUSION_MODES = ("concat", "mean")
INITS = ("xavier", "normal")
ADJ_TYPES = ("pre", "plain", "norm", "gcmc", "mean")


def slmrec_adjacency(train: Interactions, adj_type: str) -> SparseGraph:
    """SLMRec's ``adj_type`` forms of the (n_users + n_items)² bipartite matrix A (binary, users
    first) other than ``pre`` (Â, :meth:`Dataset.norm_adj`): ``plain`` A; ``norm``
    D̃^-1 (A + I) with D̃ the row sums of A + I; ``gcmc`` D^-1 A (rows of isolated nodes zero);
    ``mean`` D^-1 A + I. Built vectorized from the training pairs (O(nnz), not cached)."""
    users, items = train.users(), train.items + train.n_users
    n = train.n_users + train.n_items
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    vals = torch.ones(rows.numel(), dtype=torch.float64)
    if adj_type in ("norm",):
        loop = torch.arange(n)
        rows, cols = torch.cat([rows, loop]), torch.cat([cols, loop])
        vals = torch.cat([vals, torch.ones(n, dtype=torch.float64)])
    if adj_type != "plain":
        deg = torch.bincount(rows, weights=vals, minlength=n)
        inv = torch.where(deg > 0, 1.0 / deg.clamp(min=1e-300), torch.zeros_like(deg))
        vals = vals * inv[rows]
    if adj_type == "mean":
        loop = torch.arange(n)
        rows, cols = torch.cat([rows, loop]), torch.cat([cols, loop])
        vals = torch.cat([vals, torch.ones(n, dtype=torch.float64)])
    return SparseGraph.from_coo(rows, cols, vals.float(), (n, n),
                                is_symmetric=adj_type == "plain")


@register()
class SLMRec(Recommender):
    """SLMRec (module docstring). Config: ``configs/model/SLMRec.yaml``."""

    uses_negatives: ClassVar[bool] = False  # trains on (user, positive) pairs only

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        self.modalities = ordered_modalities(dataset.modalities, "image", name)
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        dim = int(config["recdim"])
        self.dim, self.n_layers = dim, int(config["layer_num"])
        self.temp, self.ssl_temp = float(config["temp"]), float(config["ssl_temp"])
        self.ssl_alpha = float(config["ssl_alpha"])
        self.ssl_task = str(config["ssl_task"]).strip()
        self.fusion = str(config["mm_fusion_mode"])
        self.view_swap = bool(config.get("ssl_view_swap", True))
        init, adj_type = str(config["init"]), str(config["adj_type"])
        for key, value, allowed in (("ssl_task", self.ssl_task, SSL_TASKS),
                                    ("mm_fusion_mode", self.fusion, FUSION_MODES),
                                    ("init", init, INITS), ("adj_type", adj_type, ADJ_TYPES)):
            if value not in allowed:
                raise ValueError(f"{name}: {key} must be one of {allowed}, got {value!r}")
        for key, value in (("temp", self.temp), ("ssl_temp", self.ssl_temp)):
            if not value > 0:
                raise ValueError(f"{name}: {key} must be positive, got {value!r}")

        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)  # xavier-uniform
        if init == "normal":
            nn.init.normal_(self.ids.user.weight, std=0.1)
            nn.init.normal_(self.ids.item.weight, std=0.1)
        # MMRec L2-normalizes each modality's rows once and keeps them fixed.
        self.dense = ModalityProjection({m: F.normalize(x, dim=1) for m, x in raw.items()}, dim)
        for lin in self.dense.projections.values():
            nn.init.xavier_uniform_(lin.weight)
        self.n_branches = 1 + len(self.modalities)
        fused = dim * self.n_branches if self.fusion == "concat" else dim
        self.item_fuse = nn.Linear(fused, dim)
        self.user_fuse = nn.Linear(fused, dim)
        nn.init.xavier_uniform_(self.item_fuse.weight)
        nn.init.xavier_uniform_(self.user_fuse.weight)
        graph = dataset.norm_adj() if adj_type == "pre" else slmrec_adjacency(dataset.train, adj_type)
        self.adj = graph.to(self.device)

        self.dropout: DropoutView | None = None
        self.masking: BranchMasking | None = None
        if self.ssl_task == "FAC":
            self.heads = nn.ModuleDict({
                "i_iv": nn.Linear(dim, dim), "v_iv": nn.Linear(dim, dim),
                "iv_iva": nn.Linear(dim, dim), "iva_ivat": nn.Linear(dim, dim // 2),
                "t_ivat": nn.Linear(dim, dim // 2)})
            for head in self.heads.values():
                nn.init.xavier_uniform_(head.weight)
        if self.ssl_task in ("FD", "FD+FM"):
            self.dropout = DropoutView(float(config["dropout_rate"]),
                                       self.add_generator("feature_dropout"))
        if self.ssl_task in ("FM", "FD+FM"):
            self.masking = BranchMasking(self.n_branches, self.add_generator("feature_masking"))

    # ------------------------------------------------------------------ forward
    def ego(self) -> torch.Tensor:
        """[n_users + n_items, B·d]: column block b is [E_user; E_item^b], b = ID, modalities."""
        items = [self.ids.item.weight] + [self.dense(m) for m in self.modalities]
        users = self.ids.user.weight.repeat(1, self.n_branches)
        return torch.cat([users, torch.cat(items, dim=1)])

    def branches(self, ego: torch.Tensor | None = None) -> torch.Tensor:
        """H: the LightGCN mean of layers 0..L of every branch, [n_users + n_items, B·d] (the
        branches share one fused propagation: Â acts on each column block alike)."""
        return propagate(self.adj, self.ego() if ego is None else ego, self.n_layers, "mean")

    def fuse(self, layer: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
        """mm_fusion: concat (the blocks side by side, as stored) or mean, then ``layer``."""
        if self.fusion == "mean":
            rows = rows.reshape(rows.shape[0], self.n_branches, self.dim).mean(dim=1)
        return layer(rows)

    def calculate_loss(self, users, positives, negatives=None) -> torch.Tensor:
        ego = self.ego()
        h = self.branches(ego)
        h_users, h_items = h[: self.n_users], h[self.n_users:]
        z_u = self.fuse(self.user_fuse, select_rows(h_users, users))
        z_i = self.fuse(self.item_fuse, select_rows(h_items, positives))
        main = solosim_loss(z_u, z_i, self.temp, normalize=True)
        return main + self.ssl_alpha * self.ssl_loss(ego, h_items, users, positives)

    def ssl_loss(self, ego, h_items, users, positives) -> torch.Tensor:
        if self.ssl_task == "FAC":
            return self.fine_and_coarse(select_rows(h_items, positives))
        ego_1 = ego_2 = ego
        if self.masking is not None:
            keep_1, keep_2 = self.masking.keep()
            ego_1 = mask_item_branches(ego, self.n_users, keep_1)
            ego_2 = mask_item_branches(ego, self.n_users, keep_2)
        view_1, view_2 = dropout_chain_views(self.adj, ego_1, ego_2, self.n_layers, self.dropout,
                                             swap=self.view_swap)
        nu = self.n_users
        u_1 = self.fuse(self.user_fuse, view_1[:nu][users])
        u_2 = self.fuse(self.user_fuse, view_2[:nu][users])
        i_1 = self.fuse(self.item_fuse, view_1[nu:][positives])
        i_2 = self.fuse(self.item_fuse, view_2[nu:][positives])
        return (solosim_loss(u_1, u_2, self.ssl_temp, normalize=True)
                + solosim_loss(i_1, i_2, self.ssl_temp, normalize=True))

    def fine_and_coarse(self, h_pos: torch.Tensor) -> torch.Tensor:
        """FAC on the batch's positive items: ID against image in a d-space, then (ID, image)
        against text in a d/2-space, raw dot products over ``ssl_temp``."""
        d, g = self.dim, self.heads
        ids, image, text = h_pos[:, :d], h_pos[:, d:2 * d], h_pos[:, 2 * d:3 * d]
        a = g["i_iv"](ids)
        v_loss = solosim_loss(a, g["v_iv"](image), self.ssl_temp, normalize=False)
        coarse = g["iva_ivat"](g["iv_iva"](a))
        t_loss = solosim_loss(coarse, g["t_ivat"](text), self.ssl_temp, normalize=False)
        return v_loss + t_loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.branches()
        return (self.fuse(self.user_fuse, h[: self.n_users]),
                self.fuse(self.item_fuse, h[self.n_users:]))
