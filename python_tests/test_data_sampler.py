"""MMRec negative sampler: never a training item, uniform over train items, seeded, batched."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import mmfast.data as D
from mmfast.data import Interactions, NegativeSampler
from mmfast.data.sampler import history_sets, sample_negatives_reference


def _dense_train(n_users=300, n_items=120, density=0.3, seed=0) -> Interactions:
    # Dense histories make rejections frequent, so the redraw path is exercised hard.
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[:, -3:] = False  # three items never in train: never valid negatives
    mask[np.arange(n_users), rng.integers(0, n_items - 3, n_users)] = True
    u, i = np.nonzero(mask)
    return Interactions.from_pairs(u, i, n_users, n_items)


def test_never_returns_a_training_item_and_only_train_items():
    train = _dense_train()
    s = NegativeSampler(train, batch_size=256, seed=3)
    hist = history_sets(train)
    candidates = set(train.items.tolist())
    for _ in range(3):
        for users, pos, neg in s:
            for u, p, j in zip(users.tolist(), pos.tolist(), neg.tolist()):
                assert j not in hist[u] and j in candidates
                assert p in hist[u]


def test_epoch_covers_each_training_pair_once_in_batches():
    train = _dense_train(seed=1)
    s = NegativeSampler(train, batch_size=500, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == -(-len(train) // 500)
    assert all(b[0].numel() == 500 for b in batches[:-1]) and batches[-1][0].numel() <= 500
    users = torch.cat([b[0] for b in batches])
    pos = torch.cat([b[1] for b in batches])
    got = torch.sort(users * train.n_items + pos).values
    want = train.users() * train.n_items + train.items
    assert torch.equal(got, want)
    assert not torch.equal(users, train.users())  # shuffled
    assert all(t.dtype == torch.int64 for b in batches for t in b)


def test_seeded_and_epochs_differ():
    train = _dense_train(seed=2)
    a, b = NegativeSampler(train, seed=5), NegativeSampler(train, seed=5)
    ea, eb = a.epoch(), b.epoch()
    assert all(torch.equal(x, y) for x, y in zip(ea, eb))
    assert not torch.equal(a.epoch()[2], ea[2])  # the next epoch draws anew
    a.reseed(5)
    assert torch.equal(a.epoch()[2], ea[2])


def test_negatives_are_uniform_over_allowed_items():
    # One user who owns items 0..4 of 10: negatives must be uniform over 5..9.
    train = Interactions.from_pairs(np.zeros(5, int), np.arange(5), 1, 10)
    extra = Interactions.from_pairs(np.r_[np.zeros(5, int), [1] * 5], np.r_[np.arange(5), np.arange(5, 10)], 2, 10)
    s = NegativeSampler(extra, seed=0)
    neg = s.sample(torch.zeros(50_000, dtype=torch.int64))
    counts = torch.bincount(neg, minlength=10).double()
    assert counts[:5].sum() == 0
    assert torch.allclose(counts[5:] / 50_000, torch.full((5,), 0.2, dtype=torch.float64), atol=0.01)
    with pytest.raises(ValueError, match="user 0 has interacted with every training item"):
        NegativeSampler(train)


def test_reference_loop_obeys_the_same_rule():
    train = _dense_train(seed=4)
    hist = history_sets(train)
    cand = torch.unique(train.items).tolist()
    users = train.users().tolist()
    neg = sample_negatives_reference(users, hist, cand, random.Random(0))
    assert neg.shape == (len(users),)
    assert all(j not in hist[u] and j in set(cand) for u, j in zip(users, neg.tolist()))
    # both samplers agree in distribution: negatives' item frequencies are close
    fast = NegativeSampler(train, seed=0).epoch()[2]
    f_ref = np.bincount(neg, minlength=train.n_items) / len(neg)
    f_fast = torch.bincount(fast, minlength=train.n_items).numpy() / len(neg)
    assert np.abs(f_ref - f_fast).max() < 0.01


def test_synthetic_sampler_via_dataset():
    ds = D.load("synthetic", n_users=400, n_items=200, n_interactions=4000, seed=1)
    s = ds.sampler(batch_size=2048, seed=1)
    users, pos, neg = s.epoch()
    assert not bool(s.is_positive(users, neg).any())
    assert bool(s.is_positive(users, pos).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_on_cuda():
    train = _dense_train()
    s = NegativeSampler(train, device="cuda", seed=0)
    users, pos, neg = next(iter(s))
    assert users.is_cuda and neg.is_cuda
    assert not bool(s.is_positive(users, neg).any())
