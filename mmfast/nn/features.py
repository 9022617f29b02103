"""Item features per modality: the raw table (frozen or fine-tuned) and its projection."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def check_features(raw: Mapping[str, torch.Tensor], owner: str) -> None:
    """Raise a clear error for a modality table holding NaN or infinite values."""
    for m, x in raw.items():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{owner}: the {m} features hold NaN or infinite values")


class ModalityProjection(nn.Module):
    """e_i^m = W_m x_i^m + b_m for each modality m (FREEDOM Eq. (5), MGCN/AlignRec's
    projection of raw features), with the raw tables x^m held as parameters that are
    fine-tuned (``trainable=True``, as MMRec's FREEDOM does) or frozen.

    ``forward(m, rows)`` projects only the requested rows: the same values and gradients as
    projecting every item and indexing, at a fraction of the work.
    """

    def __init__(
        self, raw: Mapping[str, torch.Tensor], out_dim: int, *, trainable: bool = False
    ) -> None:
        super().__init__()
        if not raw:
            raise ValueError("ModalityProjection: no modality features given")
        check_features(raw, "ModalityProjection")
        self.features = nn.ParameterDict(
            {m: nn.Parameter(t.detach().clone().float(), requires_grad=trainable)
             for m, t in raw.items()})
        self.projections = nn.ModuleDict(
            {m: nn.Linear(t.shape[1], out_dim) for m, t in raw.items()})

    @property
    def modalities(self) -> list[str]:
        return list(self.projections)

    def forward(self, modality: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[len(rows) or n_items, out_dim] projections of modality ``modality``."""
        x = self.features[modality]
        return self.projections[modality](x if rows is None else x[rows])
