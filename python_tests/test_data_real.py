"""The real datasets of ../shared/data load with their published counts (skipped when absent)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from data_helpers import shared_data_dir

import mmfast.data as D

ROOT = shared_data_dir()

# users, items, interactions, train, valid, test, {modality: dim} -- from shared/data/README.md
PUBLISHED = {
    "baby": (19445, 7050, 160792, 118551, 20559, 21682, {}),
    "sports": (35598, 18357, 296337, 218409, 37899, 40029, {}),
    "clothing": (39387, 23033, 278677, 197338, 40150, 41189, {}),
    "tiktok": (9308, 6710, 68722, 59541, 3051, 6130, {"audio": 128, "image": 128}),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_counts(name):
    if not (ROOT / name).is_dir():
        pytest.skip(f"shared data folder {ROOT / name} absent")
    n_u, n_i, n, train, valid, test, feats = PUBLISHED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TikTok has a few cold-start rows
        ds = D.load(name, ROOT)
    assert (ds.n_users, ds.n_items) == (n_u, n_i)
    dropped = ds.cold_start_dropped
    assert len(ds.train) == train
    # published split sizes count rows before MMRec's cold-start filter
    assert len(ds.valid) + dropped.get("valid", 0) == valid
    assert len(ds.test) + dropped.get("test", 0) == test
    assert ds.n_interactions + sum(dropped.values()) == n
    head = str(ds).split("\n")
    assert head[1] == f"The number of users: {n_u}" and head[5] == f"The number of inters: {n}"
    assert {m: a.shape[1] for m, a in ds.features.items()} == feats
    for a in ds.features.values():
        assert a.dtype == np.float32 and a.shape[0] == n_i
    # every item id has a row even when train never shows it (MMRec keeps such items)
    assert ds.train.item_degrees().numel() == n_i
