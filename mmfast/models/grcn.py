"""GRCN (Wei et al., MM'20): graph-refined convolution, as MMRec trains it.

Each modality m (MMRec's visual and textual roles: ``image``, and ``text`` or TikTok's
``audio``) has user preference vectors p^m [U, C] and item content vectors
f^m = leaky_relu(W_m x^m + b_m) (frozen raw features x^m), both L2-normalized. Every training
edge (u, i) gets, per modality and per direction, an attention weight (PyG ``GATConv`` with
``add`` aggregation, no self-loops): the score s_ui = <p_u, f_i> is soft-maxed over the edges
into each node,

    alpha^m_{u->i} = softmax over the users of i of s_ui,  alpha^m_{i->u} = over the items of u,

and the modality's representation is [p; f] + A(alpha^m) [p; f] (users gain their items'
content, items their users' preferences). The refined graph weighs each directed edge by the
most confident modality: w_{s->t} = relu(max_m alpha^m_{s->t} c^m_s), c [U + I, M] learned
per-node confidences of the source node (``weight_mode: confid``; ``mean``/``max`` are MMRec's
other modes). The ID line is two unnormalized propagations on that graph from the normalized
ID table: h = x + A(w) x + A(w)^2 x, x = normalize(E_id). The representation of a node is
[h ‖ rep^v ‖ rep^t] (``fusion_mode: concat``), scores are inner products.

Loss (per batch, after a full forward): -mean log(sigmoid(<z_u, z_i+> - <z_u, z_i->>)) (the
log of the sigmoid, as MMRec writes it) plus
``reg_weight`` times (mean over the batch rows of E_id[u]^2 + E_id[i]^2, the mean over all
users of p^v^2 (visual role only), and the mean over the batch users of p^m^2 per modality).

The routing of the paper (user preferences refined by their items over ``n_layers`` rounds)
is, in MMRec, a no-op: its one-direction edge list sends messages from users to items only, so
the user rows of each round's output are zero and each round only re-normalizes p
(``routing: mmrec``). ``routing: paper`` runs it as the paper writes it:
p <- normalize(p + sum_{i in N(u)} softmax_i(<p_u, f_i>) f_i).

Edge weights change every step and the loss differentiates through them; every product runs
on :class:`mmfast.nn.edge_weights.EdgeList` (values set per call, gradients to values and
vectors, vectorized over the edges; the ``mmfast`` backend multiplies with the ``spmm``
kernel). No per-user loops.

Switches (default first, MMRec's hard-coded choices): ``weight_mode: confid | mean | max``;
``fusion_mode: concat | id | mean`` (``mean``: the average of the ID and modality
representations, needs ``embedding_size == latent_embedding``); ``pruning: true`` (the relu on
the edge weights); ``has_norm: true``; ``has_act: false`` (leaky relu on each propagation's
output); ``routing: mmrec | paper``; ``dropout: 0`` (share of the user-item edges dropped for
each forward, both directions; drawn from the model's ``edge_dropout`` stream);
``eval_last_forward: true`` (MMRec ranks with the representation its last training forward
stored, computed before that batch's update; false: a fresh forward after the epoch).

Reference: Yinwei Wei, Xiang Wang, Liqiang Nie, Xiangnan He, Tat-Seng Chua. "Graph-Refined
Convolutional Network for Multimedia Recommendation with Implicit Feedback." ACM MM 2020.

Differences from MMRec: one modality may be either role (MMRec crashes when only the textual
one is given: its ``conetent_rep`` typo); ``fusion_mode: mean`` averages the representations
present (MMRec's names an undefined audio tensor); MMRec's word-embedding text input
(``is_word``) is not supported. GRCN takes no plug-ins: its final vector is a concatenation of
lines of different widths, with no single behaviour / modal pair of the same width.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.edge_weights import EdgeList, segment_softmax
from mmfast.nn.features import check_features
from mmfast.nn.roles import visual_textual

WEIGHT_MODES = ("confid", "mean", "max")
FUSION_MODES = ("concat", "id", "mean")
ROUTINGS = ("mmrec", "paper")


def xavier_normal(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_normal_(torch.empty(*shape)))


class ContentGCN(nn.Module):
    """One modality of GRCN (MMRec's ``CGCN``): preferences p [U, C], content
    f = leaky_relu(W x + b) [I, C], routing, then one attention propagation on the symmetric
    user-item graph. Returns ([p; f] + A(alpha)[p; f] (leaky relu on the second term with
    ``has_act``), alpha in edge order)."""

    def __init__(self, n_users: int, feat_dim: int, dim: int, *, n_routing: int,
                 has_norm: bool, has_act: bool, routing: str) -> None:
        super().__init__()
        self.n_users, self.n_routing = n_users, n_routing
        self.has_norm, self.has_act, self.routing = has_norm, has_act, routing
        self.preference = xavier_normal(n_users, dim)
        self.mlp = nn.Linear(feat_dim, dim)
        nn.init.xavier_normal_(self.mlp.weight)

    def forward(self, raw: torch.Tensor, edges: EdgeList, keep: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.leaky_relu(self.mlp(raw))
        p = self.preference
        if self.has_norm:
            p, f = F.normalize(p), F.normalize(f)
        n_pairs = edges.n_edges // 2
        for _ in range(self.n_routing):
            if self.routing == "paper":  # items -> users only: the second half of the edges
                x = torch.cat([p, f])
                alpha = segment_softmax(edges.edge_dot(x, x), edges, keep)
                alpha = torch.cat([torch.zeros_like(alpha[:n_pairs]), alpha[n_pairs:]])
                p = p + edges.aggregate(alpha, x)[: self.n_users]
            # routing == "mmrec": the messages reach the items only; p gains nothing.
            if self.has_norm:
                p = F.normalize(p)
        x = torch.cat([p, f])
        # s_ui = <p_u, f_i>, once per direction (the same value), soft-maxed per target node.
        alpha = segment_softmax(edges.edge_dot(x, x), edges, keep)
        h = edges.aggregate(alpha, x)
        if self.has_act:
            h = F.leaky_relu(h)
        return x + h, alpha


@register()
class GRCN(Recommender):
    """GRCN (module docstring). Config: ``configs/model/GRCN.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        visual, textual = visual_textual(dataset.modalities, name, need_both=False)
        self.modalities = [m for m in (visual, textual) if m is not None]
        self.visual = visual
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        self.reg_weight = float(config["reg_weight"])
        self.weight_mode = _choice(config, "weight_mode", WEIGHT_MODES)
        self.fusion_mode = _choice(config, "fusion_mode", FUSION_MODES)
        routing = _choice(config, "routing", ROUTINGS)
        self.pruning = bool(config["pruning"])
        self.has_norm, self.has_act = bool(config["has_norm"]), bool(config["has_act"])
        self.dropout = float(config["dropout"])
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must lie in [0, 1), got {self.dropout}")
        self.eval_last_forward = bool(config["eval_last_forward"])
        dim_x, dim_c = int(config["embedding_size"]), int(config["latent_embedding"])
        if self.fusion_mode == "mean" and dim_x != dim_c:
            raise ValueError(f"{name}: fusion_mode mean needs embedding_size == latent_embedding, "
                             f"got {dim_x} and {dim_c}")

        n = self.n_users + self.n_items
        self.id_embedding = xavier_normal(n, dim_x)
        self.content = nn.ModuleDict({
            m: ContentGCN(self.n_users, raw[m].shape[1], dim_c, n_routing=int(config["n_layers"]),
                          has_norm=self.has_norm, has_act=self.has_act, routing=routing)
            for m in self.modalities})
        self.confidence = xavier_normal(n, len(self.modalities))
        for m, x in raw.items():  # frozen, rebuilt from the dataset (not in checkpoints)
            self.register_buffer(f"raw_{m}", x.to(self.device), persistent=False)
        # The training pairs (user, item); nodes are users then items; the symmetric
        # edge list: first every u -> i (target item), then every i -> u (target user).
        train = dataset.train
        self.register_buffer("pair_users", train.users().to(self.device), persistent=False)
        self.register_buffer("pair_items", train.items.to(self.device), persistent=False)
        u, i = self.pair_users, self.pair_items + self.n_users
        self.edges = EdgeList(torch.cat([i, u]), torch.cat([u, i]), (n, n))
        if self.dropout:
            self.edge_rng = self.add_generator("edge_dropout")
        self._last: torch.Tensor | None = None
        self.to(self.device)

    # ------------------------------------------------------------------ forward
    def edge_weights(self, alphas: list[torch.Tensor]) -> torch.Tensor:
        """The refined graph's weight of every directed edge (edge order), [2E]."""
        alpha = torch.stack(alphas, 1)                       # [2E, M]
        if self.weight_mode == "confid":
            src = self.edges.src
            w = (alpha * self.confidence[src]).max(1).values
        elif self.weight_mode == "mean":
            w = alpha.mean(1)
        else:
            w = alpha.max(1).values
        return torch.relu(w) if self.pruning else w

    def id_line(self, w: torch.Tensor) -> torch.Tensor:
        """x + A(w) x + A(w)^2 x from x = the (normalized) ID table (MMRec's ``EGCN``)."""
        x = F.normalize(self.id_embedding) if self.has_norm else self.id_embedding
        h1 = self.edges.aggregate(w, x)
        if self.has_act:
            h1 = F.leaky_relu(h1)
        h2 = self.edges.aggregate(w, h1)
        if self.has_act:
            h2 = F.leaky_relu(h2)
        return x + h1 + h2

    def forward(self) -> torch.Tensor:
        """The node representations [U + I, width] (users first)."""
        keep = None
        if self.training and self.dropout:
            pairs = self.pair_users.numel()
            kept = torch.empty(pairs, device=self.device).bernoulli_(
                1.0 - self.dropout, generator=self.edge_rng).to(self.id_embedding.dtype)
            keep = torch.cat([kept, kept])
        reps, alphas = [], []
        for m in self.modalities:
            rep, alpha = self.content[m](getattr(self, f"raw_{m}"), self.edges, keep)
            reps.append(rep)
            alphas.append(alpha)
        id_rep = self.id_line(self.edge_weights(alphas))
        if self.fusion_mode == "concat":
            return torch.cat([id_rep, *reps], 1)
        if self.fusion_mode == "id":
            return id_rep
        return (id_rep + sum(reps)) / (1 + len(reps))

    # ------------------------------------------------------------------ contract
    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        out = self.forward()
        if self.eval_last_forward:
            self._last = out.detach()
        b = users.numel()
        rows = torch.cat([users, positives + self.n_users, negatives + self.n_users])
        z_u, z_p, z_n = out[rows].split(b)  # one gather: one gradient scatter into the table
        diff = (z_u * z_p).sum(1) - (z_u * z_n).sum(1)
        loss = -torch.log(torch.sigmoid(diff)).mean()
        # MMRec's rows: each user twice, against its positive and its negative.
        e = self.id_embedding[rows].square().sum(1)
        reg = (2 * e[:b].sum() + e[b:].sum()) / (2 * b * self.id_embedding.shape[1])
        if self.visual is not None:
            reg = reg + self.content[self.visual].preference.square().mean()
        for m in self.modalities:
            reg = reg + self.content[m].preference[users].square().mean()
        return loss + self.reg_weight * reg

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._last if self.eval_last_forward and self._last is not None else self.forward()
        return out[: self.n_users], out[self.n_users:]

    # ------------------------------------------------------------------ housekeeping
    def _drop_cache(self) -> None:
        self._last = None

    def load_state_dict(self, *args, **kwargs):
        self._drop_cache()
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._last = None
        super()._apply(fn, recurse)
        edges = vars(self).get("edges")
        if isinstance(edges, EdgeList):
            self.edges = edges.to(self.pair_users.device)
        return self

    @torch.no_grad()
    def mask_modality(self, modality: str, items: torch.Tensor) -> None:
        self._drop_cache()
        super().mask_modality(modality, items)


def _choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = str(config[key])
    if value not in allowed:
        raise ValueError(f"GRCN: {key} must be one of {allowed}, got {value!r}")
    return value
