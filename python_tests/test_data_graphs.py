"""Â (G1) and R̂ (G4) against dense float64 references; the on-disk cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mmfast.data as D
from mmfast.data import Interactions
from mmfast.data.graphs import (
    build_normalized_adjacency,
    cache_dir,
    interactions_hash,
    normalized_adjacency,
    user_item_lift,
)


def _small_train() -> Interactions:
    rng = np.random.default_rng(0)
    n_u, n_i = 13, 9
    mask = rng.random((n_u, n_i)) < 0.35
    mask[4] = False  # a user without training items
    mask[:, 7] = False  # an item without training users
    u, i = np.nonzero(mask)
    return Interactions.from_pairs(u, i, n_u, n_i)


def _dense_reference(train: Interactions) -> torch.Tensor:
    n_u, n_i = train.n_users, train.n_items
    r = torch.zeros(n_u, n_i, dtype=torch.float64)
    r[train.users(), train.items] = 1
    a = torch.zeros(n_u + n_i, n_u + n_i, dtype=torch.float64)
    a[:n_u, n_u:], a[n_u:, :n_u] = r, r.T
    d = a.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    return dinv[:, None] * a * dinv[None, :]


def test_normalized_adjacency_matches_dense_float64():
    train = _small_train()
    g = normalized_adjacency(train, dtype=torch.float64, cache=False)
    ref = _dense_reference(train)
    assert g.shape == (22, 22) and g.is_symmetric and g.nnz == 2 * len(train)
    torch.testing.assert_close(g.to_dense(), ref, rtol=1e-12, atol=0)
    assert g.to_dense()[4].abs().sum() == 0 and g.to_dense()[13 + 7].abs().sum() == 0
    g32 = normalized_adjacency(train, cache=False)
    assert g32.dtype == torch.float32
    torch.testing.assert_close(g32.to_dense().double(), ref, rtol=1e-6, atol=1e-7)
    # rows are sorted CSR and the stored transpose is the graph itself
    torch.testing.assert_close(g.T.to_dense(), ref.T, rtol=1e-12, atol=0)


def test_user_item_lift_is_the_user_item_block():
    train = _small_train()
    r = user_item_lift(train, dtype=torch.float64, cache=False)
    ref = _dense_reference(train)[: train.n_users, train.n_users:]
    assert r.shape == (train.n_users, train.n_items)
    torch.testing.assert_close(r.to_dense(), ref, rtol=1e-12, atol=0)


def test_cache_round_trip_and_atomic_files(tmp_path, monkeypatch):
    train = _small_train()
    g1 = normalized_adjacency(train, cache_dir=tmp_path)
    files = sorted((tmp_path / "graphs").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert interactions_hash(train)[:32] in files[0].name
    g2 = normalized_adjacency(train, cache_dir=tmp_path)
    assert torch.equal(g1.rowptr, g2.rowptr) and torch.equal(g1.col, g2.col)
    assert torch.equal(g1.val, g2.val) and g2.is_symmetric
    # a cached file is really what gets returned: tamper with it and see the values change
    blob = torch.load(files[0], weights_only=True)
    blob["val"] = blob["val"] * 2
    torch.save(blob, files[0])
    assert torch.equal(normalized_adjacency(train, cache_dir=tmp_path).val, g1.val * 2)
    # a corrupt file is rebuilt and overwritten
    files[0].write_bytes(b"garbage")
    assert torch.equal(normalized_adjacency(train, cache_dir=tmp_path).val, g1.val)
    # R̂ lands in the same folder under its own name; no temporary files are left behind
    user_item_lift(train, cache_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path / "graphs").iterdir())
    assert len(names) == 2 and not any(n.endswith(".tmp") for n in names)
    # the environment variable picks the folder when no argument is given
    monkeypatch.setenv("MMFAST_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    normalized_adjacency(train)
    assert len(list((tmp_path / "env" / "graphs").iterdir())) == 1
    monkeypatch.delenv("MMFAST_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "mmfast")


def test_hash_depends_on_the_pairs_only():
    a = Interactions.from_pairs([0, 1, 1], [2, 0, 1], 2, 3)
    b = Interactions.from_pairs([1, 0, 1], [1, 2, 0], 2, 3)  # same pairs, other order
    c = Interactions.from_pairs([0, 1, 1], [2, 0, 2], 2, 3)
    d = Interactions.from_pairs([0, 1, 1], [2, 0, 1], 2, 4)  # one more item
    assert interactions_hash(a) == interactions_hash(b)
    assert len({interactions_hash(x) for x in (a, c, d)}) == 3


def test_dataset_graph_helpers(tmp_path):
    ds = D.load("synthetic", n_users=300, n_items=150, n_interactions=3000, seed=0)
    g = ds.norm_adj(cache_dir=tmp_path)
    assert g.shape == (ds.n_users + ds.n_items,) * 2
    ref = build_normalized_adjacency(ds.train, torch.float64)
    torch.testing.assert_close(g.val.double(), ref.val, rtol=1e-6, atol=0)
    r = ds.user_item_lift(cache=False)
    assert r.nnz == len(ds.train)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_moves_to_cuda():
    g = normalized_adjacency(_small_train(), cache=False).to("cuda")
    assert g.device.type == "cuda"
