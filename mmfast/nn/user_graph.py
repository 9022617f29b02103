"""Aggregation over the user-user co-interaction graph, resampled every epoch (DualGNN and
DRAGON's ``User_Graph_sample`` with their ``topk_sample``)."""
from __future__ import annotations

import math

import torch
from torch import nn

from mmfast.data.user_graph import UserGraph
from mmfast.ops import SparseGraph, spmm

USER_AGGR_MODES = ("softmax", "mean")


class UserGraphAggregation(nn.Module):
    """h_u = Σ_{j=1..k} a_uj e_{n_uj} (the user co-occurrence aggregation of DualGNN and of
    DRAGON's user-user homogeneous graph; the models then use e_u + h_u).

    Each epoch (:meth:`resample`), user u's k = ``k`` (40) neighbours n_u1..n_uk are the first k
    of its co-interaction list (:class:`mmfast.data.user_graph.UserGraph`, counts c). A user
    with 0 < L_u < k neighbours has its list padded to k as MMRec does: the p-th entry
    (p = L_u..k-1) copies entry r, r uniform in [0, p) (so a copy can copy a copy). A user
    without neighbours gets h_u = 0. The weights are a_u = softmax(c_u1..c_uk) over the padded
    list (``mode="softmax"``) or 1/k (``"mean"``). The draws come from the model's generator
    (resumable), all users at once: the copy chains are resolved by pointer jumping
    (ceil(log2 k) gathers). The epoch's weights form a SparseGraph [users, users] (repeated
    neighbours summed), so h = spmm(G, e) on either backend.
    """

    def __init__(self, graph: UserGraph, k: int = 40, mode: str = "softmax",
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"UserGraphAggregation: k must be a positive int, got {k!r}")
        if mode not in USER_AGGR_MODES:
            raise ValueError(f"user_aggr_mode must be one of {USER_AGGR_MODES}, got {mode!r}")
        self.k, self.mode, self.n_users = k, mode, graph.n_users
        # Frozen inputs rebuilt from the data: not saved in checkpoints.
        self.register_buffer("rowptr", graph.rowptr.to(device), persistent=False)
        self.register_buffer("neighbours", graph.neighbours.to(device), persistent=False)
        self.register_buffer("counts", graph.counts.to(device), persistent=False)
        self.graph: SparseGraph | None = None

    @torch.no_grad()
    def resample(self, generator: torch.Generator) -> SparseGraph:
        """Draw this epoch's neighbours and weights (see the class docstring); returns the
        graph, also kept as ``self.graph``."""
        dev, k = self.rowptr.device, self.k
        n = (self.rowptr[1:] - self.rowptr[:-1]).clamp(max=k)  # list entries kept, [U]
        pos = torch.arange(k, device=dev)
        draws = torch.rand(self.n_users, k, generator=generator, device=generator.device,
                           dtype=torch.float64).to(dev)
        copy_of = (draws * pos).floor().long().clamp(max=max(k - 1, 0))  # r in [0, p)
        src = torch.where(pos < n.unsqueeze(1), pos, copy_of)  # kept entries point to themselves
        for _ in range(math.ceil(math.log2(k)) if k > 1 else 0):
            src = src.gather(1, src)
        users = torch.nonzero(n > 0).flatten()
        at = self.rowptr[users].unsqueeze(1) + src[users]
        cols = self.neighbours[at]
        if self.mode == "softmax":
            weights = torch.softmax(self.counts[at], dim=1)
        else:
            weights = torch.full(at.shape, 1.0 / k, dtype=self.counts.dtype, device=dev)
        rows = users.unsqueeze(1).expand_as(at)
        self.graph = SparseGraph.from_coo(rows.reshape(-1), cols.reshape(-1), weights.reshape(-1),
                                          (self.n_users, self.n_users))
        return self.graph

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """h [n_users, d] from the user vectors [n_users, d], on this epoch's graph."""
        if self.graph is None:
            raise RuntimeError("UserGraphAggregation: call resample() first")
        return spmm(self.graph, users)

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, k={self.k}, mode={self.mode!r}"
