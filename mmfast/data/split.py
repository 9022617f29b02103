"""Preprocessing shared by the synthetic generator and ``prepare``: k-core filter, MMRec split."""
from __future__ import annotations

import numpy as np


def k_core(users: np.ndarray, items: np.ndarray, k: int = 5) -> np.ndarray:
    """Boolean mask of the rows kept by iterative k-core filtering.

    Users and items with fewer than ``k`` rows are removed repeatedly until every remaining
    user and item has at least ``k`` (the 5-core filter of MMRec's preprocessing).
    """
    users, items = np.asarray(users), np.asarray(items)
    keep = np.ones(users.size, dtype=bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        i_cnt = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        new_keep = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def remap_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous 0-based ids in ascending order of the originals: (new ids, originals)."""
    originals, new = np.unique(ids, return_inverse=True)
    return new.astype(np.int64), originals


def split_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMRec's per-user (valid, test) sizes for users with ``n`` interactions."""
    n = np.asarray(n, dtype=np.int64)
    v = (n * 2) // 10  # floor(0.2 n) without float rounding surprises
    valid = np.where(n < 10, 1, v // 2)
    test = np.where(n < 10, 1, v - v // 2)
    return valid, test


def mmrec_split(users: np.ndarray, seed: int = 999) -> np.ndarray:
    """x_label (0 train, 1 valid, 2 test) per row by MMRec's per-user random rule.

    Each user's rows are shuffled; a user with fewer than 10 gets 1 valid and 1 test row,
    any other ``v = floor(0.2 n)`` held out, ``v // 2`` valid and ``v - v // 2`` test.
    Deterministic from ``seed``; vectorized (one sort by user and random key).
    """
    users = np.asarray(users, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(users.size), users))  # grouped by user, random inside
    counts = np.bincount(users, minlength=users.max(initial=-1) + 1)
    if users.size and counts[counts > 0].min() < 3:
        bad = int(np.flatnonzero((counts > 0) & (counts < 3))[0])
        raise ValueError(
            f"mmrec_split: user {bad} has {counts[bad]} interaction(s); the split needs at "
            "least 3 per user (apply k_core first)"
        )
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sorted_users = users[order]
    rank = np.arange(users.size) - starts[sorted_users]  # position inside the user's shuffle
    valid, test = split_counts(counts)
    n_train = counts - valid - test
    label_sorted = np.where(rank < n_train[sorted_users], 0,
                            np.where(rank < (n_train + valid)[sorted_users], 1, 2))
    labels = np.empty(users.size, dtype=np.int64)
    labels[order] = label_sorted
    return labels
