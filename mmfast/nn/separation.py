"""Separate generic/unique learning (SEA, SAND; MODELS.md §2.2-2.4) as pieces any model can use.

A modality's transformed features z^m are split at a fixed point into a generic half g^m and a
unique half u^m. The generic halves of two modalities are aligned by SoloSim (InfoNCE through
projection heads); each modality's unique half is pushed away from its generic half, by the CLUB
mutual-information upper bound (SEA) or by negative L2 (SAND's simple variant).
:class:`SeparateLearning` holds all of it behind the three hooks MODELS.md §2.6 names
(``split``, ``solo_sim``, ``distance``); a model calls it on its modality matrices, adds the
returned loss, and calls :meth:`SeparateLearning.after_backward` from its own ``after_backward``.

Reference: Zhuangzhuang He et al. "It is Never Too Late to Mend: Separate Learning for Multimedia
Recommendation." arXiv 2406.08270 v2 (SEA; v1 is SAND, "Boosting Multimedia Recommendation via
Separate Generic and Unique Awareness").
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from mmfast.nn.club import ClubNet
from mmfast.ops import club_learn, club_upper_bound, solosim_loss

DISTANCING = ("club", "neg_l2", "none")


def split_halves(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(generic, unique) = (z[:, :d/2], z[:, d/2:]): SEA's fixed split (Eq. 5-6 of v2)."""
    d = z.shape[-1]
    if d % 2:
        raise ValueError(f"split_halves: the generic/unique split needs an even width, got {d}")
    return z[..., : d // 2], z[..., d // 2:]


class ProjectionHead(nn.Sequential):
    """SEA's alignment head phi_m: Linear(d, H)-BN-ReLU-Linear(H, H)-BN-ReLU-Linear(H, O),
    output L2-normalized (MODELS.md §2.3). BatchNorm sees every item as one batch."""

    def __init__(self, in_dim: int, hidden: int = 64, out: int = 32) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x), dim=1)


class SeparateLearning(nn.Module):
    """SEA's auxiliary objective on two modalities (MODELS.md §2.3-2.4).

    ``generic_dims`` maps each modality to its generic width, the **anchor** first (SEA: image)
    and the other second (text, or TikTok's audio): SoloSim runs other -> anchor. The returned
    loss is ``alpha_contrast * L_solo + w * (L_dist^other + L_dist^anchor) / 2`` with
    ``w = ureg`` for CLUB and ``neg_l2_weight`` for negative L2.

    Quirk switches, each defaulting to the reference: ``solosim_symmetric`` (False: one
    direction), ``club_halve``/``club_clamp`` (the bound's 1/2 and max(0, .)), ``club_shared``
    (one q-net for both modalities), ``club_steps`` (50 Adam steps of q per batch, on detached
    pairs, after the model's backward and before its step), ``club_estimator``.
    """

    def __init__(
        self,
        generic_dims: Mapping[str, int],
        *,
        distancing: str = "club",
        temperature: float = 0.2,
        alpha_contrast: float = 0.012,
        ureg: float = 0.006,
        neg_l2_weight: float = 1.0,
        head_hidden: int = 64,
        head_out: int = 32,
        distance_dim: int = 32,
        solosim_symmetric: bool = False,
        club_hidden: int = 8,
        club_shared: bool = True,
        club_halve: bool = True,
        club_clamp: bool = True,
        club_estimator: str = "sampled",
        club_steps: int = 50,
    ) -> None:
        super().__init__()
        if len(generic_dims) != 2:
            raise ValueError(f"SeparateLearning aligns two modalities (an anchor and one other), "
                             f"got {list(generic_dims)}")
        if distancing not in DISTANCING:
            raise ValueError(f"distancing must be one of {DISTANCING}, got {distancing!r}")
        self.anchor, self.other = list(generic_dims)
        self.distancing, self.temperature = distancing, float(temperature)
        self.alpha_contrast, self.ureg = float(alpha_contrast), float(ureg)
        self.neg_l2_weight, self.solosim_symmetric = float(neg_l2_weight), bool(solosim_symmetric)
        self.club_halve, self.club_clamp = bool(club_halve), bool(club_clamp)
        self.club_estimator, self.club_steps = club_estimator, int(club_steps)
        self.heads = nn.ModuleDict({m: ProjectionHead(d, head_hidden, head_out)
                                    for m, d in generic_dims.items()})
        if distancing != "none":
            self.psi_generic = nn.ModuleDict({m: nn.Linear(d, distance_dim)
                                              for m, d in generic_dims.items()})
            self.psi_unique = nn.ModuleDict({m: nn.Linear(d, distance_dim)
                                             for m, d in generic_dims.items()})
        if distancing == "neg_l2" and self.neg_l2_weight:
            warnings.warn("SeparateLearning: negative-L2 distancing is unbounded below; watch the "
                          "loss (lower neg_l2_weight if it runs away)", stacklevel=2)
        if distancing == "club":
            # One q-net shared by both modalities (the reference), or one per modality.
            names = ["shared"] if club_shared else list(generic_dims)
            self.q = nn.ModuleDict({n: ClubNet(distance_dim, distance_dim, club_hidden)
                                    for n in names})
        self._optimizers: dict[str, torch.optim.Adam] = {}
        self._generator: torch.Generator | None = None
        self._pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def attach(self, model: nn.Module, lr: float) -> None:
        """Register the q-nets' Adam (lr = the model's, as SEA does) and the permutation stream
        with ``model`` (a ``mmfast.models.Recommender``), so the trainer keeps q out of the model optimizer and saves both."""
        if self.distancing != "club":
            return
        for name, q in self.q.items():
            self._optimizers[name] = model.add_auxiliary_optimizer(
                f"club_q_{name}", torch.optim.Adam(q.parameters(), lr=lr))
        self._generator = model.add_generator("club_permutation")

    # ------------------------------------------------------------ the three hooks
    split = staticmethod(split_halves)

    def solo_sim(self, generic_other: torch.Tensor, generic_anchor: torch.Tensor) -> torch.Tensor:
        """InfoNCE of phi_other(g_other) against phi_anchor(g_anchor) over all given rows."""
        with record_function("sea.solosim"):
            a = self.heads[self.other](generic_other)
            b = self.heads[self.anchor](generic_anchor)
            return solosim_loss(a, b, self.temperature, normalize=False,
                                symmetric=self.solosim_symmetric)

    def distance(self, modality: str, generic: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
        """The distancing term of one modality (keeps the detached pair for the q steps)."""
        if self.distancing == "none":
            return generic.new_zeros(())
        with record_function("sea.distancing"):
            x = self.psi_generic[modality](generic)
            y = self.psi_unique[modality](unique)
            if self.distancing == "neg_l2":
                return -(x - y).square().mean()
            self._pairs[modality] = (x.detach(), y.detach())
            return club_upper_bound(x, y, self._q(modality), estimator=self.club_estimator,
                                    halve=self.club_halve, clamp=self.club_clamp,
                                    generator=self._generator)

    # ------------------------------------------------------------ model-facing
    def forward(self, z: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The auxiliary loss from each modality's transformed features z^m [rows, d_m]."""
        parts = {m: self.split(z[m]) for m in (self.other, self.anchor)}
        loss = self.alpha_contrast * self.solo_sim(parts[self.other][0], parts[self.anchor][0])
        if self.distancing != "none":
            weight = self.ureg if self.distancing == "club" else self.neg_l2_weight
            dist = sum(self.distance(m, g, u) for m, (g, u) in parts.items())
            loss = loss + weight * dist / 2
        return loss

    def after_backward(self) -> None:
        """SEA's q-net learning: ``club_steps`` Adam steps on the pairs of the last forward.
        q took no gradient from the model loss (the bound detaches its parameters)."""
        if self.distancing != "club" or not self._pairs:
            return
        if not self._optimizers:
            raise RuntimeError("SeparateLearning: call attach(model, lr) before training")
        order = [m for m in (self.other, self.anchor) if m in self._pairs]
        with record_function("sea.club_learn"):
            self._learn(order)
        self._pairs.clear()

    def _learn(self, order: list[str]) -> None:
        if "shared" in self.q:
            club_learn([self._pairs[m][0] for m in order], [self._pairs[m][1] for m in order],
                       self.q["shared"], self._optimizers["shared"], self.club_steps)
        else:
            for m in order:
                club_learn(*self._pairs[m], self.q[m], self._optimizers[m], self.club_steps)

    def _q(self, modality: str) -> ClubNet:
        return self.q["shared"] if "shared" in self.q else self.q[modality]


def log2_scale(loss: torch.Tensor) -> torch.Tensor:
    """A natural-log loss in base 2 (SEA's BPR uses log2: the usual BPR times 1/ln 2)."""
    return loss / math.log(2.0)


def ordered_modalities(available: Sequence[str], anchor: str, model: str) -> list[str]:
    """[anchor, other] from a dataset's modalities, or a clear error."""
    available = list(available)
    if len(available) < 2:
        raise ValueError(f"{model} aligns two modalities and the dataset has "
                         f"{len(available)} ({available}): it needs {anchor!r} plus one other")
    if anchor not in available:
        raise ValueError(f"{model}: the anchor modality {anchor!r} is not among the dataset's "
                         f"{available} (set anchor_modality)")
    others = [m for m in available if m != anchor]
    if len(others) > 1:
        raise ValueError(f"{model} aligns two modalities, the dataset has {available}: choose two "
                         f"with --set modalities=[{anchor},{others[0]}]")
    return [anchor, others[0]]
