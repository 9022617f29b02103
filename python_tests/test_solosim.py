"""SoloSim (mmfast.ops.solosim_loss) against float64 references, on CPU and CUDA."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

import mmfast
from conftest import randn, requires_cuda
from mmfast.ops import solosim_loss

SIZES = [1, 2, 33, 1000]
WIDTHS = [1, 32, 63]


def solosim_dense(a, b, tau, normalize=True, symmetric=False):
    """Independent float64 formula: -log of the diagonal softmax entries, by logsumexp."""
    if normalize:
        a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    s = a @ b.T / tau
    loss = (torch.logsumexp(s, 1) - s.diagonal()).mean()
    if symmetric:
        loss = 0.5 * (loss + (torch.logsumexp(s, 0) - s.diagonal()).mean())
    return loss


# ------------------------------------------------------------------------ SoloSim
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_solosim_matches_float64(n, d, normalize, symmetric):
    a = randn(n, d, seed=n + d).requires_grad_()
    b = randn(n, d, seed=n * 3 + d + 1).requires_grad_()
    tau = 0.2 if normalize else 2.0
    loss = solosim_loss(a, b, tau, normalize, symmetric)
    ref = solosim_dense(a, b, tau, normalize, symmetric)
    torch.testing.assert_close(loss, ref)
    grads, ref_grads = torch.autograd.grad(loss, (a, b)), torch.autograd.grad(ref, (a, b))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(solosim_loss(a, b, tau, normalize, symmetric, backend="torch"), ref)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_solosim_float32_close_to_float64(backend):
    a, b = randn(700, 32, seed=1), randn(700, 32, seed=2)
    a32, b32 = a.float().requires_grad_(), b.float().requires_grad_()
    loss = solosim_loss(a32, b32, 0.2, backend=backend)
    ga, gb = torch.autograd.grad(loss, (a32, b32))
    loss = loss.detach()
    a64, b64 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ref = solosim_dense(a64, b64, 0.2)
    ra, rb = torch.autograd.grad(ref, (a64, b64))
    assert loss.dtype == torch.float32
    ref = ref.detach()
    assert abs(float(loss) - float(ref)) < 1e-5 * abs(float(ref))
    for got, want in ((ga, ra), (gb, rb)):
        assert float((got.double() - want).norm() / want.norm()) < 1e-5


def test_solosim_sees_positives():
    """Aligned pairs give a small loss, shuffled pairs a loss near log n."""
    a = randn(200, 16, seed=3)
    aligned = float(solosim_loss(a, a + 0.01 * randn(200, 16, seed=4), 0.05))
    shuffled = float(solosim_loss(a, randn(200, 16, seed=5), 0.05))
    assert aligned < 0.01 and shuffled > 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-3, 1e-5])
def test_solosim_tiny_temperature_stays_finite(tau, dtype):
    n = 300
    a = randn(n, 8, seed=6, dtype=dtype).requires_grad_()
    b = randn(n, 8, seed=7, dtype=dtype).requires_grad_()
    loss = solosim_loss(a, b, tau)
    ga, gb = torch.autograd.grad(loss, (a, b))
    assert torch.isfinite(loss) and torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # The logits reach 1/tau = 1e5; loss is the mean gap to each row's largest logit (float64).
    ref = solosim_dense(a.detach().double(), b.detach().double(), tau)
    got = float(loss.detach())
    assert abs(got - float(ref)) <= 1e-6 * float(ref) + (1e-1 if dtype == torch.float32 else 1e-6)


def test_solosim_gradcheck():
    a = randn(9, 5, seed=8).requires_grad_()
    b = randn(9, 5, seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: solosim_loss(x, y, 0.3), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: solosim_loss(x, y, 0.7, False, True), (a, b))


def test_solosim_deterministic():
    a, b = randn(3000, 32, seed=10, dtype=torch.float32), randn(3000, 32, seed=11, dtype=torch.float32)
    a.requires_grad_()
    first = solosim_loss(a, b, 0.2)
    (g_first,) = torch.autograd.grad(first, a)
    for _ in range(2):
        loss = solosim_loss(a, b, 0.2)
        (g,) = torch.autograd.grad(loss, a)
        assert torch.equal(loss, first) and torch.equal(g, g_first)


@pytest.mark.parametrize("d", [1, 32])
def test_solosim_opcheck(d):
    a = randn(40, d, seed=d).requires_grad_()
    b = randn(40, d, seed=d + 1).requires_grad_()
    torch.library.opcheck(torch.ops.mmfast.solosim.default, (a, b, 5.0))
    lse = torch.ops.mmfast.solosim(a, b, 5.0)[1].detach()
    torch.library.opcheck(torch.ops.mmfast.solosim_backward.default,
                          (torch.tensor(1.0, dtype=torch.float64), a.detach(), b.detach(), lse, 5.0))


def test_solosim_torch_compile_fullgraph():
    w = torch.randn(16, 16, requires_grad=True)

    def fn(x, y):
        return solosim_loss(x @ w, y, 0.2)

    x, y = torch.randn(50, 16), torch.randn(50, 16)
    expected = fn(x, y)
    (g_expected,) = torch.autograd.grad(expected, w)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, y)
    (g_got,) = torch.autograd.grad(got, w)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)


def test_solosim_errors():
    a = randn(5, 4)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        solosim_loss(a, randn(6, 4), 0.2)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        solosim_loss(a, randn(5, 3), 0.2)
    for tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be positive and finite"):
            solosim_loss(a, a, tau)
    with pytest.raises(ValueError, match="need at least one row, got n = 0"):
        solosim_loss(randn(0, 4), randn(0, 4), 0.2)
    with pytest.raises(ValueError, match="b must be a 2-D tensor"):
        solosim_loss(a, a[0], 0.2)
    with pytest.raises(TypeError, match="a is torch.float64 but b is torch.float32"):
        solosim_loss(a, a.float(), 0.2)
    with pytest.raises(TypeError, match="must be float32 or float64"):
        solosim_loss(a.long(), a.long(), 0.2)
    # The raw op checks too (direct torch.ops callers).
    with pytest.raises(RuntimeError, match="scale .* must be positive"):
        torch.ops.mmfast.solosim(a, a, -1.0)
    with pytest.raises(RuntimeError, match="n = 0"):
        torch.ops.mmfast.solosim(randn(0, 4), randn(0, 4), 1.0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.mmfast.solosim(a, randn(4, 4), 1.0)


# ------------------------------------------------------------------------ CUDA vs CPU
# CUDA against CPU: the usual widths, and wide ones (no width limit on CUDA). fp32 sums in
# another order than the CPU: a tolerance.
CUDA_SHAPES = [(n, d) for n in (1, 2, 33, 1000, 5000) for d in (1, 32, 63, 130)] + [
    (n, d) for n in (33, 3000) for d in (384, 1000, 2048)]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("n,d", CUDA_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_solosim_matches_cpu(n, d, dtype):
    a, b = randn(n, d, seed=n + d, dtype=dtype), randn(n, d, seed=n + d + 1, dtype=dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    results = []
    for device in ("cpu", "cuda"):
        ad, bd = a.to(device).requires_grad_(), b.to(device).requires_grad_()
        loss = solosim_loss(ad, bd, 0.2, symmetric=True)
        results.append((loss, *torch.autograd.grad(loss, (ad, bd))))
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(gpu.cpu(), cpu, **tol)


@requires_cuda
@pytest.mark.cuda
def test_cuda_solosim_tiny_temperature_and_opcheck():
    a = randn(500, 32, seed=1, dtype=torch.float32, device="cuda").requires_grad_()
    b = randn(500, 32, seed=2, dtype=torch.float32, device="cuda").requires_grad_()
    loss = solosim_loss(a, b, 1e-5)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, (a, b)))
    torch.library.opcheck(torch.ops.mmfast.solosim.default,
                          (randn(40, 7, device="cuda").requires_grad_(), randn(40, 7, device="cuda"), 3.0))


@pytest.mark.parametrize("n", [6_710, 7_050])
def test_solosim_float64_at_dataset_sizes(n):
    """TikTok / Baby item counts, d = 32, float64: many row blocks and column tiles, partial
    last ones (23,033 is checked the same way by hand: its N x N reference is too big here)."""
    a = randn(n, 32, seed=n).requires_grad_()
    b = (a.detach() + randn(n, 32, seed=n + 1)).requires_grad_()
    loss = solosim_loss(a, b, 0.2)
    ref = solosim_dense(a, b, 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(loss, (a, b)), torch.autograd.grad(ref, (a, b))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)


# ------------------------------------------------------------------------ any width
@pytest.mark.parametrize("d", [384, 1000])
def test_solosim_wide_rows_match_float64(d):
    """Widths the CUDA kernel once refused (its backward kept 128 x d in shared memory)."""
    a = randn(300, d, seed=d).requires_grad_()
    b = (a.detach() + randn(300, d, seed=d + 1)).requires_grad_()
    loss = solosim_loss(a, b, 0.2, symmetric=True)
    ref = solosim_dense(a, b, 0.2, symmetric=True)
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, (a, b)), torch.autograd.grad(ref, (a, b))):
        torch.testing.assert_close(got, want)


def simulated_cuda_solosim(a, b, scale, width, sms=132):
    """csrc/cuda/solosim.cu's division of the work, run with dense float64 blocks: make_grid's
    splits of the other side (grid.y), row blocks (grid.x), feature slices of the backward
    (grid.z), tiles of 32 and the partial results combined as the driver does. Returns
    (lse, P b, P^T a)."""
    rows_per_block, tile, max_splits = 128, 32, 16
    n, d = a.shape
    cdiv = lambda x, y: (x + y - 1) // y  # noqa: E731

    def make_grid(slices):
        row_blocks, tiles = cdiv(n, rows_per_block), cdiv(n, tile)
        want = cdiv(4 * sms, row_blocks * slices)
        splits = max(1, min(want, tiles, max_splits))
        per_split = cdiv(tiles, splits) * tile
        return row_blocks, cdiv(n, per_split), per_split

    row_blocks, splits, per_split = make_grid(1)
    part_max = torch.full((splits, n), float("-inf"), dtype=a.dtype)
    part_sum = torch.zeros(splits, n, dtype=a.dtype)
    for y in range(splits):
        k0, k1 = y * per_split, min(n, y * per_split + per_split)
        for x in range(row_blocks):
            r = slice(x * rows_per_block, min(n, (x + 1) * rows_per_block))
            for t0 in range(k0, k1, tile):
                s = a[r] @ b[t0:min(k1, t0 + tile)].T * scale
                new_max = torch.maximum(part_max[y, r], s.max(1).values)
                part_sum[y, r] = (part_sum[y, r] * torch.exp(part_max[y, r] - new_max)
                                  + torch.exp(s - new_max[:, None]).sum(1))
                part_max[y, r] = new_max
    lse = torch.logsumexp(part_max + part_sum.log(), 0)

    slices = cdiv(d, width)
    row_blocks, splits, per_split = make_grid(slices)
    outs = []
    for own, other, lse_of_tile in ((a, b, False), (b, a, True)):
        part = torch.zeros(splits, d, n, dtype=a.dtype)
        for y in range(splits):
            k0, k1 = y * per_split, min(n, y * per_split + per_split)
            for x in range(row_blocks):
                r = slice(x * rows_per_block, min(n, (x + 1) * rows_per_block))
                for z in range(slices):
                    f = slice(z * width, min(d, (z + 1) * width))
                    for t0 in range(k0, k1, tile):
                        t = slice(t0, min(k1, t0 + tile))
                        s = own[r] @ other[t].T * scale
                        p = torch.exp(s - (lse[t][None, :] if lse_of_tile else lse[r][:, None]))
                        part[y, f, r] += (p @ other[t, f]).T
        outs.append(part.sum(0).T)
    return lse, outs[0], outs[1]


@pytest.mark.parametrize("n, d, width, sms", [(1, 3, 64, 132), (300, 100, 64, 132),
                                              (1000, 40, 16, 8), (257, 64, 64, 1)])
def test_solosim_cuda_work_split_covers_everything(n, d, width, sms):
    """The CUDA kernels' index math (splits, row blocks, feature slices, partial tiles),
    checked on CPU against the dense formulas."""
    a, b = randn(n, d, seed=n), randn(n, d, seed=n + 1)
    scale = 5.0
    lse, pa, pb = simulated_cuda_solosim(a, b, scale, width, sms)
    s = a @ b.T * scale
    torch.testing.assert_close(lse, torch.logsumexp(s, 1))
    p = torch.exp(s - lse[:, None])
    torch.testing.assert_close(pa, p @ b)
    torch.testing.assert_close(pb, p.T @ a)


# ------------------------------------------------------------------------ CPU kernel variants
# The CPU kernel has 64-, 32- and 16-byte-vector variants (AVX-512, AVX2, SSE2/NEON), picked
# from the CPU; MMFAST_SOLOSIM_VECTOR_BYTES forces a narrower one, so each runs here.
@pytest.mark.parametrize("vector_bytes", ["16", "32", "64"])
def test_solosim_cpu_variants_agree(vector_bytes):
    script = """
import torch
from conftest import randn
from mmfast.ops import solosim_loss
from test_solosim import solosim_dense
for dtype, tol in ((torch.float64, dict(rtol=1e-12, atol=1e-15)), (torch.float32, None)):
    for n, d, normalize, tau in ((1, 1, True, 0.2), (37, 63, False, 2.0), (700, 32, True, 0.2),
                                 (300, 8, True, 1e-3)):
        a = randn(n, d, seed=n, dtype=dtype).requires_grad_()
        b = randn(n, d, seed=n + 1, dtype=dtype).requires_grad_()
        loss = solosim_loss(a, b, tau, normalize, symmetric=True)
        ga, gb = torch.autograd.grad(loss, (a, b))
        a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        ref = solosim_dense(a64, b64, tau, normalize, symmetric=True)
        ra, rb = torch.autograd.grad(ref, (a64, b64))
        if tau < 1e-2:  # logits up to 1e3: float rounds them to 1e-4 (see the test above)
            assert abs(float(loss) - float(ref)) <= 1e-6 * float(ref) + 1e-2
            continue
        t = tol or dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss.double(), ref.detach(), **t)
        torch.testing.assert_close(ga.double(), ra, **t)
        torch.testing.assert_close(gb.double(), rb, **t)
print("ok")
"""
    here = pathlib.Path(__file__).parent
    # The child imports the mmfast this session imports (installed, or an in-place build).
    package_root = pathlib.Path(mmfast.__file__).resolve().parents[1]
    env = dict(os.environ, MMFAST_SOLOSIM_VECTOR_BYTES=vector_bytes, OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(package_root), str(here),
                                           os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], cwd=here, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_solosim_cpu_same_result_any_thread_count():
    """Parts are a fixed grid, summed in order: 1, 2 and 3 threads give identical bits."""
    n = 1500
    a = randn(n, 32, seed=21, dtype=torch.float32).requires_grad_()
    b = randn(n, 32, seed=22, dtype=torch.float32).requires_grad_()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            loss = solosim_loss(a, b, 0.1, normalize=False)
            results.append((loss, *torch.autograd.grad(loss, (a, b))))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)
