"""select_rows against table[index]: values, bit-identical gradients, gradcheck, odd shapes,
bad input, and the CUDA path against the CPU."""
from __future__ import annotations

import pytest
import torch

from conftest import randn, requires_cuda
from mmfast.ops import select_rows


def grads(fn, table, index, weight):
    t = table.detach().clone().requires_grad_()
    (fn(t, index) * weight).sum().backward()
    return t.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("width", [1, 5, 33, 64, 130])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_indexing(dtype, width, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        table = randn(37, width, seed=width, dtype=dtype)
        gen = torch.Generator().manual_seed(width)
        index = torch.randint(0, 37, (300,), generator=gen)  # many duplicates
        index[:5] = 36  # the last row, repeated
        weight = randn(300, width, seed=width + 1, dtype=dtype)
        assert torch.equal(select_rows(table, index), table[index])
        ours = grads(select_rows, table, index, weight)
        ref = grads(lambda t, i: t[i], table, index, weight)
        if threads == 1:
            assert torch.equal(ours, ref)  # same sums in the same order
        else:  # ATen's parallel accumulation may order them otherwise; ours stays in index order
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert torch.allclose(ours, ref, rtol=tol, atol=tol)
            assert torch.equal(ours, grads(select_rows, table, index, weight))
    finally:
        torch.set_num_threads(before)


def test_gradcheck_and_odd_shapes():
    table = randn(6, 3, seed=2).requires_grad_()
    index = torch.tensor([5, 0, 5, 2])
    assert torch.autograd.gradcheck(lambda t: select_rows(t, index), (table,))
    assert torch.autograd.gradgradcheck(lambda t: select_rows(t, index), (table,))
    empty = select_rows(table, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 3)
    empty.sum().backward()
    assert torch.equal(table.grad, torch.zeros(6, 3, dtype=torch.float64))
    one = randn(1, 7, seed=3).requires_grad_()
    out = select_rows(one, torch.tensor([0, 0, 0], dtype=torch.int32))
    out.sum().backward()
    assert torch.equal(one.grad, torch.full((1, 7), 3.0, dtype=torch.float64))
    cube = randn(4, 2, 3, seed=4)
    assert torch.equal(select_rows(cube, torch.tensor([3, 1])), cube[[3, 1]])
    assert torch.autograd.gradcheck(lambda t: select_rows(t, torch.tensor([3, 1, 3])),
                                    (cube.requires_grad_(),))


def test_no_grad_and_torch_backend():
    table = randn(10, 4, seed=5).requires_grad_()
    index = torch.tensor([1, 9, 1])
    with torch.no_grad():
        out = select_rows(table, index)
    assert not out.requires_grad and torch.equal(out, table.detach()[index])
    ref = select_rows(table, index, backend="torch")
    assert ref.grad_fn is not None and "Index" in type(ref.grad_fn).__name__


def test_bad_input():
    table = randn(5, 3)
    with pytest.raises(IndexError, match="out of range"):
        select_rows(table, torch.tensor([0, 5]))
    with pytest.raises(IndexError, match="out of range"):
        select_rows(table, torch.tensor([-1]))  # refused, not wrapped as table[-1] would
    with pytest.raises(ValueError, match="index must be a 1-D int64 or int32"):
        select_rows(table, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="index must be a 1-D int64 or int32"):
        select_rows(table, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="table must be a tensor with rows"):
        select_rows(torch.tensor(1.0), torch.tensor([0]))


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu():
    table = randn(50, 40, seed=6)
    index = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(6))
    weight = randn(500, 40, seed=7)
    cpu = grads(select_rows, table, index, weight)
    gpu = grads(select_rows, table.cuda(), index.cuda(), weight.cuda())
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="is on"):
        select_rows(table.cuda(), index)


def test_batch_rows_from_the_halves_of_one_tensor():
    from mmfast.nn import batch_rows

    x = randn(11, 4, seed=8).requires_grad_()
    users, pos, neg = torch.tensor([0, 3, 3]), torch.tensor([1, 6, 0]), torch.tensor([2, 2, 5])
    weight = [randn(3, 4, seed=s) for s in (9, 10, 11)]
    results = []
    for halves in (lambda out: torch.split(out, [4, 7]),  # one gather from `out`
                   lambda out: (out[:4].clone(), out[4:].clone())):  # two separate tables
        x.grad = None
        rows = batch_rows(*halves(x * 3.0), users, pos, neg)
        sum((r * w).sum() for r, w in zip(rows, weight)).backward()
        results.append((rows, x.grad.clone()))
    (a, ga), (b, gb) = results
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and torch.allclose(ga, gb, rtol=1e-14)
    two = batch_rows(*torch.split(x, [4, 7]), users, pos)
    assert len(two) == 2 and torch.equal(two[1], x[4:][pos])
