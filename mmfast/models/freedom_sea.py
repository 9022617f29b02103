"""FREEDOM+SEA (``XFREEDOM`` in the SEA authors' logs, MODELS.md §2.6): FREEDOM with SEA's
separate learning on its 64-d modality projections, each split 32 generic / 32 unique.

The projections of all items feed :class:`mmfast.nn.SeparateLearning` every batch (SoloSim
text -> image, CLUB distancing with 50 q-net steps after the model's backward); the rest is
FREEDOM unchanged. The defaults follow the logged run: heads 32 -> 33 -> 33 -> 63 (the CLI's
hidden_dim 33, out_dim 63), dropout 0.8, reg_weight 0, lr 1e-3.

Reference: Zhuangzhuang He et al. "It is Never Too Late to Mend: Separate Learning for
Multimedia Recommendation." arXiv 2406.08270 v2, Table 3 (plug-in results).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mmfast.configs import load_yaml, merge, model_config_path
from mmfast.data.dataset import Dataset
from mmfast.models.freedom import FREEDOM
from mmfast.models.registry import register
from mmfast.models.sea import aux_rows, check_aux_rows, separate_learning
from mmfast.nn import ordered_modalities


@register("FREEDOM+SEA")
class FREEDOMSEA(FREEDOM):
    """FREEDOM plus SEA's auxiliary objective. Config: ``configs/model/FREEDOM+SEA.yaml``."""

    @classmethod
    def default_config(cls, dataset: str | None = None) -> dict[str, Any]:
        """FREEDOM's defaults with ``FREEDOM+SEA.yaml`` (SEA's keys and the logged setting)
        over them."""
        return merge(FREEDOM.default_config(dataset), load_yaml(model_config_path("FREEDOM+SEA")))

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.sea_modalities = ordered_modalities(self.modal.modalities,
                                                 str(config["anchor_modality"]), "FREEDOM+SEA")
        width = int(config["feat_embed_dim"])
        if width % 2:
            raise ValueError(f"FREEDOM+SEA splits the {width}-d modality projections in half: "
                             "feat_embed_dim must be even")
        self.aux_rows = check_aux_rows(str(config["aux_rows"]))
        self.separate = separate_learning(config, {m: width // 2 for m in self.sea_modalities})
        club_lr = config.get("club_lr")
        self.separate.attach(self, float(config["learning_rate"] if club_lr is None else club_lr))

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        loss = super().calculate_loss(users, positives, negatives)
        rows = aux_rows(self.aux_rows, positives, negatives)
        return loss + self.separate({m: self.modal(m, rows) for m in self.sea_modalities})

    def after_backward(self) -> None:
        self.separate.after_backward()
