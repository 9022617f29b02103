"""Item features per modality: the raw table (frozen or fine-tuned) and its projection."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.ops import select_rows


def check_features(raw: Mapping[str, torch.Tensor], owner: str) -> None:
    """Raise a clear error for a modality table holding NaN or infinite values."""
    for m, x in raw.items():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{owner}: the {m} features hold NaN or infinite values")


class FeatureTables(nn.Module):
    """One [n_items, d_m] table per modality, looked up as ``tables[m]``: parameters when
    ``trainable``, else non-persistent buffers (not in ``state_dict``)."""

    def __init__(self, raw: Mapping[str, torch.Tensor], *, trainable: bool) -> None:
        super().__init__()
        self.trainable = trainable
        for m, t in raw.items():
            table = t.detach().clone().float()
            if trainable:
                self.register_parameter(m, nn.Parameter(table))
            else:
                self.register_buffer(m, table, persistent=False)
        self._names = list(raw)

    def __getitem__(self, modality: str) -> torch.Tensor:
        return getattr(self, modality)

    def __contains__(self, modality: object) -> bool:
        return modality in self._names

    def keys(self) -> list[str]:
        return list(self._names)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not self.trainable:  # checkpoints from before 2026-12-02 saved frozen tables too
            for m in self._names:
                state_dict.pop(prefix + m, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ModalityProjection(nn.Module):
    """e_i^m = W_m x_i^m + b_m for each modality m (FREEDOM Eq. (5), MGCN/AlignRec's
    projection of raw features), with the raw tables x^m fine-tuned (``trainable=True``, as
    MMRec's FREEDOM does: parameters, saved in checkpoints) or frozen (buffers rebuilt from
    the dataset, kept out of checkpoints: a 4096-d table is ~100 MB at Amazon scale).

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
        self.features = FeatureTables(raw, trainable=trainable)
        self.projections = nn.ModuleDict(
            {m: nn.Linear(t.shape[1], out_dim) for m, t in raw.items()})

    @property
    def modalities(self) -> list[str]:
        return list(self.projections)

    def forward(self, modality: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[len(rows) or n_items, out_dim] projections of modality ``modality``."""
        x = self.features[modality]
        return self.projections[modality](x if rows is None else select_rows(x, rows))

    def bpr_loss(self, modality: str, users: torch.Tensor, positives: torch.Tensor,
                 negatives: torch.Tensor) -> torch.Tensor:
        """mean over the batch of -log sigmoid(<u, e_p^m> - <u, e_n^m>) (FREEDOM's modality
        BPR term, ``bpr_loss(users, self(m, positives), self(m, negatives))``), for ``users``
        [batch, out_dim] and item ids ``positives``/``negatives``.

        Computed as <u W_m, x_p^m - x_n^m>: the bias b_m cancels in the difference (its
        gradient is exactly zero either way), and one [batch, out_dim] x [out_dim, d_m] product
        of the users replaces the projections of the positive and the negative rows, which
        halves the products forward and backward. The same value up to float rounding.
        """
        weight = self.projections[modality].weight  # [out_dim, d_m]
        x = self.features[modality]
        diff = ((users @ weight) * (select_rows(x, positives) - select_rows(x, negatives))).sum(-1)
        return -F.logsigmoid(diff).mean()
