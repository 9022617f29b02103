"""rank_metrics on hand-computed cases; Evaluator against the dense MMRec-style reference."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import requires_cuda
from mmfast.data import Interactions, load
from mmfast.eval import Evaluator, evaluate_reference
from mmfast.ops import rank_metrics, topk_scores

L3, L5 = 1 / math.log2(3), 1 / math.log2(5)


def csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rowptr = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    return rowptr, torch.tensor(sum(rows, []), dtype=torch.int64)


# Three users: A hits at ranks 2 and 4 of |T| = 3; B hits at rank 1 of |T| = 1 (its list is
# padded with -1); C has no truth and is skipped.
TOPK = torch.tensor([[3, 1, 7, 2], [5, -1, -1, -1], [0, 1, 2, 3]])
TRUTH = csr([[1, 2, 9], [5], []])
EXPECTED = {  # per user A, B (C is NaN)
    "recall@2": [1 / 3, 1.0], "recall@4": [2 / 3, 1.0],
    "precision@2": [1 / 2, 1 / 2], "precision@4": [2 / 4, 1 / 4],
    "ndcg@2": [L3 / (1 + L3), 1.0], "ndcg@4": [(L3 + L5) / (1 + L3 + 0.5), 1.0],
    "map@2": [(1 / 2) / 2, 1.0], "map@4": [(1 / 2 + 2 / 4) / 3, 1.0],
    "hit@2": [1.0, 1.0], "hit@4": [1.0, 1.0],
}


def test_hand_computed_per_user():
    out = rank_metrics(TOPK, TRUTH, [2, 4], reduction="none")
    for key, (a, b) in EXPECTED.items():
        got = out[key]
        assert got[0].item() == pytest.approx(a, abs=1e-12), key
        assert got[1].item() == pytest.approx(b, abs=1e-12), key
        assert math.isnan(got[2].item()), key
    assert int(out["n_users"]) == 2 and int(out["n_skipped"]) == 1


def test_hand_computed_mean_and_sum():
    mean = rank_metrics(TOPK, TRUTH, [4, 2])
    total = rank_metrics(TOPK, TRUTH, (2, 4), reduction="sum")
    for key, (a, b) in EXPECTED.items():
        assert mean[key].item() == pytest.approx((a + b) / 2, abs=1e-12)
        assert total[key].item() == pytest.approx(a + b, abs=1e-12)


def test_repeated_truth_items_count_once_and_metric_subset():
    out = rank_metrics(TOPK[:1], csr([[2, 1, 9, 1, 2]]), [4], metrics=("recall", "map"))
    assert set(out) == {"recall@4", "map@4", "n_users", "n_skipped"}
    assert out["recall@4"].item() == pytest.approx(2 / 3)


def test_idcg_and_map_cut_at_list_length():
    # |T| = 6 > K = 2: IDCG over 2 ranks and MAP over 2, both hits.
    out = rank_metrics(torch.tensor([[4, 8]]), csr([[0, 1, 2, 3, 4, 8]]), [1, 2])
    assert out["ndcg@2"].item() == pytest.approx(1.0) and out["map@2"].item() == pytest.approx(1.0)
    assert out["recall@2"].item() == pytest.approx(2 / 6)


@pytest.mark.parametrize("row_len", [2, 40])
def test_both_hit_searches_agree(monkeypatch, row_len):
    # Short truth rows are compared with each list, long ones searched in the sorted keys; both
    # paths give the same metrics on lists with -1 padding, repeated truth items, empty rows.
    import mmfast.ops.metrics as metrics_mod

    g = torch.Generator().manual_seed(3)
    n_users, n_items, k = 37, 60, 13
    topk = torch.stack([torch.randperm(n_items, generator=g)[:k] for _ in range(n_users)])
    topk[::5, k - 4:] = -1
    rows = [torch.randint(0, n_items, (int(torch.randint(0, 2 * row_len, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n_users)]
    rows[0], rows[1] = [], topk[1, :3].tolist() * 2
    truth = csr(rows)
    outs = []
    for limit in (0, 10**9):
        monkeypatch.setattr(metrics_mod, "_COMPARE_ROWS", limit)
        outs.append(rank_metrics(topk, truth, [1, 5, k], reduction="none"))
    for key in outs[0]:
        assert torch.equal(outs[0][key].nan_to_num(-1), outs[1][key].nan_to_num(-1)), key
    assert outs[0]["recall@13"][1].item() == pytest.approx(1.0)


def test_metric_errors():
    with pytest.raises(ValueError, match=r"ks must be ints in \[1, 4\]"):
        rank_metrics(TOPK, TRUTH, [5])
    with pytest.raises(ValueError, match=r"ks must be ints in \[1, 4\]"):
        rank_metrics(TOPK, TRUTH, [0])
    with pytest.raises(ValueError, match="metrics must be a non-empty subset"):
        rank_metrics(TOPK, TRUTH, [2], metrics=("auc",))
    with pytest.raises(ValueError, match="one row per user"):
        rank_metrics(TOPK, csr([[1]]), [2])
    with pytest.raises(TypeError, match="topk_indices must be int32 or int64"):
        rank_metrics(TOPK.float(), TRUTH, [2])
    with pytest.raises(ValueError, match="reduction must be one of"):
        rank_metrics(TOPK, TRUTH, [2], reduction="max")


# ------------------------------------------------------------------------ Evaluator
@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", seed=3)


def embeddings(ds, d=24, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(ds.n_users, d, generator=gen, dtype=dtype),
            torch.randn(ds.n_items, d, generator=gen, dtype=dtype))


ALL = ("recall", "ndcg", "precision", "map", "hit")


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluator_equals_dense_reference(synthetic, backend, split):
    u, i = embeddings(synthetic)
    ks = (5, 10, 20, 50)
    want = evaluate_reference(u, i, synthetic.train, synthetic.split(split), ks, ALL)
    ev = Evaluator(synthetic, ks=ks, metrics=ALL, batch_size=777, backend=backend, decimals=None)
    got = ev.evaluate(split, u, i)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-10), key
    assert ev.last_counts == {"users": int(synthetic.split(split).active_users().numel()),
                              "skipped": 0}
    rounded = Evaluator(synthetic, ks=ks, metrics=ALL, backend=backend).evaluate(split, u, i)
    for key in want:
        assert rounded[key] == round(got[key], 4)


def test_one_ranking_for_valid_and_test_equals_each_split_alone(synthetic):
    from mmfast.data.interactions import Interactions

    u, i = embeddings(synthetic)
    # A test split without its first 300 users and a valid split without its last 300: each
    # split has users the other lacks, so the shared ranking covers their union.
    test, valid = synthetic.test, synthetic.valid
    tu, vu = test.users(), valid.users()
    test = Interactions.from_pairs(tu[tu >= 300], test.items[tu >= 300], test.n_users, test.n_items)
    last = synthetic.n_users - 300
    valid = Interactions.from_pairs(vu[vu < last], valid.items[vu < last], valid.n_users,
                                    valid.n_items)
    ev = Evaluator(synthetic, batch_size=333, decimals=None)
    both = ev.evaluate_splits([valid, test], u, i)
    alone = []
    for split in (valid, test):
        alone.append(ev.evaluate(split, u, i))
        counts = ev.last_counts
    for got, want in zip(both, alone):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    assert ev.last_counts == counts  # after both: the test split's users, none skipped
    ev.evaluate_splits([valid, test], u, i)
    assert ev.last_counts == counts


def test_evaluator_float32_matches_reference_to_4_decimals(synthetic):
    u, i = embeddings(synthetic, d=64, seed=5, dtype=torch.float32)
    want = evaluate_reference(u, i, synthetic.train, synthetic.test)
    got = Evaluator(synthetic, decimals=None).evaluate("test", u, i)
    for key in want:
        assert abs(got[key] - want[key]) < 1e-4, key


def test_score_fn_and_topk_lists(synthetic):
    u, i = embeddings(synthetic, seed=1)
    ev = Evaluator(synthetic, ks=(10, 20), batch_size=1000, decimals=None)
    by_emb, users, lists = ev.evaluate("test", u, i, return_topk=True)
    by_fn = ev.evaluate("test", score_fn=lambda b: u[b] @ i.T)
    assert by_fn == pytest.approx(by_emb, abs=1e-12)
    assert lists.shape == (users.numel(), 20)
    train = synthetic.train
    exclude = (train.rowptr, train.items)
    assert torch.equal(lists, topk_scores(u, i, 20, exclude)[1][users])
    # No training item is ever ranked.
    gathered = train.to_graph().to_dense()[users].gather(1, lists.clamp(min=0))
    assert not (gathered[lists >= 0] > 0).any()


def test_validation_items_stay_rankable_on_test(synthetic):
    ds = synthetic
    user = int(ds.valid.active_users()[0])
    item = int(ds.valid.history(user)[0])
    u = torch.zeros(ds.n_users, 2, dtype=torch.float64)
    u[:, 0] = 1.0
    i = torch.zeros(ds.n_items, 2, dtype=torch.float64)
    i[:, 1] = torch.rand(ds.n_items, dtype=torch.float64)
    i[item, 0] = 100.0  # the best item for everyone
    _, users, lists = Evaluator(ds, ks=(5,)).evaluate("test", u, i, users=torch.tensor([user]),
                                                       return_topk=True)
    assert lists[0, 0].item() == item


def test_users_without_truth_are_skipped_and_counted(synthetic):
    ds = synthetic
    u, i = embeddings(ds, seed=2)
    users, items = ds.test.users(), ds.test.items
    dropped = ds.test.active_users()[:7]
    keep = ~torch.isin(users, dropped)
    truth = Interactions.from_pairs(users[keep], items[keep], ds.n_users, ds.n_items)
    ev = Evaluator(ds.train, ks=(10,), decimals=None)
    plain = ev.evaluate(truth, u, i)
    assert ev.last_counts == {"users": ds.test.active_users().numel() - 7, "skipped": 0}
    mixed = ev.evaluate(truth, u, i, users=ds.test.active_users())
    assert mixed == pytest.approx(plain, abs=1e-12)
    assert ev.last_counts == {"users": ds.test.active_users().numel() - 7, "skipped": 7}


def test_evaluator_from_interactions_and_errors(synthetic):
    ds = synthetic
    u, i = embeddings(ds)
    ev = Evaluator(ds.train, ks=(5,))
    assert ev.evaluate(ds.test, u, i) == Evaluator(ds, ks=(5,)).evaluate("test", u, i)
    with pytest.raises(ValueError, match="pass the split's Interactions"):
        ev.evaluate("test", u, i)
    with pytest.raises(ValueError, match="either user_emb and item_emb, or score_fn"):
        ev.evaluate(ds.test)
    with pytest.raises(ValueError, match=f"item_emb must be a 2-D tensor with {ds.n_items} rows"):
        ev.evaluate(ds.test, u, i[:-1])
    with pytest.raises(ValueError, match="score_fn must return scores of shape"):
        ev.evaluate(ds.test, score_fn=lambda b: torch.zeros(len(b), 3))
    with pytest.raises(ValueError, match="the split has"):
        empty = Interactions(torch.zeros(3, dtype=torch.long), torch.empty(0, dtype=torch.long), 2, 5)
        ev.evaluate(empty, u, i)
    with pytest.raises(ValueError, match="ks must be positive ints"):
        Evaluator(ds, ks=(0,))
    with pytest.raises(ValueError, match="metrics must be a non-empty subset"):
        Evaluator(ds, metrics=("auc",))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Evaluator(ds, batch_size=0)


@requires_cuda
@pytest.mark.cuda
def test_evaluator_on_cuda_equals_cpu(synthetic):
    u, i = embeddings(synthetic, dtype=torch.float64)
    cpu = Evaluator(synthetic, metrics=ALL, decimals=None).evaluate("test", u, i)
    gpu = Evaluator(synthetic, metrics=ALL, decimals=None).evaluate("test", u.cuda(), i.cuda())
    assert gpu == pytest.approx(cpu, abs=1e-10)
    out = rank_metrics(TOPK.cuda(), (TRUTH[0].cuda(), TRUTH[1].cuda()), [2, 4], reduction="none")
    for key, (a, b) in EXPECTED.items():
        assert out[key][:2].cpu().tolist() == pytest.approx([a, b])
