"""Behavior-Modal Alignment (BMA) of DRepMRec/DREAM (arXiv 2404.11119; MODELS.md §4.2-4.3),
as a plug-in for any model with a behaviour and a modal representation of users and items.

Names as in the authors' framework figure: **inter**-alignment pairs the two lines for the same
entity, (modal user, behaviour user) and (modal item, behaviour item); **intra**-alignment pairs
user with item inside one line. Every term is an in-batch InfoNCE through
:func:`mmfast.ops.solosim_loss` (cosine logits, temperature τ, one direction, as AlignRec's
CCA). ``detach_cross`` stops the inter-alignment gradient at the target (behaviour) line, the
"two independent lines" reading of the paper's decoupling claim. :meth:`fuse` is the fusion
after alignment: ``sum`` (the figure's E_G = Ē_B + Ē_M) or ``concat``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.ops import solosim_loss

BMA_FUSIONS = ("sum", "concat")


class BehaviorModalAlignment(nn.Module):
    """L_BMA = inter_weight · L_inter + intra_weight · L_intra on batch rows, with

    * L_inter = NCE(m_u, b_u) + NCE(m_i, b_i)   (same entity, across lines)
    * L_intra = NCE(b_u, b_i) + NCE(m_u, m_i)   (user ↔ item, within each line)

    NCE(a, b) = mean_r −log softmax_s(cos(a_r, b_s)/τ)[r]. Row r of each user tensor is the user
    of the batch's pair r and row r of each item tensor its positive item. ``intra_weight=None``
    uses ``inter_weight``. No parameters.
    """

    def __init__(self, *, temperature: float = 0.2, inter_weight: float = 1e-2,
                 intra_weight: float | None = None, detach_cross: bool = False,
                 fusion: str = "sum") -> None:
        super().__init__()
        if fusion not in BMA_FUSIONS:
            raise ValueError(f"fusion must be one of {BMA_FUSIONS}, got {fusion!r}")
        if not float(temperature) > 0:
            raise ValueError(f"BMA temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)
        self.inter_weight = float(inter_weight)
        self.intra_weight = self.inter_weight if intra_weight is None else float(intra_weight)
        self.detach_cross, self.fusion = bool(detach_cross), fusion

    def nce(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solosim_loss(a, b, self.temperature, normalize=True)

    def inter(self, b_u, b_i, m_u, m_i) -> torch.Tensor:
        """Inter-alignment: each modal vector against the behaviour vector of the same entity
        (the behaviour side detached when ``detach_cross``)."""
        if self.detach_cross:
            b_u, b_i = b_u.detach(), b_i.detach()
        return self.nce(m_u, b_u) + self.nce(m_i, b_i)

    def intra(self, b_u, b_i, m_u, m_i) -> torch.Tensor:
        """Intra-alignment: user against positive item inside the behaviour and the modal line."""
        return self.nce(b_u, b_i) + self.nce(m_u, m_i)

    def forward(self, b_u: torch.Tensor, b_i: torch.Tensor, m_u: torch.Tensor,
                m_i: torch.Tensor) -> torch.Tensor:
        # Each input enters two terms: normalized once here, the terms then take unit rows
        # (the same values as NCE on the raw rows; the gradients agree to rounding).
        b_u, b_i, m_u, m_i = (F.normalize(x, dim=1) for x in (b_u, b_i, m_u, m_i))
        loss = b_u.new_zeros(())
        if self.inter_weight:
            tb_u, tb_i = (b_u.detach(), b_i.detach()) if self.detach_cross else (b_u, b_i)
            inter = self._unit_nce(m_u, tb_u) + self._unit_nce(m_i, tb_i)
            loss = loss + self.inter_weight * inter
        if self.intra_weight:
            intra = self._unit_nce(b_u, b_i) + self._unit_nce(m_u, m_i)
            loss = loss + self.intra_weight * intra
        return loss

    def _unit_nce(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solosim_loss(a, b, self.temperature, normalize=False)

    def fuse(self, behavior: torch.Tensor, modal: torch.Tensor) -> torch.Tensor:
        """The final representation: behavior + modal, or [behavior ‖ modal]."""
        if self.fusion == "sum":
            return behavior + modal
        return torch.cat([behavior, modal], dim=-1)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, inter_weight={self.inter_weight}, "
                f"intra_weight={self.intra_weight}, detach_cross={self.detach_cross}, "
                f"fusion={self.fusion!r}")
