"""Modality-specific filter gates (DRepMRec's modal encoder; MGCN's purifier, AlignRec's gate)."""
from __future__ import annotations

import torch
from torch import nn

GATES = ("id", "self")


class FilterGate(nn.Module):
    """h = guide ⊙ σ(G c + g): a sigmoid gate computed from the modality input c [n, d] that
    filters (denoises) it before the relation graph.

    ``mode="id"`` (MGCN Eq. (2), the DRepMRec figure's dashed ID input): the gated vector is the
    entity's ID embedding, ``guide = e^{id}``; ``detach_guide`` (default) keeps every loss that
    passes through the gate from moving the ID embeddings, so the modal line stays decoupled
    from the behaviour line. ``mode="self"``: ``guide = c`` (a self-gate, no ID input).
    """

    def __init__(self, dim: int, mode: str = "id", *, detach_guide: bool = True) -> None:
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {mode!r}")
        self.mode, self.detach_guide = mode, bool(detach_guide)
        self.linear = nn.Linear(dim, dim)

    def forward(self, c: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Gated [n, d] from the modality input c [n, d] (and, for ``mode="id"``, the ID
        embeddings ids [n, d] of the same rows)."""
        gate = torch.sigmoid(self.linear(c))
        if self.mode == "self":
            return c * gate
        if ids is None or ids.shape != c.shape:
            got = None if ids is None else tuple(ids.shape)
            raise ValueError(f"FilterGate(mode='id') needs ID embeddings shaped like its input "
                             f"{tuple(c.shape)}, got {got}")
        return (ids.detach() if self.detach_guide else ids) * gate

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, detach_guide={self.detach_guide}"
