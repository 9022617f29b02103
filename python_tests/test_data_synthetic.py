"""Synthetic generator, k-core filter and MMRec's split rule."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import mmfast.data as D
from mmfast.data.split import k_core, mmrec_split, split_counts
from mmfast.data.synthetic import generate, generate_with_latents

SMALL = dict(n_users=600, n_items=300, n_interactions=7200)


def _same(a: D.Dataset, b: D.Dataset) -> bool:
    return all(
        torch.equal(a.split(s).rowptr, b.split(s).rowptr)
        and torch.equal(a.split(s).items, b.split(s).items)
        for s in D.SPLITS
    ) and all(np.array_equal(a.features[m], b.features[m]) for m in a.features)


def test_deterministic_from_seed():
    a, b = generate(**SMALL, seed=7), generate(**SMALL, seed=7)
    assert _same(a, b)
    c = generate(**SMALL, seed=8)
    assert not torch.equal(a.train.items[:100], c.train.items[:100])


def test_shapes_and_core():
    ds = generate(**SMALL, seed=1, image_dim=32, text_dim=16)
    assert ds.modalities == ["image", "text"]
    assert ds.features["image"].shape == (ds.n_items, 32)
    assert ds.features["text"].shape == (ds.n_items, 16)
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert ds.n_users > 0.9 * SMALL["n_users"] and ds.n_items > 0.5 * SMALL["n_items"]
    total_u = sum(p.user_degrees() for p in (ds.train, ds.valid, ds.test))
    total_i = sum(p.item_degrees() for p in (ds.train, ds.valid, ds.test))
    assert int(total_u.min()) >= 5 and int(total_i.min()) >= 5  # 5-core holds
    # every id in range is used (contiguous re-indexing)
    assert int((total_u == 0).sum()) == 0 and int((total_i == 0).sum()) == 0
    assert ds.cold_start_dropped == {}


def test_default_size_and_speed():
    t0 = time.perf_counter()
    ds = D.load("synthetic")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0
    # sparse on purpose (mmfast.data.synthetic's docstring): ~1,950 users, ~1,050 items
    assert 1700 <= ds.n_users <= 2500 and 900 <= ds.n_items <= 1300
    assert 12_000 <= ds.n_interactions <= 16_000
    assert ds.features["image"].shape[1] == 256 and ds.features["text"].shape[1] == 64


def _r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Held-out R^2 of a ridge regression from x to each column of y."""
    n = x.shape[0]
    tr = np.arange(n) < int(0.7 * n)
    w = np.linalg.solve(x[tr].T @ x[tr] + np.eye(x.shape[1]), x[tr].T @ y[tr])
    resid = x[~tr] @ w - y[~tr]
    return 1 - (resid ** 2).sum(0) / ((y[~tr] - y[~tr].mean(0)) ** 2).sum(0)


def test_features_carry_generic_and_unique_signal():
    ds, lat = generate_with_latents(n_users=1500, n_items=800, n_interactions=18000, seed=3)
    img, txt = ds.features["image"].astype(np.float64), ds.features["text"].astype(np.float64)
    # generic factors are predictable from either modality
    assert _r2(img, lat["generic"]).min() > 0.5 and _r2(txt, lat["generic"]).min() > 0.5
    # each unique part is visible in its own modality only
    assert _r2(img, lat["image_unique"]).min() > 0.5
    assert _r2(txt, lat["image_unique"]).max() < 0.1
    assert _r2(txt, lat["text_unique"]).min() > 0.5
    assert _r2(img, lat["text_unique"]).max() < 0.1


def test_interactions_follow_latent_affinity():
    ds, lat = generate_with_latents(**SMALL, seed=5)
    u, i = ds.train.users().numpy(), ds.train.items.numpy()
    z, p = lat["item_factors"], lat["user_factors"]
    observed = (p[u] * z[i]).sum(1).mean()
    rng = np.random.default_rng(0)
    random_items = rng.integers(0, ds.n_items, u.size)
    baseline = (p[u] * z[random_items]).sum(1).mean()
    assert observed > baseline + 1.0
    # popularity skew: the most popular 10% of items hold far more than 10% of the rows
    deg = np.sort(ds.train.item_degrees().numpy())[::-1]
    assert deg[: len(deg) // 10].sum() > 0.2 * deg.sum()


@pytest.mark.parametrize("n, valid, test", [(3, 1, 1), (9, 1, 1), (10, 1, 1), (14, 1, 1),
                                            (15, 1, 2), (20, 2, 2), (27, 2, 3), (100, 10, 10)])
def test_split_counts_rule(n, valid, test):
    v, t = split_counts(np.array([n]))
    assert (int(v[0]), int(t[0])) == (valid, test)


def test_mmrec_split_proportions_per_user():
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 60, 400)
    users = rng.permutation(np.repeat(np.arange(400), counts))
    labels = mmrec_split(users, seed=11)
    per = np.zeros((400, 3), dtype=np.int64)
    np.add.at(per, (users, labels), 1)
    v, t = split_counts(counts)
    np.testing.assert_array_equal(per[:, 1], v)
    np.testing.assert_array_equal(per[:, 2], t)
    np.testing.assert_array_equal(per[:, 0], counts - v - t)
    assert np.array_equal(labels, mmrec_split(users, seed=11))
    assert not np.array_equal(labels, mmrec_split(users, seed=12))


def test_mmrec_split_needs_three_rows():
    with pytest.raises(ValueError, match="user 1 has 2 interaction"):
        mmrec_split(np.array([0, 0, 0, 1, 1]))


def test_k_core_matches_naive_iteration():
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 80, 900), rng.integers(0, 60, 900)
    keep = k_core(users, items, 5)
    ku, ki = users[keep], items[keep]
    assert np.bincount(ku)[np.unique(ku)].min() >= 5 and np.bincount(ki)[np.unique(ki)].min() >= 5
    # the kept rows are exactly those of the k-core computed the slow, obvious way
    alive_u, alive_i = set(range(80)), set(range(60))
    changed = True
    while changed:
        rows = [(u, i) for u, i in zip(users, items) if u in alive_u and i in alive_i]
        cu = np.bincount([r[0] for r in rows], minlength=80)
        ci = np.bincount([r[1] for r in rows], minlength=60)
        new_u = {u for u in alive_u if cu[u] >= 5}
        new_i = {i for i in alive_i if ci[i] >= 5}
        changed = new_u != alive_u or new_i != alive_i
        alive_u, alive_i = new_u, new_i
    naive = np.array([u in alive_u and i in alive_i for u, i in zip(users, items)])
    np.testing.assert_array_equal(keep, naive)
