"""DRepMRec's Similarity Supervised Signal (S3; MODELS.md §4.3): keeps a learned representation
faithful to the similarities of the frozen raw features (countering "modal information
forgetting"), in the form of AlignRec's similarity-preservation loss."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cosine_similarity_target(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """C = mean over the given feature matrices x^m [n, d_m] of cos-sim(x^m) [n, n], a constant
    (no gradient). A zero row has similarity 0 to every row."""
    if not features:
        raise ValueError("cosine_similarity_target: no feature matrices given")
    with torch.no_grad():
        total = None
        for x in features:
            x = F.normalize(x, dim=1)
            c = x @ x.T
            total = c if total is None else total + c
        return total / len(features)


class SimilaritySupervision(nn.Module):
    """L_S3 = ‖E Eᵀ − C‖_F / n for representation rows E [n, d] and the constant target
    C = :func:`cosine_similarity_target` of the same rows' raw features x^m [n, d_m].
    ``normalize`` compares cosine similarities (E row-normalized) instead of dot products.

    The n x n matrices are never formed (``dense=False``, the default): with X̂_m the
    row-normalized features, ‖EEᵀ − C‖² = ‖EᵀE‖² − (2/M) Σ_m ‖EᵀX̂_m‖² + (1/M²) Σ_{m,m'}
    ‖X̂_mᵀX̂_m'‖²: the terms with gradients cost O(n d d_m) instead of O(n² d_m), and the
    constant ‖C‖² comes from d_m x d_m' Gram matrices when Σ d_m < n, else from C (features
    wider than the batch). ``dense=True`` computes the n x n form (the reference the tests
    compare with). No parameters.
    """

    def __init__(self, normalize: bool = False, *, dense: bool = False) -> None:
        super().__init__()
        self.normalize, self.dense = bool(normalize), bool(dense)

    def forward(self, rep: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        n = rep.shape[0]
        if not features or any(x.shape[0] != n for x in features):
            raise ValueError(f"SimilaritySupervision: need feature rows for each of the {n} "
                             f"rows, got {[tuple(x.shape) for x in features]}")
        if self.normalize:
            rep = F.normalize(rep, dim=1)
        if self.dense:
            target = cosine_similarity_target(features).to(rep.dtype)
            return torch.linalg.matrix_norm(rep @ rep.T - target) / n
        with torch.no_grad():
            xs = [F.normalize(x.to(rep.dtype), dim=1) for x in features]
            m = len(xs)
            width = sum(x.shape[1] for x in xs)
            if width < n:  # ‖C‖² from d_a x d_b Gram matrices, O(n width²)
                const = sum((a.T @ b).square().sum() for a in xs for b in xs) / m**2
            else:  # wide features: from C itself, O(n² width)
                const = cosine_similarity_target(xs).square().sum()
        own = (rep.T @ rep).square().sum()
        cross = sum((rep.T @ x).square().sum() for x in xs) / m
        return (own - 2 * cross + const).clamp(min=torch.finfo(rep.dtype).tiny).sqrt() / n

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, dense={self.dense}"
