"""FREEDOM's degree-sensitive edge pruning of the user-item graph, redrawn every epoch.

Each epoch keeps ``(1 - dropout)`` of the training edges, drawn without replacement with
probability proportional to 1/sqrt(deg_u deg_i) (the edge's weight in Â), then
re-normalizes the kept edges symmetrically. Sampling without replacement uses the
exponential-keys form of weighted sampling (keep the edges with the smallest E/w,
E ~ Exp(1)), which has the same distribution as successive weighted draws
(``torch.multinomial(..., replacement=False)``) and is one vectorized top-k.

``sample(uniform=True)`` keeps a uniformly random subset of the same size instead (every edge
weight equal: Python's ``random.sample`` over the edges). LayerGCN (Zhou et al., ICDE'23) as
MMRec trains it alternates the two draws from epoch to epoch, degree-sensitive first.
"""
from __future__ import annotations

import torch

from mmfast.data.graphs import bipartite_normalized
from mmfast.data.interactions import Interactions
from mmfast.ops.sparse_graph import SparseGraph

FREEDOM_DEGREE_EPS = 1e-7  # FREEDOM normalizes by (degree + 1e-7)^-1/2


class DegreeSensitivePruning:
    """Draws the pruned, re-normalized Â of an epoch (``dropout`` = share removed): FREEDOM's,
    and LayerGCN's and MMGCF's. ``owner`` names the model in the error for a bad ``dropout``."""

    def __init__(self, train: Interactions, dropout: float, device: torch.device,
                 owner: str = "FREEDOM") -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner} dropout must be in [0, 1), got {dropout}")
        self.n_users, self.n_items = train.n_users, train.n_items
        self.device = torch.device(device)
        self.users = train.users().to(self.device)
        self.items = train.items.to(self.device)
        du = train.user_degrees().double().clamp(min=1)
        di = train.item_degrees().double().clamp(min=1)
        self.weights = (du[train.users()] * di[train.items]).rsqrt().to(self.device)
        self.keep = int(self.users.numel() * (1.0 - dropout))
        self.dropout = dropout

    def full(self) -> SparseGraph:
        return self._normalized(self.users, self.items)

    def sample(self, generator: torch.Generator | None = None, uniform: bool = False
               ) -> SparseGraph:
        """The pruned graph of one draw (degree-sensitive; ``uniform``: every edge alike)."""
        if self.dropout == 0.0:
            return self.full()
        e = torch.empty_like(self.weights).exponential_(generator=generator)
        keys = e if uniform else e / self.weights
        kept = torch.topk(keys, self.keep, largest=False, sorted=False).indices
        return self._normalized(self.users[kept], self.items[kept])

    def _normalized(self, users: torch.Tensor, items: torch.Tensor) -> SparseGraph:
        return bipartite_normalized(users, items, self.n_users, self.n_items,
                                    degree_eps=FREEDOM_DEGREE_EPS)
