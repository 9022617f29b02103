"""Full-ranking evaluation: mmfast (fused topk_scores) vs the pure-PyTorch path.

Workloads, all users of the test split against all items, embeddings of width 64 (random:
speed and memory only), top-50 with training items masked:

- ``topk``: the ranking alone. mmfast: ``topk_scores`` per batch of 4096 users with the
  training CSR as ``exclude``. torch: MMRec's path per batch: matmul, training items set to
  -1e10, ``torch.topk``.
- ``evaluate``: the whole :class:`mmfast.eval.Evaluator` (ranking + Recall/NDCG/Precision/MAP
  at 5/10/20/50 on the device) on both backends (torch: matmul + mask + torch.topk with exact
  tie handling, then the same metric code).

Scales: Amazon Baby (19,445 x 7,050) and Clothing (39,387 x 23,033), the real interaction
graphs when ../shared/data holds them (synthetic graphs of their shape otherwise), and a 10x
synthetic scale (400k users x 200k items) only with MMFAST_BENCH_LARGE=1 (minutes on CPU).

- ``knn``: the item kNN graph (k = 10) of random features, mmfast vs ``backend="torch"``
  (dense similarity blocks of 8192 rows + torch.topk), at Baby's 7,050 items x 384 and, with
  MMFAST_BENCH_LARGE=1, Elec's 63,001 items x 4,096.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from bench_graph import SHARED_DATA, synthetic_train
from conftest import DEVICE
from mmfast.data import Interactions, load
from mmfast.eval import Evaluator
from mmfast.ops.csr import gather_rows
from mmfast.ops import topk_scores

D, K, BATCH = 64, 50, 4096
# (users, items, train pairs, test pairs): Baby and Clothing as in MODELS.md §1.1.
SCALES = {
    "baby": (19_445, 7_050, 118_551, 21_682),
    "clothing": (39_387, 23_033, 197_338, 41_189),
    "large": (400_000, 200_000, 2_400_000, 440_000),
}
ROUNDS = {"baby": 5, "clothing": 3, "large": 1}
LARGE = os.environ.get("MMFAST_BENCH_LARGE") == "1"
ACTIVE = [s for s in SCALES if s != "large" or LARGE]


@functools.lru_cache(maxsize=None)
def workload(scale: str) -> tuple[Interactions, Interactions, torch.Tensor, torch.Tensor]:
    n_users, n_items, n_train, n_test = SCALES[scale]
    if scale != "large" and (SHARED_DATA / scale).is_dir():
        ds = load(scale, root=SHARED_DATA)
        train, test = ds.train, ds.test
    else:
        train = synthetic_train(n_users, n_items, n_train, seed=0)
        test = synthetic_train(n_users, n_items, n_test, seed=1)
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(train.n_users, D, generator=gen).to(DEVICE)
    items = torch.randn(train.n_items, D, generator=gen).to(DEVICE)
    return train, test, users, items


def batches(train: Interactions, test: Interactions):
    """Per batch of test users: their ids and their training rows as a CSR (built outside the
    timed region, so both sides time the ranking alone)."""
    rowptr = train.rowptr.to(DEVICE)
    col = train.items.to(DEVICE, torch.int32)
    ids = test.active_users().to(DEVICE)
    return [(b, gather_rows(rowptr, col, b)) for b in ids.split(BATCH)]


def rank_mmfast(train, test, users, items):
    work = batches(train, test)

    def run():
        for batch, exclude in work:
            topk_scores(users[batch], items, K, exclude)

    return run


def rank_torch(train, test, users, items):
    """MMRec's TopKEvaluator path: scores, -1e10 on training items, torch.topk."""
    work = []
    for batch, (rowptr, col) in batches(train, test):
        rows = torch.repeat_interleave(torch.arange(batch.numel(), device=DEVICE),
                                       rowptr[1:] - rowptr[:-1])
        work.append((batch, rows, col.long()))

    def run():
        for batch, rows, col in work:
            scores = users[batch] @ items.T
            scores[rows, col] = -1e10
            torch.topk(scores, K, dim=1)

    return run


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", ACTIVE)
def test_topk(compare, scale, backend):
    data = workload(scale)
    run = rank_mmfast(*data) if backend == "mmfast" else rank_torch(*data)
    compare(f"topk@{K} {scale}", backend, run, rounds=ROUNDS[scale])


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", ACTIVE)
def test_evaluate(compare, scale, backend):
    train, test, users, items = workload(scale)
    evaluator = Evaluator(train, ks=(5, 10, 20, 50), batch_size=BATCH, backend=backend)
    compare(f"evaluate {scale}", backend, lambda: evaluator.evaluate(test, users, items),
            rounds=ROUNDS[scale])


# ---------------------------------------------------------------------- item kNN graphs
# (items, feature width): Baby's 384-d text features, and Amazon Elec's 4096-d image
# features (63,001 items; the dense similarity matrix alone would be 15.9 GB) when
# MMFAST_BENCH_LARGE=1. Random features of the real widths: speed and memory only.
KNN_SCALES = {"baby-text384": (7_050, 384), "elec-image4096": (63_001, 4_096)}
KNN_ACTIVE = [s for s in KNN_SCALES if s.startswith("baby") or LARGE]


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", KNN_ACTIVE)
def test_knn_graph(compare, scale, backend):
    from mmfast.data.knn import knn_graph

    n, width = KNN_SCALES[scale]
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    compare(f"knn k=10 {scale}", backend, lambda: knn_graph(x, 10, backend=backend),
            rounds=1 if scale.startswith("elec") else 3)
