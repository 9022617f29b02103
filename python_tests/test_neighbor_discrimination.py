"""DA-MRS's neighbour discrimination in row blocks against the dense reference (MMRec's form):
loss and gradients in float64 over block sizes, weights with zeros, repeated items, one item,
k up to n_items; gradcheck; a clear error for a bad k."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast.nn.neighbor_discrimination import (
    neighbor_discrimination,
    neighbor_discrimination_reference,
)
from trainer_helpers import one_thread  # noqa: F401 (autouse fixture)


def _vectors(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()
            for _ in range(3)]


def _both(hs, items, weights, k, rows):
    got = neighbor_discrimination(hs, items, weights, k, 0.2, block_rows=rows)
    want = neighbor_discrimination_reference(hs, items, weights, k, 0.2)
    return got, want


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("weighted", [False, True])
def test_blocks_match_the_dense_reference(rows, weighted):
    n, b = 83, 50
    hs = _vectors(n, 19)
    g = torch.Generator().manual_seed(1)
    items = torch.randint(0, n, (b,), generator=g)
    items[:6] = 5  # repeats
    weights = None
    if weighted:
        weights = (torch.rand(b, generator=g) > 0.4).double()
        weights[0] = 1.0
    got, want = _both(hs, items, weights, 10, rows)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(got * 2.5, hs)
    gb = torch.autograd.grad(want * 2.5, hs)
    for a, w in zip(ga, gb):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,b,k", [(12, 1, 3), (20, 20, 10), (9, 4, 4)], ids=["one item", "k=n/2", "2k<n"])
def test_edge_shapes(n, b, k):
    hs = _vectors(n, 5, seed=2)
    items = torch.arange(b) % n
    got, want = _both(hs, items, None, k, 3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, w in zip(torch.autograd.grad(got, hs), torch.autograd.grad(want, hs)):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)


def test_float32_matches_the_reference():
    hs = _vectors(300, 64, seed=3, dtype=torch.float32)
    items = torch.unique(torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(4)))
    got, want = _both(hs, items, None, 10, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, w in zip(torch.autograd.grad(got, hs), torch.autograd.grad(want, hs)):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    raw = [torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
           for _ in range(3)]
    items = torch.tensor([0, 3, 3, 8])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)

    def f(*r):
        return neighbor_discrimination([F.normalize(x, dim=1) for x in r], items, weights, 3,
                                       0.2, block_rows=3)

    assert torch.autograd.gradcheck(f, raw, fast_mode=True)


def test_backend_switch_and_bad_k():
    hs = _vectors(10, 4)
    items = torch.arange(4)
    a = neighbor_discrimination(hs, items, None, 2, 0.2, backend="torch")
    b = neighbor_discrimination_reference(hs, items, None, 2, 0.2)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k must be in"):
        neighbor_discrimination(hs, items, None, 11, 0.2)
    with pytest.raises(ValueError, match="three graphs"):
        neighbor_discrimination(hs[:2], items, None, 2, 0.2)
