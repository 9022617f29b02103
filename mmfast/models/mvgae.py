"""MVGAE (Multi-modal Variational Graph Auto-Encoder, IEEE TMM'21) as MMRec trains it.

Per modality m (visual, textual; TikTok's audio plays the textual role) and for a collaborative
"modality" c (a fixed random item table), an encoder over the n_users + n_items nodes:

    x = norm_rows([p ‖ MLP(f^m)])                      p: a user table, MLP: Linear(d_m, 128)
    conv(x) = dropout_0.1(norm_rows(P x W + b))         P = D^-1 (A + I), mean over self + neighbours
    x <- lrelu(g_l(lrelu(conv_l(x))))                   for l = 1..n_layers
    mu = g_4(lrelu(conv_4(x))) + lrelu(lin_4(x))
    logvar = g_5(lrelu(conv_5(x))) + lrelu(lin_5(x))

(lrelu: leaky ReLU, slope 0.01). The Gaussians are fused by products of experts,
(mu, logvar) = PoE(PoE(v, t), c), PoE((mu_k, logvar_k)_k): precision T_k = 1 / (exp(logvar_k) +
1e-8), mu = Σ mu_k T_k / Σ T_k, logvar = -log Σ T_k. Sampling z = mu + 0.1 ε exp(logvar / 2)
(logvar clamped at 10; z = mu in evaluation).

Loss over a batch of (u, i+, i-): for each of z (fused), z_v, z_t, z_c (each drawn from its own
Gaussian) the reconstruction -Σ_batch log2 σ(σ(<s_u, s_i+>) - σ(max_b <s_u, s_nb>)), s = σ(z)
(the hardest of the batch's negatives for each user), plus ``beta`` times the KL divergence of
the same Gaussian to N(0, I), -1/2 mean_nodes Σ_d (1 + logvar - mu² - exp(logvar)). Scores:
<σ(mu_u), σ(mu_i)>.

MMRec quirks, each the default and a switch:

- ``item_offset: false``: MMRec looks the batch's items up as node ids without adding n_users, so
  the reconstruction scores users against *user* rows (items enter only through the shared
  encoders). ``true`` indexes the item rows.
- ``eval_forward: false``: MMRec ranks with the embeddings of the last training forward (train
  mode: dropout on, sampled before the optimizer step), kept in the ``result_embed`` buffer;
  ``true`` recomputes σ(mu) in evaluation mode.
- ``train_user_tables: false``: the encoders' user tables p and the collaborative item table are
  plain tensors in MMRec, never trained (buffers here, saved in checkpoints); ``true`` makes
  them parameters.
- ``sigmoid_decode: true``: MMRec hard-codes its "amazon" branch (σ on z before decoding and on
  the scores) for every dataset; ``false`` decodes z itself and scores with mu.

Reference: Jing Yi and Zhenzhong Chen. "Multi-modal Variational Graph Auto-encoder for
Recommendation Systems." IEEE Transactions on Multimedia, 2021.

Differences from MMRec: MMRec also builds ``linear_layer1``/``linear_layer2`` (and the second
layer when ``n_layers`` is 1), whose outputs it never uses (``concate`` is False); they are left
out. The batch's max over negatives is one [B, B] matrix product where MMRec materializes a
[B, B, d] tensor.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.rw_adjacency import random_walk_adjacency
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.features import check_features
from mmfast.nn.roles import image_text_roles
from mmfast.ops import SparseGraph, select_rows, spmm

MAX_LOGVAR = 10.0
LATENT = 128  # MMRec's dim_latent of every encoder
CONV_DROPOUT = 0.1
SAMPLE_SCALE = 0.1  # z = mu + 0.1 eps sigma


def _xavier_linear(d_in: int, d_out: int, xavier: bool = True) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    if xavier:
        nn.init.xavier_normal_(layer.weight)
    return layer


class MeanConv(nn.Module):
    """norm_rows(P x W + b), then dropout 0.1: torch_geometric's mean aggregation over each node
    and its neighbours (P = D^-1 (A + I)) with MMRec's ``BaseModel`` update."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = d_in ** -0.5
        self.weight = nn.Parameter(torch.empty(d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))
        nn.init.xavier_normal_(self.weight)

    def forward(self, graph: SparseGraph, x: torch.Tensor) -> torch.Tensor:
        out = F.normalize(spmm(graph, x @ self.weight) + self.bias, dim=-1)
        return F.dropout(out, CONV_DROPOUT, self.training)


class VariationalEncoder(nn.Module):
    """One modality's Gaussian encoder (mu, logvar) over users + items (module docstring)."""

    def __init__(self, n_users: int, features: torch.Tensor, dim: int, n_layers: int,
                 trainable_users: bool, own_features: bool = False) -> None:
        """``own_features``: the features are the model's own random table (the collaborative
        one), saved in checkpoints and trained with ``trainable_users``; otherwise dataset
        features, frozen and rebuilt from the dataset."""
        super().__init__()
        preference = nn.init.xavier_normal_(torch.rand(n_users, LATENT))
        if trainable_users:
            self.preference = nn.Parameter(preference)
        else:
            self.register_buffer("preference", preference)
        if own_features and trainable_users:
            self.features = nn.Parameter(features)
        else:
            self.register_buffer("features", features, persistent=own_features)
        self.mlp = _xavier_linear(features.shape[1], LATENT)
        self.convs = nn.ModuleList()
        self.gates = nn.ModuleList()
        for layer in range(n_layers):
            self.convs.append(MeanConv(LATENT if layer == 0 else dim, dim))
            # MMRec leaves the second layer's g at its default init.
            self.gates.append(_xavier_linear(dim, dim, xavier=layer != 1))
        self.mu_conv, self.mu_lin, self.mu_gate = (MeanConv(dim, dim), _xavier_linear(dim, dim),
                                                   _xavier_linear(dim, dim))
        self.lv_conv, self.lv_lin, self.lv_gate = (MeanConv(dim, dim), _xavier_linear(dim, dim),
                                                   _xavier_linear(dim, dim))

    def forward(self, graph: SparseGraph) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.normalize(torch.cat([self.preference, self.mlp(self.features)]), dim=1)
        for conv, gate in zip(self.convs, self.gates):
            x = F.leaky_relu(gate(F.leaky_relu(conv(graph, x))))
        mu = self.mu_gate(F.leaky_relu(self.mu_conv(graph, x))) + F.leaky_relu(self.mu_lin(x))
        logvar = self.lv_gate(F.leaky_relu(self.lv_conv(graph, x))) + F.leaky_relu(self.lv_lin(x))
        return mu, logvar


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, eps: float = 1e-8
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Gaussian of experts stacked on dim 0: precision-weighted mean, summed precision."""
    precision = 1.0 / (torch.exp(logvar) + eps)
    total = precision.sum(0)
    return (mu * precision).sum(0) / total, torch.log(1.0 / total)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-1/2 mean over rows of Σ_d (1 + logvar - mu² - exp(logvar)), logvar clamped at 10."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1))


@register()
class MVGAE(Recommender):
    """Multi-modal VGAE. Config: ``embedding_size``, ``n_layers``, ``beta``, ``item_offset``,
    ``eval_forward``, ``train_user_tables``, ``sigmoid_decode``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.modalities = image_text_roles(dataset.modalities, "MVGAE", need=2)
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, "MVGAE")
        dim, n_layers = int(config["embedding_size"]), int(config["n_layers"])
        if n_layers < 1:
            raise ValueError(f"MVGAE: n_layers must be >= 1, got {n_layers}")
        self.beta = float(config["beta"])
        self.item_offset = bool(config.get("item_offset", False))
        self.eval_forward = bool(config.get("eval_forward", False))
        self.sigmoid_decode = bool(config.get("sigmoid_decode", True))
        trainable = bool(config.get("train_user_tables", False))
        # MMRec's order of draws: the collaborative table, the encoders (v, t, c), result_embed.
        collaborative = nn.init.xavier_normal_(torch.rand(self.n_items, dim))
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            self.encoders[m] = VariationalEncoder(self.n_users, raw[m], dim, n_layers, trainable)
        self.encoders["collaborative"] = VariationalEncoder(
            self.n_users, collaborative, dim, n_layers, trainable, own_features=True)
        self.register_buffer("result_embed",
                             nn.init.xavier_normal_(torch.rand(self.n_users + self.n_items, dim)))
        self.graph = random_walk_adjacency(dataset.train).to(self.device)
        self.to(self.device)

    # ------------------------------------------------------------------ forward
    def encode(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{modality or "collaborative": (mu, logvar)} and "fused": PoE(PoE(v, t), c)."""
        out = {name: enc(self.graph) for name, enc in self.encoders.items()}
        v, t = (out[m] for m in self.modalities)
        c = out["collaborative"]
        mu, logvar = product_of_experts(torch.stack([v[0], t[0]]), torch.stack([v[1], t[1]]))
        out["fused"] = product_of_experts(torch.stack([mu, c[0]]), torch.stack([logvar, c[1]]))
        return out

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return mu
        std = torch.exp(logvar.clamp(max=MAX_LOGVAR) * 0.5)
        return mu + torch.randn_like(logvar) * SAMPLE_SCALE * std

    def scoring_table(self, mu: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(mu) if self.sigmoid_decode else mu

    def reconstruction(self, z, users, positives, negatives) -> torch.Tensor:
        s = torch.sigmoid(z) if self.sigmoid_decode else z
        shift = self.n_users if self.item_offset else 0
        su = select_rows(s, users)
        pos = torch.sigmoid((su * s[positives + shift]).sum(-1))
        neg = torch.sigmoid((su @ s[negatives + shift].T).max(dim=1).values)
        return -torch.sum(torch.log2(torch.sigmoid(pos - neg)))

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        out = self.encode()
        mu, logvar = out["fused"]
        z = self.sample(mu, logvar)
        with torch.no_grad():
            self.result_embed.copy_(self.scoring_table(mu))
        parts = [(z, mu, logvar)]
        for name in [*self.modalities, "collaborative"]:
            m_mu, m_lv = out[name]
            parts.append((self.sample(m_mu, m_lv), m_mu, m_lv))
        loss = torch.zeros((), dtype=mu.dtype, device=mu.device)
        for z_k, mu_k, lv_k in parts:
            loss = loss + self.reconstruction(z_k, users, positives, negatives) \
                + self.beta * kl_to_standard_normal(mu_k, lv_k)
        return loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.result_embed
        if self.eval_forward:
            table = self.scoring_table(self.encode()["fused"][0])
        return table[:self.n_users], table[self.n_users:]
