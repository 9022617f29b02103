"""AlignRec's pieces (MODELS.md §3): the ID-gated purifier and the user-item and
similarity-preservation losses of stage 2, and the inter-content aligner stage 1 pre-trains.

Stage 2 (:class:`BehaviorPurifier`, :func:`ui_cosine_loss`, :func:`similarity_preservation_loss`)
follows the authors' code; the content-ID InfoNCE is :func:`mmfast.ops.solosim_loss` itself.
Stage 1 (:class:`ContentAligner`) is mmfast's own feature-level stand-in for the paper's BEiT-3
pre-training, which the public code does not include (see ``docs/alignrec.md``).

Reference: Yifan Liu, Kangning Zhang, Xiangyuan Ren, Yanhua Huang, Jiarui Jin, Yingjie Qin,
Ruilong Su, Ruiwen Xu, Yong Yu, Weinan Zhang. "AlignRec: Aligning and Training in Multimodal
Recommendations." CIKM 2024.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.ops import solosim_loss


class BehaviorPurifier(nn.Module):
    """m_i = e_i^id ⊙ sigmoid(W_g c_i + b_g) (MODELS.md §3.3 step 2, MGCN's behavior-guided
    purifier): the ID embedding gates which content dimensions pass."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return ids * torch.sigmoid(self.gate(content))


def ui_cosine_loss(users: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[UIA] 1 - mean_b cos(z_u, z_i+)."""
    return 1.0 - F.cosine_similarity(users, positives, dim=-1).mean()


def similarity_preservation_loss(rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """||M M^T - C||_F / B with M the batch's multimodal rows [B, d] (a raw dot product, as the
    reference) and C the cosine similarities of the batch items' features [B, d_f], detached."""
    with torch.no_grad():
        f = F.normalize(features, dim=1)
        target = f @ f.T
    return torch.linalg.matrix_norm(rows @ rows.T - target) / rows.shape[0]


class ContentAligner(nn.Module):
    """Stage 1 (inter-content alignment): one unified vector per item from its modality
    features.

    Each modality m has an encoder E_m (Linear-GELU-Linear, d_m -> ``hidden`` -> ``dim``); the
    unified vector is the LayerNorm of the mean of the encodings of the modalities that are
    present. Training masks, for a ``mask_ratio`` share of the batch's items, every modality but
    one (drawn per item), so the unified vector must predict what it did not see. Loss:
    symmetric InfoNCE between every pair of modality encodings (``solosim_loss``, both
    directions, temperature ``temperature``) plus ``recon_weight`` x the mean squared error of
    each modality's decoder D_m(unified) against the (standardized) features. The decoders
    see the unified vector only, so the vector has to carry every modality.
    """

    def __init__(self, dims: Mapping[str, int], dim: int = 128, hidden: int = 256, *,
                 temperature: float = 0.2, recon_weight: float = 1.0,
                 mask_ratio: float = 0.3) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"ContentAligner aligns two or more modalities, got {list(dims)}")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"ContentAligner: mask_ratio must be in [0, 1], got {mask_ratio}")
        self.modalities = list(dims)
        self.temperature, self.recon_weight = float(temperature), float(recon_weight)
        self.mask_ratio = float(mask_ratio)
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.GELU(),
                                                        nn.Linear(hidden, dim))
                                       for m, d in dims.items()})
        self.decoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                                        nn.Linear(hidden, d))
                                       for m, d in dims.items()})
        self.norm = nn.LayerNorm(dim)

    def unify(self, x: Mapping[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        """The unified vectors [n, dim]; ``keep`` [n, M] (0/1) says which modalities each row
        sees (None: all)."""
        return self._fuse(torch.stack([self.encoders[m](x[m]) for m in self.modalities], 1), keep)

    def _fuse(self, enc: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """LayerNorm of the mean of the kept encodings; enc [n, M, dim]."""
        if keep is None:
            return self.norm(enc.mean(dim=1))
        w = keep.to(enc.dtype).unsqueeze(-1)
        return self.norm((enc * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0))

    def keep_mask(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """[n, M] 0/1: a ``mask_ratio`` share of the rows keep one modality (drawn), the rest all."""
        m = len(self.modalities)
        masked = torch.rand(n, generator=generator, device=device) < self.mask_ratio
        only = torch.randint(0, m, (n,), generator=generator, device=device)
        keep = torch.ones(n, m, dtype=torch.bool, device=device)
        one = F.one_hot(only, m).bool()
        return torch.where(masked[:, None], one, keep)

    def loss(self, x: Mapping[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        enc = {m: self.encoders[m](x[m]) for m in self.modalities}
        align = x[self.modalities[0]].new_zeros(())
        pairs = 0
        for a in range(len(self.modalities)):
            for b in range(a + 1, len(self.modalities)):
                align = align + solosim_loss(enc[self.modalities[a]], enc[self.modalities[b]],
                                             self.temperature, symmetric=True)
                pairs += 1
        unified = self._fuse(torch.stack([enc[m] for m in self.modalities], 1), keep)
        recon = sum(F.mse_loss(self.decoders[m](unified), x[m]) for m in self.modalities)
        return align / pairs + self.recon_weight * recon / len(self.modalities)
