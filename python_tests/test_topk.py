"""topk_scores against a brute-force float64 reference, on CPU and CUDA; errors; opcheck."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import requires_cuda
from mmfast import ops
from mmfast.ops import SparseGraph, topk_scores
from mmfast.ops import topk as topk_module

WIDTHS = [1, 3, 64, 128]
NEG_INF = float("-inf")


def brute_topk(q: torch.Tensor, keys: torch.Tensor, k: int, rowptr=None, col=None):
    """Per row: sort (score desc, index asc) over non-excluded, non-NaN keys; pad -inf/-1."""
    s = (q.double() @ keys.double().T).tolist()
    values, indices = [], []
    for r, row in enumerate(s):
        gone = set() if rowptr is None else set(col[rowptr[r]:rowptr[r + 1]].tolist())
        cand = sorted((-v, j) for j, v in enumerate(row) if j not in gone and not math.isnan(v))
        cand = cand[:k]
        values.append([-v for v, _ in cand] + [NEG_INF] * (k - len(cand)))
        indices.append([j for _, j in cand] + [-1] * (k - len(cand)))
    return (torch.tensor(values, dtype=torch.float64).reshape(len(s), k),
            torch.tensor(indices, dtype=torch.int64).reshape(len(s), k))


def assert_same_ranking(q, keys, ex, got, want):
    """CUDA (got) against CPU (want) on float data, where the two devices sum in different
    orders: the values agree within a tolerance, the padding is the same, and every returned
    key is a distinct, non-excluded key whose float64 score is the value at its place (near
    ties may swap keys, never break the contract)."""
    gv, gi = got[0].cpu(), got[1].cpu()
    wv, wi = want
    tol = {"rtol": 1e-5, "atol": 1e-5} if q.dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(gv, wv, **tol)
    assert torch.equal(gi == -1, wi == -1)
    real = gi >= 0
    scores = (q.double()[:, None, :] * keys.double()[gi.clamp(min=0)]).sum(-1)
    torch.testing.assert_close(scores[real], wv.double()[real], **tol)
    sorted_idx = gi.sort(1).values
    assert not ((sorted_idx[:, 1:] == sorted_idx[:, :-1]) & (sorted_idx[:, 1:] >= 0)).any()
    if ex is not None:
        rowptr, col = ex[0], ex[1]
        blocked = torch.zeros(q.shape[0], keys.shape[0], dtype=torch.bool)
        rows = torch.repeat_interleave(torch.arange(q.shape[0]), rowptr[1:] - rowptr[:-1])
        blocked[rows, col.long()] = True
        assert not blocked.gather(1, gi.clamp(min=0))[real].any()


def random_exclude(n_rows: int, n_keys: int, per_row: float, *, seed: int,
                   index_dtype=torch.int32, shuffle=True, duplicates=False):
    """A CSR of excluded ids per row: unsorted inside rows, optionally with repeats."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((n_rows,), per_row), generator=gen).long()
    counts = counts.clamp(max=n_keys)
    rowptr = torch.zeros(n_rows + 1, dtype=torch.long)
    rowptr[1:] = counts.cumsum(0)
    col = torch.cat([torch.randperm(n_keys, generator=gen)[:c] for c in counts.tolist()]
                    or [torch.empty(0, dtype=torch.long)])
    if not shuffle:
        col = torch.cat([col[rowptr[r]:rowptr[r + 1]].sort().values for r in range(n_rows)]
                        or [col])
    if duplicates and col.numel():
        col = torch.cat([col, col[:1]])  # the last row repeats the first entry (may be its own)
        rowptr[-1] += 1
        col[-1] = col[rowptr[-2]] if rowptr[-1] - rowptr[-2] > 1 else col[-1]
    return rowptr, col.to(index_dtype)


def assert_same(got, want):
    v, i = got
    torch.testing.assert_close(v.double(), want[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(i, want[1])


# ------------------------------------------------------------------------ against brute force
@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("k", [1, 7, 64, 300])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_matches_brute_force(d, k, with_exclude, backend):
    gen = torch.Generator().manual_seed(d * 1000 + k)
    q = torch.randn(70, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(2600, d, generator=gen, dtype=torch.float64)  # spans two CPU key tiles
    ex = random_exclude(70, 2600, 40.0, seed=k + d) if with_exclude else None
    got = topk_scores(q, keys, k, ex, backend=backend)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.int64
    assert got[0].shape == got[1].shape == (70, k)
    assert_same(got, brute_topk(q, keys, k, *(ex or (None, None))))


@pytest.mark.parametrize("n_keys", [65536, 65537 + 3000])  # the CPU's full-row and key-tile paths
def test_both_cpu_paths_with_ties_exclusions_and_inf(n_keys):
    gen = torch.Generator().manual_seed(n_keys)
    q = torch.randint(-2, 3, (9, 2), generator=gen).double()
    keys = torch.randint(-3, 4, (n_keys, 2), generator=gen).double()  # heavy ties
    ex = random_exclude(9, n_keys, 3000.0, seed=1, index_dtype=torch.int64)
    for k in (1, 50, 700):
        assert_same(topk_scores(q, keys, k, ex), brute_topk(q, keys, k, *ex))
    # rows of -inf and NaN: fewer buckets than k hold a finite score
    scores_q = torch.tensor([[1.0], [-1.0], [0.0]], dtype=torch.float64)
    keys1 = torch.full((n_keys, 1), float("inf"), dtype=torch.float64)
    keys1[::997] = torch.arange(len(keys1[::997]), dtype=torch.float64)[:, None] - 30.0
    v, i = topk_scores(scores_q, keys1, 200)
    ref = brute_topk(scores_q, keys1, 200, None, None)
    assert torch.equal(i, ref[1]) and torch.equal(v.isnan(), ref[0].isnan())


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_k_beyond_candidates_and_all_excluded(backend):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    keys = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    # row 0: nothing excluded; row 1: 9 of 12 excluded; row 2: all; row 3: all but one,
    # listed twice and unsorted; row 4: no row entries.
    rows = [[], [0, 2, 3, 5, 6, 7, 9, 10, 11], list(range(12))[::-1],
            [11, 3, 3, 0, 1, 2, 4, 5, 6, 7, 8, 9], []]
    rowptr = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    col = torch.tensor(sum(rows, []), dtype=torch.int64)
    v, i = topk_scores(q, keys, 20, (rowptr, col), backend=backend)
    assert_same((v, i), brute_topk(q, keys, 20, rowptr, col))
    assert (i[0, 12:] == -1).all() and (i[1, 3:] == -1).all() and (i[2] == -1).all()
    assert (v[2] == NEG_INF).all() and set(i[3, :1].tolist()) == {10} and (i[3, 1:] == -1).all()


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_the_smaller_index(backend, dtype):
    # Small integers: every score is exact in float32 too, and most scores tie.
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(-2, 3, (90, 3), generator=gen).to(dtype)
    keys = torch.randint(-2, 3, (3000, 3), generator=gen).to(dtype)
    keys[1500:] = keys[:1500]  # every key has a duplicate 1500 places later
    ex = random_exclude(90, 3000, 30.0, seed=9, index_dtype=torch.int64)
    for k in (1, 10, 100, 1200):
        assert_same(topk_scores(q, keys, k, ex, backend=backend), brute_topk(q, keys, k, *ex))


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_exclude_as_sparse_graph_with_unsorted_repeated_ids(backend):
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(33, 16, generator=gen, dtype=torch.float64)
    keys = torch.randn(500, 16, generator=gen, dtype=torch.float64)
    rowptr, col = random_exclude(33, 500, 60.0, seed=1, duplicates=True)
    graph = SparseGraph(rowptr, col, torch.ones(col.numel()), (33, 500))
    want = brute_topk(q, keys, 50, rowptr, col)
    assert_same(topk_scores(q, keys, 50, graph, backend=backend), want)
    sorted_rows = random_exclude(33, 500, 60.0, seed=1, shuffle=False)
    assert_same(topk_scores(q, keys, 50, sorted_rows, backend=backend),
                brute_topk(q, keys, 50, *sorted_rows))


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_nan_scores_are_never_selected(backend):
    q = torch.randn(4, 3, dtype=torch.float64)
    keys = torch.randn(9, 3, dtype=torch.float64)
    keys[2, 1] = float("nan")
    v, i = topk_scores(q, keys, 9, backend=backend)
    assert_same((v, i), brute_topk(q, keys, 9))
    assert not (i == 2).any() and (i[:, -1] == -1).all()


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_empty_shapes(backend):
    keys = torch.randn(10, 3, dtype=torch.float64)
    v, i = topk_scores(torch.empty(0, 3, dtype=torch.float64), keys, 4, backend=backend)
    assert v.shape == i.shape == (0, 4)
    v, i = topk_scores(torch.randn(3, 3, dtype=torch.float64), keys[:0], 4, backend=backend)
    assert (i == -1).all() and (v == NEG_INF).all() and v.shape == (3, 4)
    # Width 0: every score is 0, so the smallest indices win.
    v, i = topk_scores(torch.empty(3, 0), torch.empty(10, 0), 4, backend=backend)
    assert (v == 0).all() and i.tolist() == [[0, 1, 2, 3]] * 3
    ex = (torch.zeros(1, dtype=torch.long), torch.empty(0, dtype=torch.int32))
    out = topk_scores(torch.empty(0, 3), torch.randn(5, 3), 2, ex, backend=backend)
    assert out[0].shape == (0, 2)


def test_large_k_on_cpu_and_float32_agrees_with_reference():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(20, 32, generator=gen, dtype=torch.float64)
    keys = torch.randn(5000, 32, generator=gen, dtype=torch.float64)
    assert_same(topk_scores(q, keys, 3000), brute_topk(q, keys, 3000))
    # float32: the same set as the float64 answer except at float32-level near-ties.
    v32, i32 = topk_scores(q.float(), keys.float(), 100)
    v64, i64 = topk_scores(q, keys, 100)
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-5)
    assert (i32 == i64).float().mean() > 0.99


def test_deterministic_and_independent_of_thread_count():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(300, 64, generator=gen)
    keys = torch.randn(4000, 64, generator=gen)
    ex = random_exclude(300, 4000, 20.0, seed=3)
    first = topk_scores(q, keys, 50, ex)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = topk_scores(q, keys, 50, ex)
    finally:
        torch.set_num_threads(threads)
    for got in (single, topk_scores(q, keys, 50, ex)):
        assert torch.equal(got[0], first[0]) and torch.equal(got[1], first[1])


def test_not_differentiable_inputs_are_detached():
    q = torch.randn(5, 4, requires_grad=True)
    v, _ = topk_scores(q, torch.randn(7, 4), 3)
    assert not v.requires_grad


def test_opcheck():
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    keys = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    rowptr, col = random_exclude(40, 300, 10.0, seed=2)
    torch.library.opcheck(torch.ops.mmfast.topk_scores.default, (q, keys, 10, rowptr, col))
    torch.library.opcheck(torch.ops.mmfast.topk_scores.default, (q.float(), keys.float(), 5))


def test_torch_compile_fullgraph():
    q, keys = torch.randn(16, 8), torch.randn(50, 8)

    def top(x):
        return topk_scores(x * 2.0, keys, 5)[1]

    compiled = torch.compile(top, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q), top(q))


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_errors(backend):
    q, keys = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_scores(q, keys, 0, backend=backend)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_scores(q, keys, -2, backend=backend)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_scores(q, keys, 2.0, backend=backend)
    with pytest.raises(ValueError, match="queries have width 4 but keys have width 5"):
        topk_scores(q, torch.randn(6, 5), 2, backend=backend)
    with pytest.raises(TypeError, match="queries are torch.float32 but keys are torch.float64"):
        topk_scores(q, keys.double(), 2, backend=backend)
    with pytest.raises(TypeError, match="queries must be float32 or float64"):
        topk_scores(q.long(), keys.long(), 2, backend=backend)
    with pytest.raises(ValueError, match="queries must be a 2-D tensor"):
        topk_scores(q[0], keys, 2, backend=backend)
    rowptr = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"exclude holds key ids outside \[0, 6\): min 0, max 6"):
        topk_scores(q, keys, 2, (rowptr, torch.tensor([0, 6, 1])), backend=backend)
    with pytest.raises(ValueError, match=r"outside \[0, 6\): min -1"):
        topk_scores(q, keys, 2, (rowptr, torch.tensor([0, -1, 1])), backend=backend)
    with pytest.raises(ValueError, match="one row per query"):
        topk_scores(q, keys, 2, (rowptr[:3], torch.tensor([0, 1])), backend=backend)
    with pytest.raises(ValueError, match="non-decreasing"):
        topk_scores(q, keys, 2, (torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 2])),
                    backend=backend)
    with pytest.raises(TypeError, match="exclude col must be a 1-D int32 or int64"):
        topk_scores(q, keys, 2, (rowptr, torch.tensor([0.0, 1.0, 2.0])), backend=backend)
    with pytest.raises(ValueError, match=r"exclude must have shape \(n_queries, n_keys\)"):
        topk_scores(q, keys, 2, SparseGraph(rowptr, torch.tensor([0, 1, 2]), torch.ones(3), (3, 7)),
                    backend=backend)
    triple = (rowptr, torch.tensor([0, 5, 1]), torch.ones(3))
    assert torch.equal(topk_scores(q, keys, 2, triple, backend=backend)[1],
                       topk_scores(q, keys, 2, triple[:2], backend=backend)[1])
    with pytest.raises(TypeError, match="exclude must be None, a SparseGraph or a"):
        topk_scores(q, keys, 2, torch.zeros(3, 6), backend=backend)


def test_errors_from_the_op_itself():
    q, keys = torch.randn(3, 4), torch.randn(6, 4)
    rowptr = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        torch.ops.mmfast.topk_scores(q, keys, 0)
    with pytest.raises(RuntimeError, match="queries have width 4 but keys have width 3"):
        torch.ops.mmfast.topk_scores(q, keys[:, :3], 1)
    with pytest.raises(RuntimeError, match=r"exclude holds key ids outside \[0, 6\)"):
        torch.ops.mmfast.topk_scores(q, keys, 1, rowptr, torch.tensor([0, 9, 1]))
    with pytest.raises(RuntimeError, match="must be given together"):
        torch.ops.mmfast.topk_scores(q, keys, 1, rowptr, None)
    with pytest.raises(RuntimeError, match="rowptr must start at 0 and end at nnz"):
        torch.ops.mmfast.topk_scores(q, keys, 1, rowptr, torch.tensor([0, 1]))



def test_the_op_raises_cleanly_on_a_corrupt_exclude():
    # The op does not validate the CSR's contents up front (that is the wrapper's job, or the
    # SparseGraph's), but on CPU it must never read out of bounds: it raises instead.
    q, keys = torch.randn(300, 4), torch.randn(6, 4)  # 300 queries: several blocks, threads
    rowptr = torch.arange(301)
    col = torch.zeros(300, dtype=torch.int64)
    big = 1 << 40
    corrupt = {
        "huge col": (rowptr, col.index_fill(0, torch.tensor([150]), big),
                     r"exclude holds key ids outside \[0, 6\)"),
        "negative col (int32)": (rowptr, col.int().index_fill(0, torch.tensor([7]), -3),
                                 r"exclude holds key ids outside \[0, 6\)"),
        "decreasing rowptr": (rowptr.index_fill(0, torch.tensor([200]), 10), col,
                              "rowptr must be non-decreasing"),
        "rowptr far beyond nnz inside": (rowptr.index_fill(0, torch.tensor([100]), big), col,
                                         "rowptr must be non-decreasing"),
        "negative rowptr inside": (rowptr.index_fill(0, torch.tensor([100]), -big), col,
                                   "rowptr must be non-decreasing"),
        "rowptr end beyond nnz": (rowptr.index_fill(0, torch.tensor([300]), 301), col,
                                  "rowptr must start at 0 and end at nnz"),
    }
    for name, (rp, c, message) in corrupt.items():
        with pytest.raises(RuntimeError, match=message):
            torch.ops.mmfast.topk_scores(q, keys, 2, rp, c)
    # The process is fine and a valid CSR still gives the reference's answer.
    want = ops.topk_scores_reference(q, keys, 2, (rowptr, col))
    for got, ref in zip(torch.ops.mmfast.topk_scores(q, keys, 2, rowptr, col), want):
        torch.testing.assert_close(got, ref)


def test_a_sparse_graph_exclude_is_not_validated_again(monkeypatch):
    # SparseGraph validated the CSR when it was built: the wrapper must not check it again (on
    # CUDA each check is a device->host sync). A raw CSR is checked exactly once per call.
    calls = []
    real = topk_module.check_csr_indices
    monkeypatch.setattr(topk_module, "check_csr_indices",
                        lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    q, keys = torch.randn(33, 8), torch.randn(500, 8)
    rowptr, col = random_exclude(33, 500, 20.0, seed=5)
    graph = SparseGraph(rowptr, col, torch.ones(col.numel()), (33, 500))
    for backend in ("mmfast", "torch"):
        got = topk_scores(q, keys, 7, graph, backend=backend)
        assert not calls
        want = topk_scores(q, keys, 7, (rowptr, col), backend=backend)
        assert len(calls) == 1
        calls.clear()
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------ CUDA
@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 10, 50, 129, 1024])
@pytest.mark.parametrize("d", [1, 3, 64, 130])
def test_cuda_matches_cpu(dtype, k, d):
    gen = torch.Generator().manual_seed(k + d)
    # Small integers: identical scores on both devices whatever the summation order.
    q = torch.randint(-3, 4, (77, d), generator=gen).to(dtype)
    keys = torch.randint(-3, 4, (3001, d), generator=gen).to(dtype)
    ex = random_exclude(77, 3001, 50.0, seed=k)
    want = topk_scores(q, keys, k, ex)
    got = topk_scores(q.cuda(), keys.cuda(), k, (ex[0].cuda(), ex[1].cuda()))
    assert torch.equal(got[1].cpu(), want[1])
    assert torch.equal(got[0].cpu(), want[0])


@requires_cuda
@pytest.mark.cuda
def test_cuda_random_floats_padding_and_many_queries():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(5000, 64, generator=gen, dtype=torch.float64)
    keys = torch.randn(700, 64, generator=gen, dtype=torch.float64)
    ex = random_exclude(5000, 700, 100.0, seed=4)
    want = topk_scores(q, keys, 100, ex)
    got = topk_scores(q.cuda(), keys.cuda(), 100, (ex[0].cuda(), ex[1].cuda()))
    assert_same_ranking(q, keys, ex, got, want)
    few = topk_scores(q[:3].cuda(), keys[:5].cuda(), 8)  # k > keys: padding
    assert (few[1][:, 5:] == -1).all().item() and (few[0][:, 5:] == NEG_INF).all().item()
    empty = topk_scores(q[:0].cuda(), keys.cuda(), 8)
    assert empty[0].shape == (0, 8)
    with pytest.raises(ValueError, match="exceeds the CUDA kernel's limit of 1024"):
        topk_scores(q[:2].cuda(), keys.cuda(), 1025)


@requires_cuda
@pytest.mark.cuda
def test_cuda_few_queries_many_keys_split_across_blocks():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    keys = torch.randn(200_000, 16, generator=gen, dtype=torch.float64)
    for k in (1, 64, 1024):
        want = topk_scores(q, keys, k)
        got = topk_scores(q.cuda(), keys.cuda(), k)
        assert_same_ranking(q, keys, None, got, want)


# ------------------------------------------------------------------------ exclude cursor
def simulated_cuda_cursor(col, begin, end, tile_begin, tile_end, tile=128, warp=32):
    """csrc/cuda/topk.cu's per-query cursor over a sorted exclude row, replayed: per tile,
    32-entry chunks from the cursor, each lane's entry passed when below the tile's end
    (marked when inside it), the cursor advanced by the passed prefix, stopping at the first
    chunk that reaches past. Returns the marked key ids per tile."""
    marked = {}
    c = begin
    for t in range(tile_begin, tile_end):
        k0 = t * tile
        bits = set()
        while c < end:
            ids = [col[e] - k0 if e < end else tile for e in range(c, c + warp)]
            below = [i < tile for i in ids]
            bits.update(k0 + i for i, b in zip(ids, below) if b and i >= 0)
            passed = sum(below)
            assert below == [True] * passed + [False] * (warp - passed)  # a prefix: sorted row
            c += passed
            if passed != warp:
                break
        marked[t] = bits
    return marked


@pytest.mark.parametrize("seed", range(6))
def test_topk_cuda_exclude_cursor_marks_each_tile_exactly(seed):
    gen = torch.Generator().manual_seed(seed)
    n_keys = int(torch.randint(1, 2000, (1,), generator=gen))
    nnz = int(torch.randint(0, 300, (1,), generator=gen))
    # Sorted, with repeats, and out-of-range ids at both ends (a corrupt raw CSR).
    col = torch.randint(-5, n_keys + 300, (nnz,), generator=gen).sort().values.tolist()
    n_tiles = (n_keys + 127) // 128
    for tile_begin in range(0, n_tiles, max(1, n_tiles // 3)):  # a split's first tile
        marked = simulated_cuda_cursor(col, 0, nnz, tile_begin, n_tiles)
        for t, bits in marked.items():
            assert bits == {c for c in col if t * 128 <= c < (t + 1) * 128}, (t, tile_begin)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [63, 64])  # scalar and 16-byte key loads
@pytest.mark.parametrize("shuffle", [False, True])  # cursor and rescan paths
def test_cuda_float_data_sorted_and_unsorted_exclude(dtype, d, shuffle):
    gen = torch.Generator().manual_seed(d)
    q = torch.randn(300, d, generator=gen, dtype=torch.float64).to(dtype)
    keys = torch.randn(5000, d, generator=gen, dtype=torch.float64).to(dtype)
    ex = random_exclude(300, 5000, 400.0, seed=d, shuffle=shuffle, duplicates=True)
    want = topk_scores(q, keys, 50, ex)
    got = topk_scores(q.cuda(), keys.cuda(), 50, (ex[0].cuda(), ex[1].cuda()))
    assert_same_ranking(q, keys, ex, got, want)
    graph = SparseGraph(ex[0], ex[1], torch.ones(ex[1].numel()), (300, 5000))
    got = topk_scores(q.cuda(), keys.cuda(), 50, graph.to("cuda"))
    assert_same_ranking(q, keys, ex, got, want)


def brute_topk_of_scores(scores: torch.Tensor, k: int, rowptr=None, col=None):
    """brute_topk's contract on given scores (-inf scores are candidates; NaN is excluded)."""
    values, indices = [], []
    for r, row in enumerate(scores.double().tolist()):
        gone = set() if rowptr is None else set(col[rowptr[r]:rowptr[r + 1]].tolist())
        cand = sorted((-v, j) for j, v in enumerate(row) if j not in gone and not math.isnan(v))
        cand = cand[:k]
        values.append([-v for v, _ in cand] + [NEG_INF] * (k - len(cand)))
        indices.append([j for _, j in cand] + [-1] * (k - len(cand)))
    return (torch.tensor(values, dtype=torch.float64).reshape(len(values), k),
            torch.tensor(indices, dtype=torch.int64).reshape(len(values), k))


def assert_topk_of_scores_matches_brute(scores: torch.Tensor, k: int, rows: list) -> None:
    """``topk_of_scores`` equals the brute force without an exclude and with the exclude CSR
    whose row r lists ``rows[r]``."""
    rowptr = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    col = torch.tensor([c for r in rows for c in r], dtype=torch.int64)
    for exclude in (None, (rowptr, col)):
        got_v, got_i = ops.topk_of_scores(scores, k, exclude)
        want_v, want_i = brute_topk_of_scores(scores, k, *(exclude or (None, None)))
        assert torch.equal(got_i, want_i)
        torch.testing.assert_close(got_v, want_v)


@pytest.mark.parametrize("k", [1, 5, 12, 40])
def test_topk_of_scores_ties_go_to_the_smaller_index(k):
    """Scores with many ties (small integers, many zeros as ItemKNNCBF's), -inf scores, NaNs,
    excluded keys and rows with fewer candidates than k."""
    gen = torch.Generator().manual_seed(k)
    n, n_keys = 60, 37
    scores = torch.randint(0, 4, (n, n_keys), generator=gen).double()
    scores[torch.rand(n, n_keys, generator=gen) < 0.5] = 0.0
    scores[torch.rand(n, n_keys, generator=gen) < 0.05] = NEG_INF
    scores[torch.rand(n, n_keys, generator=gen) < 0.05] = float("nan")
    scores[3] = 1.0  # one row of nothing but ties
    scores[4] = NEG_INF  # and one with no finite candidate
    rows = [sorted(torch.randperm(n_keys, generator=gen)[:int(torch.randint(0, 30, (1,),
                                                                              generator=gen))].tolist())
            for _ in range(n)]
    rows[5] = list(range(n_keys))  # everything excluded
    assert_topk_of_scores_matches_brute(scores, k, rows)


@pytest.mark.parametrize("tie_rate", [0.001, 0.02, 0.9])
def test_topk_of_scores_wide_rows_sparse_and_dense_ties(tie_rate):
    """Rows wider than the first windows the tied keys are searched in (256, then 1,024, ...):
    ties at the k-th score that are rare (found far along the row, several windows), common, or
    most of the row (a sparse scorer's zeros), with exclusions and -inf padding."""
    gen = torch.Generator().manual_seed(int(tie_rate * 1000))
    n, n_keys, k = 24, 3000, 20
    scores = -1.0 - torch.rand(n, n_keys, generator=gen, dtype=torch.float64)
    scores[torch.rand(n, n_keys, generator=gen) < tie_rate] = 0.0
    scores[:, :5] = 1.0 + torch.rand(n, 5, generator=gen, dtype=torch.float64)  # above the ties
    scores[0] = 0.0
    scores[1, :] = NEG_INF
    scores[1, 2900:] = 0.0  # few candidates, all far along the row
    scores[2, 2990:] = NEG_INF
    rows = [sorted(torch.randperm(n_keys, generator=gen)[:50].tolist()) for _ in range(n)]
    assert_topk_of_scores_matches_brute(scores, k, rows)
