"""FREEDOM+BMA: FREEDOM with DRepMRec's Behavior-Modal Alignment as a plug-in (MODELS.md §4.1:
"BMA can be plugged into other models").

FREEDOM has the two lines BMA needs: the behaviour line (users u and items i of LightGCN on the
pruned Â) and a modal line, h = S^L e_item on the frozen feature kNN graph G2 (the items' modal
part; FREEDOM's item vector is i + h). Users get the modal vector R̂ h (the lift G4 on the
training graph). :class:`mmfast.nn.BehaviorModalAlignment` adds
``inter_weight`` · [NCE(R̂h_u, u) + NCE(h_i+, i_i+)] + ``intra_weight`` · [NCE(u, i_i+) +
NCE(R̂h_u, h_i+)] (in-batch InfoNCE, τ = ``temperature``; ``detach_cross`` stops the
inter-alignment gradient at the behaviour line) to FREEDOM's loss. Scoring, pruning and
everything else are FREEDOM's unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mmfast.configs import load_yaml, merge, model_config_path
from mmfast.data.dataset import Dataset
from mmfast.models.drepmrec import alignment
from mmfast.models.freedom import FREEDOM
from mmfast.models.registry import register
from mmfast.nn import UserLift


@register("FREEDOM+BMA")
class FREEDOMBMA(FREEDOM):
    """FREEDOM plus BMA. Config: ``configs/model/FREEDOM+BMA.yaml`` over FREEDOM's."""

    @classmethod
    def default_config(cls, dataset: str | None = None) -> dict[str, Any]:
        """FREEDOM's defaults (and grid) with ``FREEDOM+BMA.yaml`` (BMA's keys) over them."""
        return merge(FREEDOM.default_config(dataset), load_yaml(model_config_path("FREEDOM+BMA")))

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.lift = UserLift(dataset.user_item_lift().to(self.device))
        self.bma = alignment(config)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i, h = self.lines(self.train_adj)
        loss = self.freedom_loss(u, i + h, users, positives, negatives)
        return loss + self.bma(u[users], i[positives], self.lift(h)[users], h[positives])
