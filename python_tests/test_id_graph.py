"""LightGCNEmbeddings: one storage for the user and item tables, so E^(0) is a view."""
from __future__ import annotations

import torch
from torch import nn

from conftest import randn, random_graph
from mmfast.nn import LightGCNEmbeddings
from mmfast.ops import propagate


def reference_ego(ids):
    return torch.cat([ids.user.weight, ids.item.weight])


def test_ego_is_a_view_with_cat_values_and_gradients():
    torch.manual_seed(0)
    ids = LightGCNEmbeddings(7, 5, 6).double()
    ego = ids.ego()
    assert ego.untyped_storage().data_ptr() == ids.user.weight.untyped_storage().data_ptr()
    assert torch.equal(ego, reference_ego(ids))
    graph = random_graph(12, 12, symmetric=True, seed=1)
    weight = randn(12, 6, seed=2)
    grads = []
    for make in (LightGCNEmbeddings.ego, reference_ego):
        ids.zero_grad(set_to_none=True)
        (propagate(graph, make(ids), 2) * weight).sum().backward()
        grads.append((ids.user.weight.grad.clone(), ids.item.weight.grad.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert torch.autograd.gradcheck(lambda u, i: propagate(graph, torch.cat([u, i]), 1),
                                    (ids.user.weight.detach().clone().requires_grad_(),
                                     ids.item.weight.detach().clone().requires_grad_()))


def test_same_initial_values_and_ties_after_moves_and_loads():
    torch.manual_seed(3)
    ids = LightGCNEmbeddings(4, 3, 5)
    torch.manual_seed(3)
    user, item = nn.Embedding(4, 5), nn.Embedding(3, 5)
    nn.init.xavier_uniform_(user.weight)
    nn.init.xavier_uniform_(item.weight)
    assert torch.equal(ids.user.weight, user.weight) and torch.equal(ids.item.weight, item.weight)
    ids.double()
    assert ids.ego().grad_fn is not None and "JoinedRows" in type(ids.ego().grad_fn).__name__
    other = LightGCNEmbeddings(4, 3, 5).double()
    other.load_state_dict(ids.state_dict())
    assert torch.equal(other.ego(), ids.ego())
    # untied by hand: E^(0) falls back to a copy, with the same values
    other.item.weight = nn.Parameter(other.item.weight.detach().clone())
    assert "Cat" in type(other.ego().grad_fn).__name__ and torch.equal(other.ego(), ids.ego())
