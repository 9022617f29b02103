"""Item kNN graphs (MODELS.md §1.4 G2/G3) against dense float64 references; cache; errors."""
from __future__ import annotations

import os

import pytest
import torch

from mmfast.data.knn import item_knn_graph, knn_graph, mix_graphs, modality_weights


def dense_knn(x: torch.Tensor, k: int, style: str) -> torch.Tensor:
    """The dense item x item graph, built the obvious way (full similarity matrix)."""
    x = x.double()
    xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-300)
    sim = xn @ xn.T
    k = min(k, x.shape[0])
    order = sim.sort(dim=1, descending=True, stable=True).indices[:, :k]  # ties: smaller index
    kept = torch.zeros_like(sim).scatter_(1, order, sim.gather(1, order))
    mask = torch.zeros_like(sim).scatter_(1, order, 1.0)
    if style == "freedom":
        r = mask.sum(1)
        return mask / torch.sqrt(r[:, None] * r[None, :])
    d = kept.sum(1)
    inv = torch.where(d > 0, d.clamp(min=1e-300).rsqrt(), torch.zeros_like(d))
    return inv[:, None] * kept * inv[None, :]


def features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("style", ["freedom", "mgcn"])
@pytest.mark.parametrize("n,d,k", [(50, 8, 10), (300, 64, 10), (7, 3, 10), (120, 1, 5)])
def test_matches_dense(style, n, d, k):
    x = features(n, d, seed=n + d)
    if d == 1:  # one dimension: similarities are +-1, all tied; ties go to smaller ids
        x = x.abs() + 0.5
    g = knn_graph(x, k, style=style, block_rows=17)
    assert g.shape == (n, n) and g.dtype == torch.float32 and g.nnz == n * min(k, n)
    want = dense_knn(x, k, style)
    torch.testing.assert_close(g.to_dense().double(), want, atol=1e-6, rtol=1e-5)
    if style == "freedom":
        assert torch.allclose(g.val, torch.full_like(g.val, 1 / min(k, n)))
        torch.testing.assert_close(g.to_dense().sum(1), torch.ones(n))  # row-stochastic
    # Each item is its own nearest neighbour (cosine 1), unless tied with a smaller id.
    # (MGCN weights can vanish when a row keeps negative similarities: k >= n here.)
    if d > 1 and (style == "freedom" or k < n):
        assert (g.to_dense().diagonal() > 0).all()


def test_mixing_and_zero_rows():
    img, txt = features(80, 32, 1), features(80, 16, 2)
    txt[5] = 0.0  # no direction: similarity 0 to everything
    mixed = item_knn_graph({"image": img, "text": txt}, 10, cache=False)
    want = 0.1 * dense_knn(img, 10, "freedom") + 0.9 * dense_knn(txt, 10, "freedom")
    torch.testing.assert_close(mixed.to_dense().double(), want, atol=1e-6, rtol=1e-5)
    g3 = item_knn_graph({"a": img, "b": txt}, 4, style="mgcn", weights={"a": 0.3, "b": 0.7},
                        cache=False)
    want3 = 0.3 * dense_knn(img, 4, "mgcn") + 0.7 * dense_knn(txt, 4, "mgcn")
    torch.testing.assert_close(g3.to_dense().double(), want3, atol=1e-6, rtol=1e-5)
    # Without weights: modality_weights (image + audio as TikTok; no image: equal shares).
    trio = item_knn_graph({"image": img, "audio": txt, "text": txt}, 4, cache=False)
    want_trio = 0.1 * dense_knn(img, 4, "freedom") + 0.9 * dense_knn(txt, 4, "freedom")
    torch.testing.assert_close(trio.to_dense().double(), want_trio, atol=1e-6, rtol=1e-5)
    assert modality_weights(["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert modality_weights(["image", "audio"], 0.3) == {"image": 0.3, "audio": 0.7}
    assert modality_weights(["text"], 0.3) == {"text": 1.0}
    single = mix_graphs([knn_graph(img, 3)], [1.0])
    torch.testing.assert_close(single.to_dense().double(), dense_knn(img, 3, "freedom"))


def test_backends_agree_in_float32():
    x = features(400, 48, 3).float()
    a = knn_graph(x, 10, backend="mmfast")
    b = knn_graph(x, 10, backend="torch")
    assert (a.to_dense() != 0).eq(b.to_dense() != 0).float().mean() > 0.999


def test_disk_cache(tmp_path):
    feats = {"image": features(60, 12, 4).float().numpy(), "text": features(60, 6, 5).float()}
    first = item_knn_graph(feats, 5, cache_dir=tmp_path)
    files = list((tmp_path / "graphs").glob("knn-freedom-k5-*.pt"))
    assert len(files) == 1
    stamp = os.stat(files[0]).st_mtime_ns
    again = item_knn_graph(feats, 5, cache_dir=tmp_path)
    assert os.stat(files[0]).st_mtime_ns == stamp  # read, not rebuilt
    assert torch.equal(again.to_dense(), first.to_dense())
    # Any change of input or parameter is a different entry.
    item_knn_graph(feats, 6, cache_dir=tmp_path)
    item_knn_graph(feats, 5, style="mgcn", cache_dir=tmp_path)
    item_knn_graph(feats, 5, image_weight=0.2, cache_dir=tmp_path)
    changed = dict(feats, text=feats["text"].clone())
    changed["text"][0, 0] += 1.0
    item_knn_graph(changed, 5, cache_dir=tmp_path)
    assert len(list((tmp_path / "graphs").glob("knn-*.pt"))) == 5
    files[0].write_bytes(b"corrupt")  # an unreadable entry is rebuilt
    assert torch.equal(item_knn_graph(feats, 5, cache_dir=tmp_path).to_dense(), first.to_dense())


def test_errors():
    x = features(10, 4, 0)
    with pytest.raises(ValueError, match="style must be one of"):
        knn_graph(x, 3, style="lattice")
    with pytest.raises(ValueError, match="k must be a positive int"):
        knn_graph(x, 0)
    with pytest.raises(ValueError, match=r"features must be a 2-D \[n_items, d\] matrix"):
        knn_graph(x[0], 3)
    bad = x.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn_graph(bad, 3)
    with pytest.raises(ValueError, match="weights must name exactly the modalities"):
        item_knn_graph({"image": x, "text": x}, 3, weights={"image": 1.0}, cache=False)
    with pytest.raises(ValueError, match="differ in item count"):
        item_knn_graph({"image": x, "text": x[:5]}, 3, cache_dir="/nonexistent-not-written")


@pytest.mark.slow
def test_elec_sized_graph_without_items_by_items_memory():
    """63,001 items (Amazon Elec): peak extra memory stays far below one items x items matrix
    (15.9 GB in float32). Width 64 keeps it quick on CPU; the memory of topk_scores does not
    grow with d beyond the normalized feature copy."""
    n = 63_001
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    g = knn_graph(x, 10, block_rows=16384)
    peak_mib = (_rss_kib("VmHWM") - before) / 1024
    assert g.nnz == n * 10 and g.shape == (n, n)
    assert peak_mib < 400, f"peak extra memory {peak_mib:.0f} MiB"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)
