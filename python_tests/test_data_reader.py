"""MMRec reader: exact contents on a hand-written folder, and every malformed input."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from data_helpers import write_folder

import mmfast.data as D
from mmfast.data import DataFormatError

# 4 users, 4 items; rows deliberately out of order; columns in a non-standard order.
TINY = """itemID\tuserID\trating\ttimestamp\tx_label
1\t0\t4\t101\t0
0\t0\t5\t100\t0
2\t0\t3\t102\t1
3\t0\t3.5\t103\t2
3\t1\t1\t200\t0
1\t1\t2\t201\t0
0\t1\t2\t202\t1
2\t1\t2\t203\t2
2\t2\t5\t300\t0
0\t2\t5\t301\t0
3\t2\t5\t302\t1
1\t2\t5\t303\t2
0\t3\t1\t400\t0
2\t3\t1\t401\t0
1\t3\t1\t402\t2
3\t3\t1\t403\t1
"""


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((4, 6)).astype(np.float32)
    text = rng.standard_normal((4, 3))  # float64 on disk: converted once to float32
    write_folder(tmp_path, "tiny", TINY, image=image, text=text)
    return tmp_path, image, text


def _csr(part):
    return part.rowptr.tolist(), part.items.tolist()


def test_tiny_counts_and_csr(tiny):
    root, image, text = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file raises no warning
        ds = D.load("tiny", root)
    assert (ds.n_users, ds.n_items) == (4, 4)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (8, 4, 4)
    assert _csr(ds.train) == ([0, 2, 4, 6, 8], [0, 1, 1, 3, 0, 2, 0, 2])
    assert _csr(ds.valid) == ([0, 1, 2, 3, 4], [2, 0, 3, 3])
    assert _csr(ds.test) == ([0, 1, 2, 3, 4], [3, 2, 1, 1])
    assert ds.train.users().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.train.item_degrees().tolist() == [3, 2, 2, 1]
    assert ds.train_items().tolist() == [0, 1, 2, 3]
    assert ds.cold_start_dropped == {}
    assert ds.modalities == ["image", "text"]
    assert ds.features["image"].dtype == np.float32
    np.testing.assert_array_equal(ds.features["image"], image)
    np.testing.assert_array_equal(ds.features["text"], text.astype(np.float32))
    assert isinstance(ds.features["image"], np.memmap)  # mapped, not read into memory
    t = ds.feature("image")
    assert t.dtype == torch.float32 and t.shape == (4, 6)


def test_tiny_statistics_block(tiny):
    ds = D.load("tiny", tiny[0], modalities=[])
    text = str(ds)
    assert text.splitlines()[:7] == [
        "tiny",
        "The number of users: 4",
        "Average actions of users: 4.0",
        "The number of items: 4",
        "Average actions of items: 4.0",
        "The number of inters: 16",
        "The sparsity of the dataset: 0.0%",
    ]
    for title in ("====Training====", "====Validation====", "====Testing===="):
        assert title in text
    train_block = text.split("====Training====")[1].split("====")[0]
    assert "The number of inters: 8" in train_block
    assert "The sparsity of the dataset: 50.0%" in train_block


def test_modality_selection_and_fused(tiny, tmp_path_factory):
    root, image, _ = tiny
    assert D.load("tiny", root, modalities=["image"]).modalities == ["image"]
    fused = tmp_path_factory.mktemp("fused") / "image_feat.npy"
    np.save(fused, np.ones((4, 8), dtype=np.float32))
    ds = D.load("tiny", root, fused_feature=fused)
    assert ds.modalities == ["fused"] and ds.features["fused"].shape == (4, 8)
    with pytest.raises(DataFormatError, match=r"audio_feat\.npy: feature file not found"):
        D.load("tiny", root, modalities=["audio"])


def test_write_read_round_trip(tiny, tmp_path_factory):
    ds = D.load("tiny", tiny[0])
    out = tmp_path_factory.mktemp("out")
    D.write_mmrec(ds, out, "copy")
    back = D.load("copy", out)
    for s in D.SPLITS:
        assert _csr(back.split(s)) == _csr(ds.split(s))
    np.testing.assert_array_equal(back.features["text"], ds.features["text"])


def test_cold_start_rows_are_dropped_and_reported(tmp_path):
    inter = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n0\t2\t2\n1\t1\t0\n1\t0\t1\n1\t2\t2\n2\t0\t1\n2\t1\t2\n"
    write_folder(tmp_path, "cold", inter)
    with pytest.warns(UserWarning, match=r"dropped cold-start rows.*valid 1, test 1"):
        ds = D.load("cold", tmp_path)
    assert (len(ds.valid), len(ds.test)) == (2, 2)
    assert ds.n_users == 3  # max id + 1, as MMRec counts
    assert ds.cold_start_dropped == {"valid": 1, "test": 1}
    assert "The number of inters: 8" in str(ds).split("====")[0]


def test_duplicates_warn_with_count_and_keep_first(tmp_path):
    inter = ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n0\t0\t0\n0\t2\t1\n0\t3\t2\n"
             "0\t1\t2\n0\t4\t0\n")
    write_folder(tmp_path, "dup", inter)
    with pytest.warns(UserWarning, match=r"dup\.inter: 2 duplicate \(user, item\) row\(s\) "
                                         r"\(first at data row 3, user 0, item 0\)"):
        ds = D.load("dup", tmp_path)
    assert _csr(ds.train) == ([0, 3], [0, 1, 4])  # the (0, 1) test row repeated a train row
    assert _csr(ds.test) == ([0, 1], [3])


HEADER = "userID\titemID\tx_label\n"


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("", r"line 1: empty; expected a header"),
        ("userID\titemID\n0\t0\n", r"line 1 \(header\): missing column\(s\) x_label"),
        ("userID\titem\tx_label\n0\t0\t0\n", r"line 1 \(header\): unexpected column 'item'"),
        ("userID\titemID\tx_label\tuserID\n", r"column 'userID' appears twice"),
        (HEADER, r"no data lines after the header"),
        (HEADER + "0\t0\t0\n0\t1\n", r"line 3: expected 3 tab-separated columns .* got 2"),
        (HEADER + "0\t0\t0\n0 1 0\n", r"line 3: expected 3 tab-separated columns"),
        (HEADER + "0\t0\t0\n0\t1\t0\t7\n", r"line 3: expected 3 tab-separated columns .* got 4"),
        (HEADER + "0\t0\t0\n0\tx7\t0\n", r"line 3: column itemID must be an integer, got 'x7'"),
        (HEADER + "0\t0\t0\n1.5\t1\t0\n", r"line 3: column userID must be an integer, got '1.5'"),
        (HEADER + "0\t0\t0\n0\t\t0\n", r"line 3: column itemID must be an integer, got ''"),
        (HEADER + "0\t0\t0\n0\t1\t0\n-2\t1\t0\n", r"line 4: userID must be a non-negative integer id, got -2"),
        (HEADER + "0\t-1\t0\n", r"line 2: itemID must be a non-negative integer id, got -1"),
        (HEADER + "0\t0\t0\n0\t1\t3\n", r"line 3: x_label must be 0 \(train\), 1 \(valid\) or 2 \(test\), got 3"),
        (HEADER + "0\t0\t0\n0\t1\t-1\n", r"line 3: x_label must be 0 .* got -1"),
        ("userID\titemID\trating\tx_label\n0\t0\tgood\t0\n", r"line 2: column rating must be a finite number, got 'good'"),
        ("userID\titemID\trating\tx_label\n0\t0\tnan\t0\n", r"line 2: column rating must be a finite number, got 'nan'"),
        (HEADER + "0\t0\t0\n0\t1\t0\n0\t2\t2\n", r"the valid split is empty \(no rows with x_label = 1\)"),
        (HEADER + "0\t0\t1\n0\t1\t2\n", r"the train split is empty"),
        (HEADER + "0\t0\t0\n1\t1\t1\n0\t2\t2\n", r"the valid split is empty after dropping users absent from train"),
    ],
)
def test_bad_inter_files(tmp_path, content, pattern):
    write_folder(tmp_path, "bad", content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cold-start case warns before it fails
        with pytest.raises(DataFormatError, match=pattern) as err:
            D.load("bad", tmp_path)
    assert "bad.inter" in str(err.value)  # every message names the file


def test_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match=r"nothere: dataset folder not found"):
        D.load("nothere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=re.escape("empty.inter: interaction file not found")):
        D.load("empty", tmp_path)


GOOD = HEADER + "0\t0\t0\n0\t1\t1\n0\t2\t2\n"  # 3 items


@pytest.mark.parametrize(
    "array, pattern",
    [
        (np.zeros((2, 4), np.float32), r"expected one row per item \(3 rows, .*\), got 2 rows"),
        (np.zeros(3, np.float32), r"expected a 2-D array \[n_items, dim\], got shape \(3,\)"),
        (np.zeros((3, 4), np.int32), r"expected floating-point features, got dtype int32"),
        (np.array([[0, 0], [0, np.nan], [0, 0]], np.float32), r"row 1 \(item 1\) holds NaN or infinite"),
        (np.array([[0, 0], [0, 0], [np.inf, 0]], np.float64), r"row 2 \(item 2\) holds NaN or infinite"),
    ],
)
def test_bad_feature_files(tmp_path, array, pattern):
    write_folder(tmp_path, "f", GOOD, image=array)
    with pytest.raises(DataFormatError, match=pattern) as err:
        D.load("f", tmp_path)
    assert "image_feat.npy" in str(err.value)


def test_feature_file_that_is_not_npy(tmp_path):
    folder = write_folder(tmp_path, "f", GOOD)
    (folder / "text_feat.npy").write_bytes(b"not numpy")
    with pytest.raises(DataFormatError, match=r"text_feat\.npy: not a readable \.npy array"):
        D.load("f", tmp_path)


def test_crlf_bom_and_recbole_style_header(tmp_path):
    content = "\ufeffuserID:token\titemID:token\tx_label:token\r\n0\t0\t0\r\n0\t1\t1\r\n0\t2\t2\r\n"
    write_folder(tmp_path, "crlf", content)
    ds = D.load("crlf", tmp_path)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1, 1, 1)


def test_load_unknown_embedded_name():
    with pytest.raises(FileNotFoundError, match="not an embedded dataset"):
        D.load("baby")
