"""Graph propagation ops (spmm, propagate) against float64 references, on CPU and CUDA."""
from __future__ import annotations

import pytest
import torch

from conftest import dense_reference, random_graph, requires_cuda
from mmfast import ops
from mmfast.ops import SparseGraph, layer_coefficients, propagate, spmm

WIDTHS = [1, 7, 64, 130]
SHAPES = [(1, 1), (1, 9), (37, 37), (200, 200)]  # a single row, and larger random graphs


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, the float32-vs-float64 yardstick (rounding lands far under 1e-5)."""
    return float((got.detach().double() - want.detach()).norm() / want.detach().norm())


def dense_propagate(dense: torch.Tensor, x: torch.Tensor, coeffs: list[float]) -> torch.Tensor:
    out, h = coeffs[0] * x, x
    for c in coeffs[1:]:
        h = dense @ h
        out = out + c * h
    return out


# ------------------------------------------------------------------------ SparseGraph
def test_from_coo_sums_duplicates_and_sorts():
    g = SparseGraph.from_coo(
        torch.tensor([2, 0, 2, 0]), torch.tensor([1, 3, 1, 0]),
        torch.tensor([1.0, 2.0, 4.0, 8.0]), (3, 4),
    )
    assert g.rowptr.tolist() == [0, 2, 2, 3]
    assert g.col.tolist() == [0, 3, 1]
    assert g.val.tolist() == [8.0, 2.0, 5.0]


def test_transpose_and_conversions():
    g = random_graph(23, 11, seed=3)
    dense = dense_reference(g)
    torch.testing.assert_close(dense_reference(g.T), dense.T)
    assert g.T.T is g
    torch.testing.assert_close(g.to_dense(), dense)
    torch.testing.assert_close(SparseGraph.from_torch(dense.to_sparse()).to_dense(), dense)
    torch.testing.assert_close(SparseGraph.from_torch(dense.to_sparse_csr()).to_dense(), dense)
    torch.testing.assert_close(SparseGraph.from_torch(dense).to_dense(), dense)
    g32 = g.to(dtype=torch.float32)
    assert g32.dtype == torch.float32 and g32.T.dtype == torch.float32
    assert "nnz=" in repr(g)


def test_symmetric_graph_is_its_own_transpose():
    g = random_graph(30, 30, symmetric=True, seed=5)
    assert g.T is g
    dense = dense_reference(g)
    torch.testing.assert_close(dense, dense.T)


# ------------------------------------------------------------------------ forward/backward
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_every_width_up_to_two_register_blocks(dtype):
    """The CPU kernel splits a row into slices of 8, 4, 2 and 1 SIMD vectors and a scalar rest:
    every width from 1 to 140 takes a different combination (float32: 8 lanes, float64: 4)."""
    g = random_graph(60, 45, avg_degree=6, dtype=dtype, seed=11)
    sq = random_graph(60, 60, avg_degree=6, dtype=dtype, seed=12)
    dense, dense_sq = dense_reference(g).to(dtype), dense_reference(sq).to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    for d in range(1, 141):
        x = torch.randn(45, d, dtype=dtype)
        torch.testing.assert_close(spmm(g, x), dense @ x, **tol, msg=f"d={d}")
        h = torch.randn(60, d, dtype=dtype)  # the fused epilogue: c0 h + c1 G h
        torch.testing.assert_close(propagate(sq, h, 1, "sum"), h + dense_sq @ h, **tol,
                                   msg=f"d={d}")


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("shape", SHAPES + [(50, 17), (17, 50)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_spmm_matches_dense(shape, d, index_dtype):
    g = random_graph(*shape, avg_degree=5, index_dtype=index_dtype, seed=d + shape[0])
    x = torch.randn(shape[1], d, dtype=torch.float64, requires_grad=True)
    y = spmm(g, x)
    dense = dense_reference(g)
    torch.testing.assert_close(y, dense @ x.detach())
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(gx, dense.T @ dy)


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("n", [1, 37, 200])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("combine", ["mean", "sum", "last", "weights"])
def test_propagate_matches_dense(n, d, layers, combine):
    g = random_graph(n, n, avg_degree=6, seed=n * 7 + d)
    if combine == "weights":
        combine = [0.5 + 0.25 * k for k in range(layers + 1)]
    coeffs = layer_coefficients(layers, combine)
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    out = propagate(g, x, layers, combine)
    dense = dense_reference(g)
    torch.testing.assert_close(out, dense_propagate(dense, x.detach(), coeffs))
    dout = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, dout)
    torch.testing.assert_close(gx, dense_propagate(dense.T, dout, coeffs))


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_backends_agree_in_float32(backend):
    g = random_graph(300, 300, avg_degree=8, dtype=torch.float32, seed=11)
    x = torch.randn(300, 64, requires_grad=True)
    out = propagate(g, x, 3, "mean", backend=backend)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    g64 = g.to(dtype=torch.float64)
    x64 = x.detach().double().requires_grad_()
    ref = ops.propagate_reference(g64, x64, layer_coefficients(3, "mean"))
    (gref,) = torch.autograd.grad(ref.square().sum(), x64)
    assert relative_error(out, ref) < 1e-6
    assert relative_error(gx, gref) < 1e-6


def test_duplicate_columns_in_a_row_add_up():
    g = random_graph(40, 25, avg_degree=6, duplicates=True, seed=2)
    counts = torch.bincount(g.row_indices() * 25 + g.col.long())
    assert int(counts.max()) > 1, "the fixture must really hold duplicates"
    x = torch.randn(25, 7, dtype=torch.float64, requires_grad=True)
    y = spmm(g, x)
    dense = dense_reference(g)
    torch.testing.assert_close(y, dense @ x.detach())
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, dense.T @ torch.ones_like(y))


def test_empty_graph_and_empty_inputs():
    empty = SparseGraph(torch.zeros(6, dtype=torch.long), torch.empty(0, dtype=torch.int32),
                        torch.empty(0, dtype=torch.float64), (5, 5))
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(spmm(empty, x), torch.zeros(5, 3, dtype=torch.float64))
    torch.testing.assert_close(propagate(empty, x, 2, "mean"), x / 3)
    nothing = SparseGraph(torch.zeros(1, dtype=torch.long), torch.empty(0, dtype=torch.int32),
                          torch.empty(0, dtype=torch.float64), (0, 0))
    assert propagate(nothing, torch.empty(0, 4, dtype=torch.float64), 3).shape == (0, 4)
    g = random_graph(10, 10, seed=1)
    assert spmm(g, torch.empty(10, 0, dtype=torch.float64)).shape == (10, 0)


def test_deterministic_on_cpu():
    g = random_graph(2000, 2000, avg_degree=20, dtype=torch.float32, seed=4)
    x = torch.randn(2000, 64)
    first = propagate(g, x, 3)
    for _ in range(3):
        assert torch.equal(propagate(g, x, 3), first)


def test_gradcheck():
    g = random_graph(12, 12, avg_degree=3, seed=9)
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spmm(g, t), (x,))
    assert torch.autograd.gradcheck(lambda t: propagate(g, t, 3, "mean"), (x,))
    assert torch.autograd.gradcheck(lambda t: propagate(g, t, 2, [0.3, -1.0, 2.0]), (x,))
    assert torch.autograd.gradgradcheck(lambda t: propagate(g, t, 2, "sum"), (x,))


def _raw_args(g: SparseGraph):
    t = g.T
    return (g.rowptr, g.col, g.val, t.rowptr, t.col, t.val)


@pytest.mark.parametrize("d", [1, 7, 64])
def test_opcheck(d):
    g = random_graph(20, 20, avg_degree=4, seed=d)
    x = torch.randn(20, d, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.mmfast.spmm.default, (*_raw_args(g), x))
    torch.library.opcheck(torch.ops.mmfast.propagate.default, (*_raw_args(g), x, [0.5, 0.3, 0.2]))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """No graph breaks, and the compiled forward and backward equal eager ones."""
    g = random_graph(64, 64, avg_degree=5, dtype=torch.float32, seed=8)
    weight = torch.randn(16, 16, requires_grad=True)

    def layer(x):
        return propagate(g, x @ weight, 2, "mean").relu().sum()

    x = torch.randn(64, 16)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    got = compiled(x)  # compiled before any eager call touches the graph
    (g_got,) = torch.autograd.grad(got, weight)
    expected = layer(x)
    (g_expected,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)


def test_backend_switch():
    g = random_graph(10, 10, seed=0)
    x = torch.randn(10, 3, dtype=torch.float64)
    with ops.use_backend("torch"):
        assert ops.get_default_backend() == "torch"
        torch.testing.assert_close(spmm(g, x), dense_reference(g) @ x)
    assert ops.get_default_backend() == "mmfast"
    with pytest.raises(ValueError, match="backend must be one of"):
        spmm(g, x, backend="cusparse")


# ------------------------------------------------------------------------ bad input
def test_graph_validation_errors():
    col = torch.tensor([0, 1, 2], dtype=torch.int32)
    val = torch.ones(3)
    with pytest.raises(ValueError, match="non-decreasing"):
        SparseGraph(torch.tensor([0, 2, 1, 3]), col, val, (3, 3))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        SparseGraph(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 3], dtype=torch.int32), val,
                    (3, 3))
    with pytest.raises(ValueError, match="n_rows \\+ 1"):
        SparseGraph(torch.tensor([0, 3]), col, val, (3, 3))
    with pytest.raises(ValueError, match="end at nnz"):
        SparseGraph(torch.tensor([0, 1, 2, 2]), col, val, (3, 3))
    with pytest.raises(TypeError, match="rowptr must be a 1-D int64"):
        SparseGraph(torch.tensor([0, 1, 2, 3], dtype=torch.int32), col, val, (3, 3))
    with pytest.raises(TypeError, match="col must be a 1-D int32 or int64"):
        SparseGraph(torch.tensor([0, 1, 2, 3]), col.float(), val, (3, 3))
    with pytest.raises(TypeError, match="val must be a 1-D float32 or float64"):
        SparseGraph(torch.tensor([0, 1, 2, 3]), col, val.half(), (3, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        SparseGraph(torch.tensor([0, 1, 2, 3]), col, torch.tensor([1.0, float("nan"), 1.0]),
                    (3, 3))
    with pytest.raises(ValueError, match="one entry per nonzero"):
        SparseGraph(torch.tensor([0, 1, 2, 3]), col, torch.ones(2), (3, 3))
    with pytest.raises(ValueError, match=r"cols holds indices outside \[0, 4\)"):
        SparseGraph.from_coo(torch.tensor([0, 1]), torch.tensor([0, 4]), None, (2, 4))
    with pytest.raises(ValueError, match="is_symmetric=True needs a square graph"):
        SparseGraph(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.ones(2), (2, 3),
                    is_symmetric=True)


def test_operand_errors():
    g = random_graph(10, 8, seed=0)
    x = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="x has 10 rows but the graph has 8 columns"):
        spmm(g, torch.randn(10, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="x is torch.float32 but the graph values are torch.float64"):
        spmm(g, x.float())
    with pytest.raises(ValueError, match="x must be a 2-D tensor"):
        spmm(g, x[:, 0])
    with pytest.raises(ValueError, match="x is on meta but the graph is on cpu"):
        spmm(g, x.to("meta"))
    with pytest.raises(ValueError, match="graph must be square"):
        propagate(g, x, 2)
    sq = random_graph(8, 8, seed=0)
    with pytest.raises(ValueError, match="layers must be a non-negative int"):
        propagate(sq, x, -1)
    with pytest.raises(ValueError, match="combine must be one of"):
        propagate(sq, x, 2, "max")
    with pytest.raises(ValueError, match="one entry per layer output"):
        propagate(sq, x, 2, [1.0, 2.0])
    leaf = SparseGraph(sq.rowptr, sq.col, sq.val.clone().requires_grad_(), sq.shape)
    with pytest.raises(NotImplementedError, match="gradients with respect to SparseGraph.val"):
        spmm(leaf, x)


def test_raw_op_checks_name_the_argument():
    """Direct torch.ops callers get TORCH_CHECK errors, never a crash."""
    g = random_graph(6, 6, avg_degree=3, seed=1)
    rowptr, col, val, rt, ct, vt = _raw_args(g)
    x = torch.randn(6, 3, dtype=torch.float64)
    bad_col = col.clone()
    bad_col[0] = 99
    with pytest.raises(RuntimeError, match=r"col holds an index outside \[0, 6\)"):
        torch.ops.mmfast.spmm(rowptr, bad_col, val, rt, ct, vt, x)
    unsorted = rowptr.clone()
    unsorted[2], unsorted[3] = int(rowptr[3]) + 1, int(rowptr[2])
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.mmfast.spmm(unsorted, col, val, rt, ct, vt, x)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        torch.ops.mmfast.spmm(rowptr, col, val, rt, ct, vt, x.long())
    with pytest.raises(RuntimeError, match="must match the graph values"):
        torch.ops.mmfast.spmm(rowptr, col, val, rt, ct, vt, x.float())
    with pytest.raises(RuntimeError, match="col must be a 1-D int32 or int64"):
        torch.ops.mmfast.spmm(rowptr, col.double(), val, rt, ct, vt, x)
    with pytest.raises(RuntimeError, match="x has 5 rows but the graph has 6 columns"):
        torch.ops.mmfast.spmm(rowptr, col, val, rt, ct, vt, x[:5])
    with pytest.raises(RuntimeError, match="coeffs must hold at least c_0"):
        torch.ops.mmfast.propagate(rowptr, col, val, rt, ct, vt, x, [])


# ------------------------------------------------------------------------ CUDA vs CPU
@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("d", [1, 2, 3, 7, 32, 64, 65, 130, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_cuda_matches_cpu(d, dtype, index_dtype):
    g = random_graph(500, 500, avg_degree=12, dtype=dtype, index_dtype=index_dtype, seed=d)
    gc = g.to("cuda")
    x = torch.randn(500, d, dtype=dtype, requires_grad=True)
    xc = x.detach().cuda().requires_grad_()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    for fn in (lambda gr, t: spmm(gr, t), lambda gr, t: propagate(gr, t, 3, "mean")):
        out, outc = fn(g, x), fn(gc, xc)
        torch.testing.assert_close(outc.cpu(), out, **tol)
        dout = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, dout)
        (gxc,) = torch.autograd.grad(outc, xc, dout.cuda())
        torch.testing.assert_close(gxc.cpu(), gx, **tol)


@requires_cuda
@pytest.mark.cuda
def test_cuda_unaligned_and_odd_inputs():
    g = random_graph(101, 101, avg_degree=7, dtype=torch.float32, seed=3).to("cuda")
    base = torch.randn(101 * 64 + 1, device="cuda")
    x = base[1:].view(101, 64)  # misaligned for 16-byte loads: must fall back, not fault
    torch.testing.assert_close(spmm(g, x).cpu(), spmm(g.to("cpu"), x.cpu()), rtol=1e-5, atol=1e-5)
    one = random_graph(1, 1, dtype=torch.float32, seed=0).to("cuda")
    torch.testing.assert_close(propagate(one, torch.ones(1, 5, device="cuda"), 2).cpu(),
                               propagate(one.to("cpu"), torch.ones(1, 5), 2))


@requires_cuda
@pytest.mark.cuda
def test_cuda_deterministic_and_opcheck():
    g = random_graph(3000, 3000, avg_degree=30, dtype=torch.float32, seed=6).to("cuda")
    x = torch.randn(3000, 64, device="cuda")
    first = propagate(g, x, 3)
    assert torch.equal(propagate(g, x, 3), first)
    small = random_graph(20, 20, seed=2).to("cuda")
    xs = torch.randn(20, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.mmfast.propagate.default, (*_raw_args(small), xs, [0.5, 0.5]))


@requires_cuda
@pytest.mark.cuda
def test_cuda_corrupt_csr_from_torch_ops_does_not_fault():
    """Direct torch.ops callers own the CSR's validity; on CUDA a corrupt one (rows past nnz,
    columns out of range) gives meaningless rows but no illegal memory access."""
    rowptr = torch.tensor([0, 2, 9, 3], device="cuda")  # row 1 ends past nnz, row 2 falls
    col = torch.tensor([0, 1_000_000, -7], dtype=torch.int32, device="cuda")
    val = torch.ones(3, device="cuda")
    x = torch.ones(3, 8, device="cuda")
    out = torch.ops.mmfast.spmm(rowptr, col, val, rowptr, col, val, x)
    torch.cuda.synchronize()  # an illegal access would surface here
    assert out.shape == (3, 8)
    assert torch.equal(out[0].cpu(), torch.ones(8))  # column 0 read, column 10^6 skipped
