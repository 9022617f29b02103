"""Fusing a modal line's per-modality branches into one same-width representation."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

MODAL_FUSES = ("sum", "mean", "attn")


class ModalityFusion(nn.Module):
    """E_M = fuse(E^1, ..., E^M), each [n, d]: ``sum`` (the DRepMRec figure's ⊕), ``mean``, or
    ``attn`` (MGCN Eq. (10)-(11): per row, softmax over modalities of q(E^m) with the shared
    query q = Linear(d, d) -> tanh -> Linear(d, 1, no bias), then the weighted sum). One branch
    is returned as it is for ``sum``/``mean`` (``attn`` weighs it 1)."""

    def __init__(self, dim: int, mode: str = "sum") -> None:
        super().__init__()
        if mode not in MODAL_FUSES:
            raise ValueError(f"modal_fuse must be one of {MODAL_FUSES}, got {mode!r}")
        self.mode = mode
        if mode == "attn":
            self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(),
                                       nn.Linear(dim, 1, bias=False))

    def forward(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        if not branches:
            raise ValueError("ModalityFusion: no modality branches given")
        if self.mode == "attn":
            stacked = torch.stack(list(branches), dim=1)           # [n, M, d]
            weights = torch.softmax(self.query(stacked), dim=1)   # [n, M, 1]
            return (weights * stacked).sum(dim=1)
        total = branches[0]
        for b in branches[1:]:
            total = total + b
        return total / len(branches) if self.mode == "mean" else total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
