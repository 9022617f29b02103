"""Device->host reads in the hot paths (each one a blocking sync on a GPU): counted on CPU by
patching the tensor methods that read values back, and on a GPU by CUDA-graph capture of a
LightGCN and a FREEDOM training step and torch's sync debug mode."""
from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import randn, requires_cuda
from mmfast import models
from mmfast.data import load_dataset
from mmfast.eval import Evaluator
from mmfast.ops import SparseGraph, rank_metrics, topk_scores
from trainer_helpers import private_cache, tiny_config  # noqa: F401 (autouse fixture)

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu")


@contextlib.contextmanager
def counted_reads():
    """The names of the read-back methods called on tensors inside the block."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name, fn):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return fn(self, *args, **kwargs)
        return wrapper

    for name, fn in originals.items():
        setattr(torch.Tensor, name, counting(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def exclude_graph(n_rows, n_keys, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n_rows, (n_rows * 5,), generator=gen)
    cols = torch.randint(0, n_keys, (n_rows * 5,), generator=gen)
    return SparseGraph.from_coo(rows, cols, None, (n_rows, n_keys))


# ------------------------------------------------------------------------ counted on CPU
def test_topk_scores_reads_once_per_raw_csr_and_never_for_a_graph():
    q, keys = randn(40, 16, seed=1), randn(300, 16, seed=2)
    graph = exclude_graph(40, 300)
    raw = (graph.rowptr, graph.col)
    with counted_reads() as calls:
        topk_scores(q, keys, 10, graph)
    assert calls == []
    with counted_reads() as calls:
        topk_scores(q, keys, 10, raw, validate=False)
    assert calls == []
    with counted_reads() as calls:
        topk_scores(q, keys, 10, raw)
    assert calls == ["tolist"]  # check_csr_indices gathers its facts, then reads them once


def test_rank_metrics_reads_nothing():
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 300, (40, 20), generator=gen)
    truth = exclude_graph(40, 300, seed=3)
    with counted_reads() as calls:
        rank_metrics(idx, (truth.rowptr, truth.col), [5, 20], reduction="sum")
    assert calls == []


def test_evaluator_reads_nothing_per_batch():
    config = tiny_config("LightGCN")
    dataset = load_dataset(config)
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(dataset.train.n_users, 16, generator=gen)
    items = torch.randn(dataset.train.n_items, 16, generator=gen)
    counts, results = [], []
    for batch_size in (10**6, 64, 7):  # one batch, then several
        evaluator = Evaluator(dataset, ks=(10, 20), batch_size=batch_size)
        with counted_reads() as calls:
            results.append(evaluator.evaluate("test", users, items))
        counts.append(len(calls))
    assert results[0] == results[1] == results[2]
    assert counts[0] == counts[1] == counts[2], counts


@pytest.mark.parametrize("model_name", ["LightGCN", "FREEDOM"])
def test_training_step_reads_nothing(model_name):
    """The model's part of a step (loss, backward, after_backward) reads nothing back; the
    optimizer is torch's (non-capturable Adam reads its CPU step count, which is no sync)."""
    config = tiny_config(model_name)
    dataset = load_dataset(config)
    model = models.get(model_name)(config, dataset, torch.device("cpu"))
    model.train()
    model.pre_epoch_processing()
    gen = torch.Generator().manual_seed(0)
    users = torch.randint(0, dataset.train.n_users, (128,), generator=gen)
    pos = torch.randint(0, dataset.train.n_items, (128,), generator=gen)
    neg = torch.randint(0, dataset.train.n_items, (128,), generator=gen)
    model.calculate_loss(users, pos, neg).backward()  # warm (lazy set-up may read)
    with counted_reads() as calls:
        loss = model.calculate_loss(users, pos, neg)
        loss.backward()
        model.after_backward()
    assert calls == []


# ------------------------------------------------------------------------ on a GPU
@requires_cuda
@pytest.mark.cuda
def test_cuda_topk_and_metrics_do_not_sync():
    q, keys = randn(40, 16, seed=1, device="cuda"), randn(300, 16, seed=2, device="cuda")
    graph = exclude_graph(40, 300).to("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, idx = topk_scores(q, keys, 20, graph)
        _, idx2 = topk_scores(q, keys, 20, (graph.rowptr, graph.col), validate=False)
        rank_metrics(idx, graph, [5, 20], reduction="sum")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(idx.cpu(), idx2.cpu())


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("model_name", ["LightGCN", "FREEDOM"])
def test_cuda_training_step_captures_into_a_cuda_graph(model_name):
    device = torch.device("cuda")
    config = tiny_config(model_name, device="cuda")
    dataset = load_dataset(config)
    model = models.get(model_name)(config, dataset, device).to(device)
    model.train()
    model.pre_epoch_processing()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    gen = torch.Generator().manual_seed(0)

    def batch():
        return (torch.randint(0, dataset.train.n_users, (256,), generator=gen).to(device),
                torch.randint(0, dataset.train.n_items, (256,), generator=gen).to(device),
                torch.randint(0, dataset.train.n_items, (256,), generator=gen).to(device))

    static = batch()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda.set_sync_debug_mode("error")  # an eager step with any sync raises
        try:
            for _ in range(3):
                model.train_step(*static, optimizer)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = model.train_step(*static, optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        for s, new in zip(static, batch()):
            s.copy_(new)
        graph.replay()
        losses.append(static_loss.clone())
    torch.cuda.synchronize()
    assert all(torch.isfinite(x).item() for x in losses)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
