"""Graph propagation, forward + backward: mmfast kernels vs the torch.sparse.mm chain.

Graph: the normalized user-item adjacency (MODELS.md G1) at Amazon Baby scale (the real
Baby training graph when ../shared/data is present, else a synthetic graph of Baby's shape)
and at 10x that scale (synthetic), embeddings of width 64.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from conftest import DEVICE
from mmfast.data import Interactions, load
from mmfast.data.graphs import build_normalized_adjacency
from mmfast.ops import SparseGraph, propagate, spmm

SHARED_DATA = Path(os.environ.get("MMFAST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# (users, items, training edges)
SCALES = {"baby": (19_445, 7_050, 118_551), "baby10x": (194_450, 70_500, 1_185_510)}
ROUNDS = {"baby": 10, "baby10x": 3}
D = 64


def synthetic_train(n_users: int, n_items: int, n_edges: int, seed: int = 0) -> Interactions:
    """Distinct (user, item) pairs with skewed user activity and item popularity."""
    gen = torch.Generator().manual_seed(seed)
    user_w = torch.rand(n_users, generator=gen) ** 2 + 0.02
    item_w = 1.0 / torch.arange(1, n_items + 1).double() ** 0.8
    pairs = torch.empty(0, dtype=torch.long)
    while pairs.numel() < n_edges:  # draw extra, keep distinct pairs, stop at the target count
        u = torch.multinomial(user_w, n_edges, replacement=True, generator=gen)
        i = torch.multinomial(item_w, n_edges, replacement=True, generator=gen)
        pairs = torch.unique(torch.cat([pairs, u * n_items + i]))
    pairs = pairs[torch.randperm(pairs.numel(), generator=gen)[:n_edges]]
    return Interactions.from_pairs(pairs // n_items, pairs % n_items, n_users, n_items)


@functools.lru_cache(maxsize=None)
def user_item_graph(scale: str) -> SparseGraph:
    if scale == "baby" and (SHARED_DATA / "baby").is_dir():
        train = load("baby", root=SHARED_DATA).train
    else:
        train = synthetic_train(*SCALES[scale])
    return build_normalized_adjacency(train).to(DEVICE)


def forward_backward(op, graph: SparseGraph, backend: str):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(graph.n_cols, D, generator=gen).to(DEVICE).requires_grad_()
    grad = torch.randn(graph.n_rows, D, generator=gen).to(DEVICE)

    def step():
        x.grad = None
        op(graph, x, backend).backward(grad)

    return step


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_spmm(compare, scale, backend):
    graph = user_item_graph(scale)
    step = forward_backward(lambda g, x, b: spmm(g, x, backend=b), graph, backend)
    compare(f"spmm fwd+bwd {scale}", backend, step, rounds=ROUNDS[scale])


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("scale", list(SCALES))
def test_propagate(compare, scale, layers, backend):
    graph = user_item_graph(scale)
    step = forward_backward(
        lambda g, x, b: propagate(g, x, layers, "mean", backend=b), graph, backend
    )
    compare(f"propagate {layers}L fwd+bwd {scale}", backend, step, rounds=ROUNDS[scale])
