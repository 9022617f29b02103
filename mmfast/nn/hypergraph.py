"""Learnable hypergraphs over items and users (LGMRec, Guo et al., AAAI'24, Sec. "Global
Hypergraph Embedding"): soft hyperedge memberships sampled by Gumbel-softmax, masked by
dropout, and the two-step hypergraph convolution that passes item vectors through the
hyperedges.

Membership (the paper's hyperedge dependencies): for modality m with features X^m [I, d_m]
and a learnable hyperedge embedding V^m [d_m, A] (A = ``hyper_num`` hyperedges),

    H_I^m = GumbelSoftmax_tau(X^m V^m),   H_U^m = GumbelSoftmax_tau(R (X^m V^m)),

R the binary user x item interaction matrix (sparse), each row a soft assignment of a node to
the A hyperedges. GumbelSoftmax_tau(z) = softmax((z + g) / tau) row-wise, g = -log(Exp(1))
noise (:func:`gumbel_softmax`). During training the memberships are then masked by dropout
with keep rate ``keep_rate`` (kept entries scaled by 1 / keep_rate, :func:`keep_dropout`).

Convolution (the paper's hypergraph message passing): L layers of

    E_I^(l+1) = H_I (H_I^T E_I^(l)),   E_U = H_U (H_I^T E_I^(L-1)),

from E_I^(0) = the items' collaborative embeddings (:class:`HypergraphConv`). The hyperedge
matrices are [nodes, A] with A small: they are dense, and every product here is a thin GEMM.

The random draws take a ``torch.Generator`` (a model's :meth:`add_generator` stream), so a
resumed run draws the same noise.
"""
from __future__ import annotations

import torch
from torch import nn


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """softmax((logits + g) / tau) over the last dimension, g = -log(e), e ~ Exp(1) drawn from
    ``generator`` (soft samples, as ``F.gumbel_softmax(hard=False)``)."""
    e = torch.empty_like(logits).exponential_(generator=generator)
    return torch.softmax((logits - e.log()) / tau, dim=-1)


def keep_dropout(x: torch.Tensor, keep_rate: float, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """``nn.Dropout(p=1 - keep_rate)`` in training mode with draws from ``generator``: each
    entry kept with probability ``keep_rate`` and scaled by 1 / keep_rate, else 0."""
    if not 0.0 <= keep_rate <= 1.0:
        raise ValueError(f"keep_rate must lie in [0, 1], got {keep_rate}")
    if keep_rate == 1.0:
        return x
    if keep_rate == 0.0:
        return torch.zeros_like(x)
    mask = torch.empty_like(x).bernoulli_(keep_rate, generator=generator)
    return x * mask / keep_rate


class HypergraphConv(nn.Module):
    """The convolution above: ``layers`` rounds of item -> hyperedge -> item message passing;
    the users read the last round's hyperedge vectors through their own memberships. No
    parameters."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the hypergraph convolution needs at least one layer, got {layers}")
        self.layers = int(layers)

    def forward(self, item_hyper: torch.Tensor, user_hyper: torch.Tensor, items: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, d], items [I, d]) from memberships H_I [I, A], H_U [U, A] and item
        vectors E_I^(0) [I, d]."""
        edges = self.hyperedges(item_hyper, items)
        return user_hyper @ edges, item_hyper @ edges

    def hyperedges(self, item_hyper: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The last round's hyperedge vectors H_I^T E_I^(L-1), [A, d]: both outputs are the
        memberships times these (so they have rank at most A)."""
        edges = item_hyper.T @ items                  # H_I^T E_I^(0): [A, d]
        for _ in range(self.layers - 1):
            edges = item_hyper.T @ (item_hyper @ edges)
        return edges
