"""MMGCN (Wei et al., MM'19) as MMRec trains it: one GCN per modality over the user-item graph,
each with its own user preference table, averaged over the modalities.

Per modality m (MMRec's ``GCN``): x = rownorm([P_m; f_m(X_m)]) over users + items, where f_m is
Linear(d_m -> 256) for the modality in MMRec's ``v_feat`` role (image; ``dim_latent`` 256) and
the identity for the one in the ``t_feat`` role (text, or TikTok's audio: its raw features, a
preference table d_m wide). Then three layers (MMRec hard-codes three;
``n_layers`` is not read), each

    h = LeakyReLU(M (x W_l))          (Eq. 1, M = D^-1 A: ``aggr_mode`` mean, MMRec's fixed choice)
    x̂ = LeakyReLU(L_l x) + e_id       (Eq. 5, e_id the ID embeddings)
    x = LeakyReLU(G_l [h || x̂])       (the combination layer, concatenating)

and the representation is the mean over modalities of the last x; users and items are its
two blocks, the score their inner product. Loss: BPR (log sigmoid) plus ``reg_weight`` times
mean(e_id[u]² + e_id[i]²) over the batch's (user, item) pairs (users twice, positives and
negatives) and mean(P_image²).

MMRec quirks, each the default and a switch:
- ``train_id_preference: false``: the ID embeddings e_id and the preference tables P_m are plain
  tensors in MMRec, not parameters: they keep their random initialization (the optimizer never
  sees them, and the regularizer has no gradient). ``true`` trains them.
- ``concate: true``: MMRec sets ``concate = 'False'``, a non-empty string, so the combination
  layer always concatenates; ``false`` gives the element-wise form LeakyReLU(G_l h + x̂).
- ``ignore_n_layers: true``: three layers whatever ``n_layers`` says; ``false`` uses
  ``n_layers``.

Reference: Yinwei Wei, Xiang Wang, Liqiang Nie, Xiangnan He, Richang Hong, Tat-Seng Chua.
"MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation of
Micro-video." ACM MM 2019.

Differences from MMRec: evaluation recomputes the representation after the epoch (MMRec
scores with the one of the epoch's last training forward, one optimizer step older); the BPR
term is -log σ(x) computed as log-sigmoid (the same value, no overflow to inf); an item with no
training interaction gets 0 from the mean aggregation as in torch_geometric.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.aggregation import aggregation_graph
from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import batch_rows, bpr_loss, check_features
from mmfast.nn.roles import visual_textual_roles
from mmfast.ops import SparseGraph, select_rows, spmm


class MMGCNModalityGCN(nn.Module):
    """One modality's GCN of MMGCN (see the module docstring): preference table, optional
    feature MLP, ``layers`` aggregation/combination layers, MMRec's initialization (xavier-normal
    aggregation weights W_l, L_l and the first G_1; PyTorch's default for the later G_l)."""

    def __init__(self, n_users: int, in_dim: int, dim: int, *, latent: int | None,
                 layers: int = 3, concat: bool = True, trainable_preference: bool = False) -> None:
        super().__init__()
        width = latent or in_dim
        preference = nn.init.xavier_normal_(torch.empty(n_users, width))
        if trainable_preference:
            self.preference = nn.Parameter(preference)
        else:
            self.register_buffer("preference", preference)
        self.mlp = nn.Linear(in_dim, latent) if latent else None
        self.concat = concat
        self.conv = nn.ParameterList()
        self.linear, self.combine = nn.ModuleList(), nn.ModuleList()
        for layer in range(layers):
            w_in = width if layer == 0 else dim
            self.conv.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(w_in, w_in))))
            lin = nn.Linear(w_in, dim)
            nn.init.xavier_normal_(lin.weight)
            self.linear.append(lin)
            g = nn.Linear(w_in + dim if concat else w_in, dim)
            if layer == 0:
                nn.init.xavier_normal_(g.weight)
            self.combine.append(g)

    def forward(self, adj: SparseGraph, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The modality's last-layer representation [n_users + n_items, dim]."""
        items = self.mlp(features) if self.mlp is not None else features
        x = F.normalize(torch.cat([self.preference, items]))
        for w, lin, g in zip(self.conv, self.linear, self.combine):
            h = F.leaky_relu(spmm(adj, x @ w))
            x_hat = F.leaky_relu(lin(x)) + ids
            x = F.leaky_relu(g(torch.cat([h, x_hat], dim=1)) if self.concat else g(h) + x_hat)
        return x


@register()
class MMGCN(Recommender):
    """MMGCN. Config: see ``configs/model/MMGCN.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.roles = visual_textual_roles(dataset.modalities, "MMGCN")
        self.modalities = list(self.roles.values())
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, "MMGCN")
        for m, x in raw.items():  # frozen inputs, not saved in checkpoints
            self.register_buffer(f"raw_{m}", x.to(self.device), persistent=False)
        dim = int(config["embedding_size"])
        trainable = bool(config["train_id_preference"])
        layers = 3 if bool(config["ignore_n_layers"]) else int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        # MMRec's v_feat GCN maps the features to dim_latent (256) by an MLP; t_feat's has none.
        self.gcns = nn.ModuleDict({
            m: MMGCNModalityGCN(self.n_users, raw[m].shape[1], dim,
                                latent=int(config["dim_latent"]) if role == "v" else None,
                                layers=layers, concat=bool(config["concate"]),
                                trainable_preference=trainable)
            for role, m in self.roles.items()})
        ids = nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, dim))
        if trainable:
            self.id_embedding = nn.Parameter(ids)
        else:
            self.register_buffer("id_embedding", ids)
        self.adj = aggregation_graph(dataset.train, str(config["aggr_mode"])).to(self.device)

    def forward(self) -> torch.Tensor:
        """The mean over modalities of the GCN outputs, [n_users + n_items, dim]."""
        total = None
        for m in self.modalities:
            out = self.gcns[m](self.adj, getattr(self, f"raw_{m}"), self.id_embedding)
            total = out if total is None else total + out
        return total / len(self.modalities)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        rep = self.forward()
        u, i = rep[: self.n_users], rep[self.n_users:]
        loss = bpr_loss(*batch_rows(u, i, users, positives, negatives))
        ids = self.id_embedding
        u_ids = select_rows(ids, users)
        pairs = torch.cat([u_ids, u_ids]).square() + torch.cat(
            [ids[positives + self.n_users], ids[negatives + self.n_users]]).square()
        reg = pairs.mean()
        if "v" in self.roles:  # MMRec regularizes the v_feat GCN's preferences only
            reg = reg + self.gcns[self.roles["v"]].preference.square().mean()
        return loss + self.reg_weight * reg

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.forward()
        return rep[: self.n_users], rep[self.n_users:]
