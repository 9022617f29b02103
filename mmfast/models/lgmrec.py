"""LGMRec (Guo et al., AAAI'24): local graph embeddings on the user-item graph plus global
hypergraph embeddings with learnable hyperedges per modality, as MMRec trains it.

Needs two modalities (MMRec's visual and textual roles: ``image``, and ``text`` or TikTok's
``audio``), raw features x^v, x^t frozen.

Local (collaborative) graph embedding: E_cge = mean of layers 0..``n_ui_layers`` of Â over the
ID tables (LightGCN; ``cf_model: mf`` skips the propagation). Local modal graph embedding, per
modality m: items f^m = x^m W^m (no bias), users the mean of their training items' f^m
(R f^m / deg_u), then ``n_mm_layers`` steps of Â, last layer kept: E^m.
E_lge = E_cge + normalize(E^v) + normalize(E^t).

Global hypergraph embedding (:mod:`mmfast.nn.hypergraph`): memberships
H_I^m = GumbelSoftmax_tau(x^m V^m), H_U^m = GumbelSoftmax_tau(R x^m V^m) (V^m learnable
[d_m, ``hyper_num``], tau = 0.2), masked by dropout at ``keep_rate`` during training; then
``n_hyper_layer`` rounds of the hypergraph convolution from the items' E_cge:
(E_U^m, E_I^m) per modality, E_ghe = [E_U^v; E_I^v] + [E_U^t; E_I^t].
Final: E = E_lge + ``alpha`` normalize(E_ghe); scores are inner products.

Loss: BPR (-mean log sigmoid) on E, plus ``cl_weight`` times the hypergraph contrast
  sum_{u in batch} -log( exp(<ĥ^v_u, ĥ^t_u>/tau) / sum_{u'} exp(<ĥ^v_u, ĥ^t_u'>/tau) )
  + the same over the batch's positive items (ĥ the L2-normalized hypergraph embeddings, the
  denominator over every user, resp. item: a sum over the batch, not a mean),
(the hypergraph embeddings are memberships times A hyperedge vectors, so with A < d the
[B, N] logits are computed in that factored form, B N A multiply-adds instead of B N d),
plus ``reg_weight`` times the sum of the Frobenius norms of the batch rows of E (users,
positives, negatives) divided by the batch size (MMRec's EmbLoss form).

The Gumbel noise and the dropout masks come from the model's ``hyperedges`` stream, the
evaluation noise from ``hyperedges_eval``, so a resumed run draws the same values. MMRec's
Gumbel-softmax draws noise in evaluation too (``eval_noise: true``; false ranks with the
noiseless softmax).

Plug-ins (``loss_and_views``): the behaviour line is E_cge; the modal line is what the model
adds to it, E - E_cge = normalize(E^v) + normalize(E^t) + alpha normalize(E_ghe); the
per-modality item features are f^m = x^m W^m.

Reference: Zhiqiang Guo, Jianjun Li, Guohui Li, Chaoyang Wang, Si Shi, Bin Ruan. "LGMRec: Local
and Global Graph Learning for Multimodal Recommendation." AAAI 2024.

Differences from MMRec: MMRec recomputes its forward, and so draws new Gumbel noise, for every
evaluation batch of 4096 users; mmfast draws it once per evaluation (one table for every
user). The contrastive terms are computed as log-sum-exp minus the positive logit (the same
value as MMRec's exp / sum, without overflow).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import register
from mmfast.nn.bpr import bpr_loss, embedding_norm_loss, joined_batch_rows
from mmfast.nn.features import check_features
from mmfast.nn.hypergraph import HypergraphConv, gumbel_softmax, keep_dropout
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.roles import visual_textual
from mmfast.ops import propagate, select_rows, spmm

CF_MODELS = ("lightgcn", "mf")


def xavier_uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(*shape)))


def contrast_against_all(anchor: torch.Tensor, table: torch.Tensor, rows: torch.Tensor,
                         tau: float) -> torch.Tensor:
    """sum_b -log softmax_j(<â_b, t̂_j> / tau)[rows_b]: each anchor row against every row of
    ``table``, its positive the row ``rows_b`` (â, t̂ L2-normalized). LGMRec's
    ``ssl_triple_loss``. The [B, N] logits are built once and turned into the softmax in place,
    which the backward multiplies by (no autograd graph over [B, N] temporaries)."""
    return _ContrastAll.apply(F.normalize(anchor), F.normalize(table), rows, 1.0 / tau)


def contrast_against_factored(anchor: torch.Tensor, members: torch.Tensor, edges: torch.Tensor,
                              rows: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`contrast_against_all` for a table T = members @ edges ([N, A] @ [A, d]) of rank A:
    <â_b, t̂_j> = <â_b edges^T, members_j / ||T_j||>, so the [B, N] logits cost B N A
    multiply-adds instead of B N d (LGMRec's hypergraph embeddings, A = ``hyper_num``)."""
    norm = (members @ edges).norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _ContrastAll.apply(F.normalize(anchor) @ edges.T, members / norm, rows, 1.0 / tau)


class _ContrastAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, t, rows, scale):
        p = torch.mm(a, t.T).mul_(scale)                 # logits [B, N]
        top = p.amax(1, keepdim=True)
        p.sub_(top).exp_()
        total = p.sum(1, keepdim=True)
        p.div_(total)                                    # softmax
        positive = (a * t[rows]).sum(1) * scale
        ctx.save_for_backward(a, t, rows, p)
        ctx.scale = scale
        return ((top + total.log()).squeeze(1) - positive).sum()

    @staticmethod
    def backward(ctx, grad):
        a, t, rows, p = ctx.saved_tensors
        s = grad * ctx.scale                             # dL/dlogits = (softmax - onehot) g
        grad_a = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_a = (torch.mm(p, t) - t[rows]) * s
        if ctx.needs_input_grad[1]:
            grad_t = (torch.mm(p.T, a) - torch.zeros_like(t).index_add_(0, rows, a)) * s
        return grad_a, grad_t, None, None


@register()
class LGMRec(Recommender):
    """LGMRec (module docstring). Config: ``configs/model/LGMRec.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "feat_embed_dim"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        visual, textual = visual_textual(dataset.modalities, name, need_both=True)
        self.modalities = [visual, textual]
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        self.cf_model = str(config["cf_model"])
        if self.cf_model not in CF_MODELS:
            raise ValueError(f"{name}: cf_model must be one of {CF_MODELS}, got {self.cf_model!r}")
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.keep_rate = float(config["keep_rate"])
        if not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"{name}: keep_rate must lie in (0, 1], got {self.keep_rate}")
        self.alpha = float(config["alpha"])
        self.cl_weight = float(config["cl_weight"])
        self.reg_weight = float(config["reg_weight"])
        self.tau = float(config["tau"])
        if self.tau <= 0:
            raise ValueError(f"{name}: tau must be positive, got {self.tau}")
        self.eval_noise = bool(config["eval_noise"])
        hyper_num, feat_dim = int(config["hyper_num"]), int(config["feat_embed_dim"])
        dim = int(config["embedding_size"])
        if feat_dim != dim:
            raise ValueError(f"{name}: feat_embed_dim ({feat_dim}) must equal embedding_size "
                             f"({dim}): the modal and ID embeddings are added")

        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)  # xavier-uniform
        # MMRec's order of draws (projection, then hyperedges, per modality), so a seed gives
        # the same initial weights.
        self.item_trs, self.hyper = nn.ParameterDict(), nn.ParameterDict()
        for m in self.modalities:
            self.item_trs[m] = xavier_uniform(raw[m].shape[1], feat_dim)
            self.hyper[m] = xavier_uniform(raw[m].shape[1], hyper_num)
        self.hgnn = HypergraphConv(int(config["n_hyper_layer"]))
        for m, x in raw.items():  # frozen, rebuilt from the dataset (not in checkpoints)
            self.register_buffer(f"raw_{m}", x.to(self.device), persistent=False)
        self.adj = dataset.norm_adj().to(self.device)                 # Â
        self.inter = dataset.train.to_graph().to(self.device)         # R, binary users x items
        self.register_buffer("user_degree", dataset.train.user_degrees().float().unsqueeze(1)
                             .to(self.device), persistent=False)
        self.rng = self.add_generator("hyperedges")
        self.eval_rng = self.add_generator("hyperedges_eval")

    # ------------------------------------------------------------------ pieces
    def raw(self, m: str) -> torch.Tensor:
        return getattr(self, f"raw_{m}")

    def cge(self) -> torch.Tensor:
        """E_cge [U + I, d]: the collaborative graph embedding."""
        ego = self.ids.ego()
        if self.cf_model == "mf":
            return ego
        return propagate(self.adj, ego, self.n_ui_layers, "mean")

    def item_features(self, m: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """f^m = x^m W^m, [len(rows) or I, d]."""
        x = self.raw(m)
        return (x if rows is None else x[rows]) @ self.item_trs[m]

    def mge(self, m: str) -> torch.Tensor:
        """E^m [U + I, d]: the modal graph embedding of modality m."""
        items = self.item_features(m)
        users = spmm(self.inter, items) / (self.user_degree + 1e-7)
        return propagate(self.adj, torch.cat([users, items]), self.n_mm_layers, "last")

    def memberships(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality (H_I [I, A], H_U [U, A]) with this forward's noise (and masks)."""
        rng = self.rng if self.training else self.eval_rng
        noisy = self.training or self.eval_noise
        out = {}
        for m in self.modalities:
            logits_i = self.raw(m) @ self.hyper[m]
            logits_u = spmm(self.inter, logits_i)
            if noisy:
                out[m] = (gumbel_softmax(logits_i, self.tau, rng),
                          gumbel_softmax(logits_u, self.tau, rng))
            else:
                out[m] = (torch.softmax(logits_i / self.tau, 1),
                          torch.softmax(logits_u / self.tau, 1))
        if self.training:
            keep = self.keep_rate
            out = {m: (keep_dropout(h_i, keep, rng), keep_dropout(h_u, keep, rng))
                   for m, (h_i, h_u) in out.items()}
        return out

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, ...]]]:
        """(E_cge, E - E_cge, per modality (H_U, H_I, hyperedge vectors)), node tables
        [U + I, d] users first."""
        hyper = self.memberships()
        cge = self.cge()
        modal = sum(F.normalize(self.mge(m)) for m in self.modalities)
        # Per modality (H_U, H_I, hyperedge vectors): E_U^m = H_U edges, E_I^m = H_I edges.
        ghe = {m: (h_u, h_i, self.hgnn.hyperedges(h_i, cge[self.n_users:]))
               for m, (h_i, h_u) in hyper.items()}
        total = sum(torch.cat([h_u @ e, h_i @ e]) for h_u, h_i, e in ghe.values())
        modal = modal + self.alpha * F.normalize(total)
        return cge, modal, ghe

    # ------------------------------------------------------------------ contract
    def modal_feature_dims(self) -> dict[str, int]:
        """Widths of the per-modality item features (``+SEA`` splits them in half)."""
        return {m: int(self.item_trs[m].shape[1]) for m in self.modalities}

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        cge, modal, ghe = self.forward()
        out = cge + modal
        n = self.n_users
        u, p, q = joined_batch_rows(out, n, users, positives, negatives)
        loss = bpr_loss(u, p, q)
        if self.cl_weight:
            (uv, iv, ev), (ut, it, et) = (ghe[m] for m in self.modalities)
            hcl = (self.contrast(select_rows(uv, users) @ ev, ut, et, users)
                   + self.contrast(select_rows(iv, positives) @ ev, it, et, positives))
            loss = loss + self.cl_weight * hcl
        loss = loss + self.reg_weight * embedding_norm_loss(u, p, q)
        views = PluginViews(
            behavior=(cge[:n], cge[n:]), modal=(modal[:n], modal[n:]),
            modal_features=lambda rows: {m: self.item_features(m, rows) for m in self.modalities})
        return loss, views

    def contrast(self, anchor: torch.Tensor, members: torch.Tensor, edges: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
        """The hypergraph contrast of ``anchor`` rows against the table members @ edges, in
        factored form when the hyperedges are fewer than the dimensions."""
        if edges.shape[0] < edges.shape[1]:
            return contrast_against_factored(anchor, members, edges, rows, self.tau)
        return contrast_against_all(anchor, members @ edges, rows, self.tau)

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        cge, modal, _ = self.forward()
        out = cge + modal
        return out[: self.n_users], out[self.n_users:]
