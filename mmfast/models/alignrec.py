"""AlignRec, stage 2 (MODELS.md §3.3-3.5), as the authors' code trains it: an MGCN derivative
with content-ID and user-item alignment on top of BPR.

Forward (all items, every batch): c = W_f f + b_f from a trainable feature table f (LayerNorm
first with ``use_ln``); the ID-gated purifier m0 = e^id ⊙ sigmoid(W_g c + b_g); the ID line
H = mean of layers 0..2 of LightGCN on Â; the multimodal line M_I = S^L m0 on the frozen G3 item
graph (k = 10, L = 1), M_U = R̂ M_I; fused Z = H + M (``side_emb_div`` d: H + M / d).
Loss: BPR + ``reg_weight`` ½(|z_u|² + |z_i+|² + |z_i-|²) / ``train_batch_size`` (the configured
size, also for the smaller last batch, as the reference) + ``cl_loss`` (NCE(M_I, H_I) +
NCE(M_U, H_U)) on the batch rows (in-batch InfoNCE, tau 0.2, one direction, duplicates count
as negatives: :func:`mmfast.ops.solosim_loss`) + 0.1 (1 - cos(z_u, z_i+)) + ``sim_weight``
|M_P M_P^T - C_P|_F / B, C_P the cosines of the batch items' feature rows: the fine-tuned table
(``sim_target: current``, the reference's drifting target) or the input (``frozen``).

Input features (``feature_source``): the fused file ``fused_feature`` (AlignRec's released
features, or ``python -m mmfast.pretrain``'s output), the concatenation of the dataset's
modalities, or one modality; the choice is printed with the model (so in the log) and written in
``metrics.json`` (``model_info``).

``warmup_ui``: for the first ``warmup_epochs`` epochs the BPR and UI terms are dropped and the
learning rate is ramped by (epoch + 1) / warmup_epochs. The trainer's LambdaLR is not the
model's, so the ramp scales the optimizer's rate inside :meth:`ALIGNREC.train_step` for the
step and restores it (the schedule, its checkpoint and the logged ``lr`` stay the trainer's).

Not built (unused in the reference's default path): ``query_common``, ``gate_mm_prefer``, the
history decoder and the cross-attention branches.

Reference: Yifan Liu et al. "AlignRec: Aligning and Training in Multimodal Recommendations."
CIKM 2024 (code: github sjtulyf123/AlignRec_CIKM24, stage 2 only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import (
    BehaviorPurifier,
    LightGCNEmbeddings,
    UserLift,
    batch_rows,
    bpr_loss,
    check_features,
    similarity_preservation_loss,
    ui_cosine_loss,
)
from mmfast.ops import propagate, select_rows, solosim_loss

SIM_TARGETS = ("current", "frozen")


def select_features(dataset: Dataset, source: str, fused_file: str | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """AlignRec's input table [n_items, d] and a description of it: ``fused`` (the one fused
    file), ``concat`` (every modality side by side, in the dataset's order), a modality name,
    or ``auto`` (fused when loaded, else concat). The description names the modalities' column
    ranges (for masking) and, for a fused file with a ``.json`` beside it (what
    ``mmfast.pretrain`` writes), how the file was made."""
    modalities = list(dataset.modalities)
    if not modalities:
        raise ValueError(f"ALIGNREC needs item features, and dataset {dataset.name!r} has none "
                         "(<modality>_feat.npy files, or fused_feature)")
    if source == "auto":
        source = "fused" if "fused" in modalities else "concat"
    if source == "fused":
        if "fused" not in modalities:
            raise ValueError("ALIGNREC: feature_source 'fused' needs a fused feature file "
                             "(--set fused_feature=FILE.npy)")
        chosen = ["fused"]
    elif source == "concat":
        chosen = modalities
    elif source in modalities:
        chosen = [source]
    else:
        raise ValueError(f"ALIGNREC: feature_source must be auto, fused, concat or one of the "
                         f"dataset's modalities {modalities}, got {source!r}")
    tables = {m: dataset.feature(m).float() for m in chosen}
    check_features(tables, "ALIGNREC")
    columns, start = {}, 0
    for m, t in tables.items():
        columns[m] = [start, start + t.shape[1]]
        start += t.shape[1]
    info: dict[str, Any] = {"source": source, "modalities": chosen, "dim": start,
                            "columns": columns}
    if "fused" in chosen and fused_file:
        info["file"] = str(fused_file)
        meta = Path(fused_file).with_suffix(".json")
        if meta.is_file():
            try:
                info["made_by"] = json.loads(meta.read_text())
            except ValueError:
                info["made_by"] = f"unreadable {meta}"
    return torch.cat(list(tables.values()), dim=1), info


@register()
class ALIGNREC(Recommender):
    """AlignRec stage 2. Config: ``configs/model/ALIGNREC.yaml``."""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        features, self.feature_info = select_features(
            dataset, str(config["feature_source"]), config.get("fused_feature"))
        self.sim_target = str(config["sim_target"])
        if self.sim_target not in SIM_TARGETS:
            raise ValueError(f"ALIGNREC: sim_target must be one of {SIM_TARGETS}, "
                             f"got {self.sim_target!r}")
        dim = int(config["embedding_size"])
        self.n_ui_layers, self.n_layers = int(config["n_ui_layers"]), int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.batch_size = int(config["train_batch_size"])
        self.cl_weight, self.cl_temperature = float(config["cl_loss"]), float(config["cl_temperature"])
        self.ui_weight = (float(config["ui_cosine_loss_weight"])
                          if bool(config["ui_cosine_loss"]) else 0.0)
        self.sim_weight = float(config["sim_weight"])
        self.side_div = float(config["side_emb_div"])
        self.warmup = int(config["warmup_epochs"]) if bool(config["warmup_ui"]) else 0
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        # The reference builds its feature embedding from the loaded tensor without a copy, so
        # the table is fine-tuned; the input as loaded stays for sim_target: frozen.
        self.features = nn.Parameter(features.clone(),
                                     requires_grad=not bool(config["freeze_features"]))
        self.register_buffer("input_features", features.to(self.device), persistent=False)
        self.norm = nn.LayerNorm(features.shape[1]) if bool(config["use_ln"]) else nn.Identity()
        self.project = nn.Linear(features.shape[1], dim)
        self.purifier = BehaviorPurifier(dim)
        # G3, built once (cached on disk) from the input features and frozen.
        self.item_graph = item_knn_graph(features, int(config["knn_k"]), style="mgcn",
                                         device=self.device).to(self.device)
        self.adj = dataset.norm_adj().to(self.device)
        self.lift = UserLift(dataset.user_item_lift().to(self.device))

    def extra_repr(self) -> str:
        info = self.feature_info
        text = f"features: {info['source']} {info['modalities']} {info['dim']}-d"
        if "file" in info:
            text += f" from {info['file']}"
            made = info.get("made_by")
            if isinstance(made, Mapping):
                text += f" (made by {made.get('made_by', '?')} from {made.get('modalities')})"
        return text

    def run_info(self) -> dict[str, Any]:
        return {"features": self.feature_info}

    # ------------------------------------------------------------------ forward
    def lines(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_U, H_I, M_U, M_I): the ID line and the multimodal line, users and items."""
        content = self.project(self.norm(self.features))
        purified = self.purifier(self.ids.item.weight, content)
        h_u, h_i = self.ids(self.adj, self.n_ui_layers)
        m_i = propagate(self.item_graph, purified, self.n_layers, "last")
        return h_u, h_i, self.lift(m_i), m_i

    def fuse(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return h + (m / self.side_div if self.side_div else m)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        h_u, h_i, m_u, m_i = self.lines()
        z_u, z_i = self.fuse(h_u, m_u), self.fuse(h_i, m_i)
        u, p, n = batch_rows(z_u, z_i, users, positives, negatives)
        warming = self.current_epoch < self.warmup
        loss = self.reg_weight * 0.5 * (u.square().sum() + p.square().sum()
                                        + n.square().sum()) / self.batch_size
        if not warming:
            loss = loss + bpr_loss(u, p, n)
            if self.ui_weight:
                loss = loss + self.ui_weight * ui_cosine_loss(u, p)
        if self.cl_weight:
            m_ub, m_ib = batch_rows(m_u, m_i, users, positives)
            h_ub, h_ib = batch_rows(h_u, h_i, users, positives)
            cl = (solosim_loss(m_ib, h_ib, self.cl_temperature)
                  + solosim_loss(m_ub, h_ub, self.cl_temperature))
            loss = loss + self.cl_weight * cl
        if self.sim_weight:
            table = self.features if self.sim_target == "current" else self.input_features
            loss = loss + self.sim_weight * similarity_preservation_loss(
                select_rows(m_i, positives), select_rows(table, positives))
        return loss

    def train_step(self, users, positives, negatives, optimizer, loss_scale=1.0) -> torch.Tensor:
        """The default step; during the warm-up at lr x (epoch + 1) / warmup_epochs."""
        if self.current_epoch >= self.warmup:
            return super().train_step(users, positives, negatives, optimizer, loss_scale)
        scale = (self.current_epoch + 1) / self.warmup
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * scale
        try:
            return super().train_step(users, positives, negatives, optimizer, loss_scale)
        finally:
            for group, lr in zip(optimizer.param_groups, rates):
                group["lr"] = lr

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_u, h_i, m_u, m_i = self.lines()
        return self.fuse(h_u, m_u), self.fuse(h_i, m_i)

    # ------------------------------------------------------------------ evaluation helpers
    @torch.no_grad()
    def mask_modality(self, modality: str, items: torch.Tensor) -> None:
        """Zero ``modality``'s columns of the feature table (fine-tuned and input) for
        ``items`` (MODELS.md §3.6, mask-modality; the frozen item graph is kept)."""
        columns = self.feature_info["columns"]
        if modality == "fused" or modality not in columns:
            have = [m for m in columns if m != "fused"]
            raise ValueError(
                f"ALIGNREC: masking {modality!r} needs per-modality features; this model reads "
                + (f"{have}" if have else "one fused feature file, which cannot be split by "
                   "modality"))
        a, b = columns[modality]
        rows = items.to(self.features.device)
        self.features[rows, a:b] = 0
        self.input_features[rows, a:b] = 0
