"""Data-layer benchmarks (pytest-benchmark).

    python -m pytest benchmarks/bench_data.py --benchmark-group-by=group

Amazon Baby's real interaction graph is used when ``../shared/data/baby`` (or
``$MMFAST_SHARED_DATA/baby``) exists; otherwise a synthetic dataset of Baby's size stands in
and the group name says so. Targets: one sampling epoch at Baby scale < 0.05 s on CPU.
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest
import torch

import mmfast.data as D
from mmfast.data.graphs import build_normalized_adjacency, build_user_item_lift
from mmfast.data.sampler import NegativeSampler, history_sets, sample_negatives_reference
from mmfast.data.synthetic import generate

SHARED = Path(os.environ.get("MMFAST_SHARED_DATA",
                             Path(__file__).resolve().parents[1].parent / "shared" / "data"))
HAS_BABY = (SHARED / "baby" / "baby.inter").is_file()


@pytest.fixture(autouse=True)
def _record_threads(benchmark):
    # Timings on a small shared CPU depend strongly on torch's intra-op thread count.
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()


@pytest.fixture(scope="module")
def baby() -> tuple[str, D.Dataset]:
    if HAS_BABY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "baby", D.load("baby", SHARED)
    # Baby's size: 19,445 users, 7,050 items, ~160k interactions.
    return "synthetic-baby-size", generate(19445, 7050, 165000, image_dim=8, text_dim=8, seed=0)


def _sampler_epoch(sampler: NegativeSampler) -> int:
    n = 0
    for users, pos, neg in sampler:
        n += neg.numel()
    return n


def test_sampler_epoch_vectorized(benchmark, baby):
    name, ds = baby
    benchmark.group = f"sampler epoch ({name}, {len(ds.train)} train pairs)"
    sampler = ds.sampler(batch_size=2048, seed=0)
    assert benchmark(_sampler_epoch, sampler) == len(ds.train)


def test_sampler_epoch_reference_loop(benchmark, baby):
    name, ds = baby
    benchmark.group = f"sampler epoch ({name}, {len(ds.train)} train pairs)"
    hist = history_sets(ds.train)
    cand = torch.unique(ds.train.items).tolist()
    users = ds.train.users().tolist()
    rng = random.Random(0)

    def epoch() -> int:
        order = list(range(len(users)))
        rng.shuffle(order)
        shuffled = [users[k] for k in order]
        return sample_negatives_reference(shuffled, hist, cand, rng).size

    assert benchmark.pedantic(epoch, rounds=3, iterations=1) == len(ds.train)


@pytest.mark.skipif(not HAS_BABY, reason="shared Baby data absent")
def test_read_baby(benchmark):
    benchmark.group = "reader (baby.inter, 160,792 lines)"

    def read() -> D.Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return D.load("baby", SHARED)

    assert benchmark(read).n_interactions == 160792


def test_build_norm_adj(benchmark, baby):
    name, ds = baby
    benchmark.group = f"graph build ({name})"
    g = benchmark(build_normalized_adjacency, ds.train)
    assert g.nnz == 2 * len(ds.train)


def test_build_user_item_lift(benchmark, baby):
    name, ds = baby
    benchmark.group = f"graph build ({name})"
    assert benchmark(build_user_item_lift, ds.train).nnz == len(ds.train)


def test_norm_adj_cache_hit(benchmark, baby, tmp_path):
    name, ds = baby
    benchmark.group = f"graph build ({name})"
    D.normalized_adjacency(ds.train, cache_dir=tmp_path)  # warm the cache
    g = benchmark(D.normalized_adjacency, ds.train, cache_dir=tmp_path)
    assert g.nnz == 2 * len(ds.train)


def test_generate_synthetic_default(benchmark):
    benchmark.group = "synthetic generation (default size)"
    ds = benchmark.pedantic(D.load, args=("synthetic",), rounds=3, iterations=1)
    assert ds.n_users > 4000
