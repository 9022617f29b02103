"""SEA and SAND: separate generic/unique learning on a DRAGON backbone without the user-user
graph, as the authors' code trains it (MODELS.md §2).

Forward, every batch over all items: z^m = W_m x^m + b_m (square, d_m x d_m) for the anchor
modality (image) and one other (text, or TikTok's audio); a per-modality GNN on the whole z^m
(item MLP d_m -> 256 -> 64, user preference table, row-normalized, sum of layers 0..2 on Â);
items [E^v || E^t] smoothed once over the frozen mixed kNN graph G2, users
[w_u1 E^v || w_u2 E^t] with free per-user weights; score = inner product (128-d).
Loss: log2-BPR + :class:`mmfast.nn.SeparateLearning` on the split z^m (SoloSim text -> image,
tau = 0.2, weight 0.012; CLUB weight 0.006 with 50 q-net Adam steps after the model's backward,
or negative L2 for SAND). Evaluation recomputes the representation in eval mode after training
(the reference reuses the one from the epoch's last training forward; the difference is one
optimizer step).

Every reference quirk is the default and a config switch: ``bpr_log2``, ``solosim_symmetric``,
``aux_rows`` (all items per batch), ``club_halve``, ``club_clamp``, ``club_shared``,
``club_steps``, ``club_lr`` (null: the model's), ``club_estimator``.

Reference: Zhuangzhuang He, Zihan Wang, Yonghui Yang, Haoyue Bai, Le Wu. "It is Never Too Late
to Mend: Separate Learning for Multimedia Recommendation." arXiv 2406.08270 v2 (SEA); v1 is
"Boosting Multimedia Recommendation via Separate Generic and Unique Awareness" (SAND).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.profiler import record_function

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph, modality_weights
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import (
    ItemGraphSmoothing,
    ModalityGNN,
    SeparateLearning,
    UserModalityWeights,
    batch_rows,
    bpr_loss,
    check_features,
    log2_scale,
    ordered_modalities,
)

AUX_ROWS = ("all", "batch")


def separate_learning(config: Mapping[str, Any], generic_dims: Mapping[str, int]) -> SeparateLearning:
    """The SeparateLearning module a model's config describes (SEA's key names)."""
    return SeparateLearning(
        generic_dims, distancing=str(config["distancing"]), temperature=float(config["temp"]),
        alpha_contrast=float(config["alpha_contrast"]), ureg=float(config["ureg"]),
        neg_l2_weight=float(config["neg_l2_weight"]), head_hidden=int(config["hidden_dim"]),
        head_out=int(config["out_dim"]), distance_dim=int(config["distance_dim"]),
        solosim_symmetric=bool(config["solosim_symmetric"]),
        club_hidden=int(config["club_hidden"]), club_shared=bool(config["club_shared"]),
        club_halve=bool(config["club_halve"]), club_clamp=bool(config["club_clamp"]),
        club_estimator=str(config["club_estimator"]), club_steps=int(config["club_steps"]),
    )


def check_aux_rows(mode: str) -> str:
    if mode not in AUX_ROWS:
        raise ValueError(f"aux_rows must be one of {AUX_ROWS}, got {mode!r}")
    return mode


def aux_rows(mode: str, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | None:
    """The item rows the auxiliary losses see: None (all items, the reference) or the batch's."""
    check_aux_rows(mode)
    return None if mode == "all" else torch.unique(torch.cat([positives, negatives]))


@register()
class SEA(Recommender):
    """SEA (CLUB distancing). Config: see ``configs/model/SEA.yaml``."""

    config_overrides: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        self.modalities = ordered_modalities(dataset.modalities, str(config["anchor_modality"]),
                                             name)
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, name)
        for m, x in raw.items():  # frozen inputs, not saved in checkpoints
            self.register_buffer(f"raw_{m}", x.to(self.device), persistent=False)
        dim = int(config["embedding_size"])
        self.transforms = nn.ModuleDict({m: nn.Linear(x.shape[1], x.shape[1])
                                         for m, x in raw.items()})
        self.gnns = nn.ModuleDict({
            m: ModalityGNN(self.n_users, x.shape[1], hidden=int(config["gnn_hidden"]), dim=dim,
                           layers=int(config["n_layers"])) for m, x in raw.items()})
        self.user_weights = UserModalityWeights(self.n_users, len(self.modalities))
        weights = modality_weights(self.modalities, float(config["mm_image_weight"]))
        knn = item_knn_graph(raw, int(config["knn_k"]), style="freedom", weights=weights,
                             device=self.device)
        self.smoothing = ItemGraphSmoothing(knn.to(self.device), int(config["n_mm_layers"]))
        self.adj = dataset.norm_adj().to(self.device)
        self.bpr_log2, self.aux_rows = bool(config["bpr_log2"]), str(config["aux_rows"])
        check_aux_rows(self.aux_rows)
        for m, x in raw.items():
            if x.shape[1] % 2:
                raise ValueError(f"{name} splits each modality's features in half and the {m} "
                                 f"features are {x.shape[1]} wide (odd)")
        self.separate = separate_learning(config, {m: x.shape[1] // 2 for m, x in raw.items()})
        club_lr = config.get("club_lr")
        self.separate.attach(self, float(config["learning_rate"] if club_lr is None else club_lr))

    def transformed(self) -> dict[str, torch.Tensor]:
        """z^m = W_m x^m + b_m over all items."""
        with record_function("sea.transforms"):
            return {m: self.transforms[m](getattr(self, f"raw_{m}")) for m in self.modalities}

    def represent(self, z: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with record_function("sea.gnns"):
            lines = [self.gnns[m](self.adj, z[m]) for m in self.modalities]
        with record_function("sea.fusion"):
            users = self.user_weights([u for u, _ in lines])
            items = self.smoothing(torch.cat([i for _, i in lines], dim=1))
        return users, items

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        z = self.transformed()
        u, i = self.represent(z)
        with record_function("sea.bpr"):
            loss = bpr_loss(*batch_rows(u, i, users, positives, negatives))
            if self.bpr_log2:
                loss = log2_scale(loss)
        rows = aux_rows(self.aux_rows, positives, negatives)
        if rows is not None:
            z = {m: t[rows] for m, t in z.items()}
        return loss + self.separate(z)

    def after_backward(self) -> None:
        self.separate.after_backward()

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.represent(self.transformed())


@register()
class SAND(SEA):
    """SAND: SEA's model with negative-L2 distancing (weight ``neg_l2_weight``, 1 as in the
    reference) in place of CLUB. Same YAML as SEA, ``distancing: neg_l2``."""

    config_overrides: ClassVar[Mapping[str, Any]] = {"distancing": "neg_l2"}
