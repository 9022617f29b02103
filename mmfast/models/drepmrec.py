"""DRepMRec (arXiv 2404.11119 v1; DREAM in v2): two independent lines of representation
learning, a behaviour line and a modal line, aligned and fused by Behavior-Modal Alignment (BMA),
with a Similarity Supervised Signal (S3) keeping the modal line faithful to the raw features.

**This is a reconstruction.** No code by the authors exists; this model is built from the two
abstracts and the authors' framework figure, following MODELS.md §4.2-4.3. Every choice those
sources leave open is a config switch, defaulting to the value §4.3 proposes, but for three:
the figure draws a per-modality user-user graph inside each modal encoder and feeds both users'
and items' modal representations into S3, so ``user_modal: uu_graph`` and ``s3_on_users:
true`` are the defaults; and ``detach_cross: true`` is, because the numbers chose it (TikTok,
three seeds each: §4.3's reading 0.0784 ± 0.0024 test Recall@20, the figure's 0.0890 ± 0.0046,
with ``line_bpr`` 0.0965 ± 0.0021, with ``detach_cross`` 0.0994 ± 0.0054, with both 0.0965 ±
0.0043; benchmarks/RESULTS.md).

Behaviour line: ID embeddings (64-d, xavier-uniform), LightGCN on Â, ``n_layers`` = 2, mean
over layers 0..L -> Ē_B.

Modal line, one branch per modality m (one modality is allowed: one branch):
  c_i^m = W_m x_i^m + b_m on the **frozen** raw features x^m (d_m -> 64);
  ĥ_i^m = FilterGate_m(c_i^m) (``gate``); Ē_I^m = (S^m)^L ĥ_I^m on the G3 item kNN graph of
  modality m (k = ``knn_k`` = 10, L = ``n_mm_layers`` = 1);
  users: the lift R̂ Ē_I^m (G4), gated by the user's own ID as the items are (a user-side
  gate of the same form per modality), then one step on a user-user kNN graph (the default;
  ``user_modal``); Ē_M = ModalityFusion(Ē^1, ..., Ē^M) (``modal_fuse``).

Loss, on the batch (users u, positives i+, negatives i-), z = fuse(Ē_B, Ē_M):
  L = BPR(z) + reg_weight · ½‖z_u, z_i+, z_i-‖² / B
      + inter_weight · L_inter + intra_weight · L_intra + s3_weight · L_S3
      (+ BPR(Ē_B) + BPR(Ē_M) with ``line_bpr``).
L_inter / L_intra: :class:`mmfast.nn.BehaviorModalAlignment` (in-batch InfoNCE, τ =
``temperature`` = 0.2). L_S3: :class:`mmfast.nn.SimilaritySupervision` of Ē_M[i+] against the
mean over modalities of the raw features' cosine similarities.

Switches (default first):
  ``gate: id | self``      ID-guided gate ĥ = e^{id} ⊙ σ(G c + g) (MGCN's purifier) or a self
                           gate ĥ = c ⊙ σ(G c + g);
  ``gate_detach: true``    the ID embeddings enter the gate detached (modal losses never move
                           them through it);
  ``user_modal: uu_graph | lift``  R̂ then one propagation over a per-modality user-user kNN
                           graph (the figure; k = ``uu_knn_k``, G3 normalization, cosine of the
                           detached lifted vectors, rebuilt before every epoch), or R̂ only;
  ``modal_fuse: sum | mean | attn``  the figure's ⊕, a mean, or MGCN's attention;
  ``fusion: sum | concat`` z = Ē_B + Ē_M (the figure) or [Ē_B ‖ Ē_M];
  ``s3_norm: false``       cosine instead of dot products on S3's left side;
  ``s3_per_modality: false``  one S3 term per branch against its own modality (mean of terms);
  ``s3_on_users: true``    S3 on the batch users too (targets: their lifted raw features R̂ x^m;
                           the figure), or on the items only (§4.3);
  ``detach_cross: true``   inter-alignment gradient stopped at the behaviour (target) line (the
                           numbers' choice; §4.3's loss is written without it);
  ``line_bpr: false``      BPR on each line next to BPR(z).
``intra_weight: null`` means ``inter_weight`` (γ = α).

Reference: Zhang, Qin, Su, Liu, Jin, Zhang, Yu (SJTU + Xiaohongshu), arXiv 2404.11119: v1
"DRepMRec", v2 "DREAM" (MODELS.md §4); framework figure: GitHub zkangning/zkangning.github.io,
images/DRepMRec.png.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.profiler import record_function

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import (
    BehaviorModalAlignment,
    FilterGate,
    LightGCNEmbeddings,
    ModalityFusion,
    ModalityProjection,
    RelationGraph,
    SimilaritySupervision,
    UserKNNGraph,
    UserLift,
    batch_rows,
    bpr_loss,
    check_features,
)
from mmfast.ops import spmm

USER_MODAL = ("lift", "uu_graph")


def squared_l2(*rows: torch.Tensor) -> torch.Tensor:
    """MGCN's regularizer: ½ Σ ‖rows‖² over the given tensors, divided by the batch size."""
    return sum(0.5 * r.square().sum() for r in rows) / rows[0].shape[0]


def alignment(config: Mapping[str, Any]) -> BehaviorModalAlignment:
    """The BMA module a model's config describes (``temperature``, ``inter_weight``,
    ``intra_weight`` (null: = inter_weight), ``detach_cross``, ``fusion`` (default sum))."""
    intra = config.get("intra_weight")
    return BehaviorModalAlignment(
        temperature=float(config["temperature"]), inter_weight=float(config["inter_weight"]),
        intra_weight=None if intra is None else float(intra),
        detach_cross=bool(config["detach_cross"]), fusion=str(config.get("fusion", "sum")))


@register()
class DREPMREC(Recommender):
    """DRepMRec / DREAM, reconstructed (module docstring). Config:
    ``configs/model/DREPMREC.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        self.modalities = list(dataset.modalities)
        if not self.modalities:
            raise ValueError(f"{name} needs item features, and dataset {dataset.name!r} has none "
                             "(<modality>_feat.npy files beside the .inter file)")
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        dim = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.s3_weight = float(config["s3_weight"])
        self.s3_per_modality = bool(config["s3_per_modality"])
        self.s3_on_users = bool(config["s3_on_users"])
        self.line_bpr = bool(config["line_bpr"])
        self.user_modal = str(config["user_modal"])
        if self.user_modal not in USER_MODAL:
            raise ValueError(f"user_modal must be one of {USER_MODAL}, got {self.user_modal!r}")
        gate, detach = str(config["gate"]), bool(config["gate_detach"])

        # Behaviour line.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        self.adj = dataset.norm_adj().to(self.device)
        # Modal line: frozen raw features, projections, gates, relation graphs.
        self.modal = ModalityProjection(raw, dim, trainable=False)
        self.item_gates = nn.ModuleDict({m: FilterGate(dim, gate, detach_guide=detach)
                                         for m in self.modalities})
        self.user_gates = nn.ModuleDict({m: FilterGate(dim, gate, detach_guide=detach)
                                         for m in self.modalities})
        k, layers = int(config["knn_k"]), int(config["n_mm_layers"])
        self.item_graphs = nn.ModuleDict({  # G3, one per modality, built once (cached), frozen
            m: RelationGraph(item_knn_graph(raw[m], k, style="mgcn", device=self.device)
                             .to(self.device), layers) for m in self.modalities})
        self.lift = UserLift(dataset.user_item_lift().to(self.device))
        if self.user_modal == "uu_graph":
            self.user_graphs = nn.ModuleDict({m: UserKNNGraph(int(config["uu_knn_k"]))
                                              for m in self.modalities})
        self.modal_fuse = ModalityFusion(dim, str(config["modal_fuse"]))
        # Alignment, fusion and the similarity signal.
        self.bma = alignment(config)
        self.s3 = SimilaritySupervision(normalize=bool(config["s3_norm"]))
        if self.s3_on_users and self.s3_weight:
            lift = self.lift.lift
            for m, x in raw.items():  # R̂ x^m: the users' raw-feature targets, frozen
                self.register_buffer(f"lifted_raw_{m}", spmm(lift, x.to(self.device)),
                                     persistent=False)

    # ------------------------------------------------------------------ the two lines
    def behavior_line(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ē_B: (users [U, d], items [I, d]), LightGCN mean over layers 0..n_layers."""
        with record_function("drepmrec.behavior"):
            return self.ids(self.adj, self.n_layers)

    def _lifted(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality m's items Ē_I^m and the users' lift R̂ Ē_I^m (before the user gate)."""
        c = self.modal(m)
        items = self.item_graphs[m](self.item_gates[m](c, self.ids.item.weight))
        return items, self.lift(items)

    def modal_branches(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality (users [U, d], items [I, d]) of the modal line."""
        out = {}
        if self.user_modal == "uu_graph" and self.user_graphs[self.modalities[0]].graph is None:
            self._rebuild_user_graphs()  # first use, before any pre_epoch_processing
        with record_function("drepmrec.modal"):
            for m in self.modalities:
                items, lifted = self._lifted(m)
                users = self.user_gates[m](lifted, self.ids.user.weight)
                if self.user_modal == "uu_graph":
                    users = self.user_graphs[m](users)
                out[m] = (users, items)
        return out

    def modal_line(self, branches=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ē_M: the fused branches, (users [U, d], items [I, d])."""
        branches = self.modal_branches() if branches is None else branches
        fused = self.modal_fuse([torch.cat(b) for b in branches.values()])
        return fused[: self.n_users], fused[self.n_users:]

    @torch.no_grad()
    def _rebuild_user_graphs(self) -> None:
        for m in self.modalities:
            self.user_graphs[m].rebuild(self.lift(self._lifted(m)[0]))

    def pre_epoch_processing(self) -> None:
        if self.user_modal == "uu_graph":  # user-user graphs from this epoch's lifted vectors
            self._rebuild_user_graphs()

    # ------------------------------------------------------------------ losses
    def similarity_loss(self, branches, m_u, m_i, users, positives) -> torch.Tensor:
        """L_S3 on the batch's positive items (and users with ``s3_on_users``)."""
        raw = {m: self.modal.features[m] for m in self.modalities}
        sides = [(positives, 1, m_i, raw)]
        if self.s3_on_users:
            lifted = {m: getattr(self, f"lifted_raw_{m}") for m in self.modalities}
            sides.append((users, 0, m_u, lifted))
        loss = m_i.new_zeros(())
        for rows, side, fused, feats in sides:
            if self.s3_per_modality:
                terms = [self.s3(branches[m][side][rows], [feats[m][rows]])
                         for m in self.modalities]
                loss = loss + sum(terms) / len(terms)
            else:
                loss = loss + self.s3(fused[rows], [feats[m][rows] for m in self.modalities])
        return loss

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        b_u, b_i = self.behavior_line()
        branches = self.modal_branches()
        m_u, m_i = self.modal_line(branches)
        with record_function("drepmrec.bpr"):
            z_u, z_i = self.bma.fuse(b_u, m_u), self.bma.fuse(b_i, m_i)
            u, p, n = batch_rows(z_u, z_i, users, positives, negatives)
            loss = bpr_loss(u, p, n)
            if self.reg_weight:
                loss = loss + self.reg_weight * squared_l2(u, p, n)
            if self.line_bpr:
                loss = loss + bpr_loss(*batch_rows(b_u, b_i, users, positives, negatives))
                loss = loss + bpr_loss(*batch_rows(m_u, m_i, users, positives, negatives))
        with record_function("drepmrec.bma"):
            loss = loss + self.bma(*batch_rows(b_u, b_i, users, positives),
                                   *batch_rows(m_u, m_i, users, positives))
        if self.s3_weight:
            with record_function("drepmrec.s3"):
                loss = loss + self.s3_weight * self.similarity_loss(branches, m_u, m_i, users,
                                                                    positives)
        return loss

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        b_u, b_i = self.behavior_line()
        m_u, m_i = self.modal_line()
        return self.bma.fuse(b_u, m_u), self.bma.fuse(b_i, m_i)


register("DREAM")(DREPMREC)  # the paper's v2 name
