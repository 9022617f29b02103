"""SoloSim, mmfast kernels vs the pure-PyTorch formulation MMRec-style code writes.

SoloSim forward + backward over all items at TikTok (6,710), Amazon Baby (7,050) and Clothing
(23,033) scale, d = 32 (SEA's out_dim); N = 200,000 with MMFAST_BENCH_LARGE=1 (the N x N reference needs
160 GB there, so only mmfast runs).
"""
from __future__ import annotations

import os

import pytest

from conftest import randn_rows
from mmfast.ops import solosim_loss

SCALES = {"tiktok": 6_710, "baby": 7_050, "clothing": 23_033}
if os.environ.get("MMFAST_BENCH_LARGE") == "1":
    SCALES["200k"] = 200_000
ROUNDS = {"tiktok": 5, "baby": 5, "clothing": 3, "200k": 1}
D, TAU = 32, 0.2


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_solosim(compare, scale, backend):
    n = SCALES[scale]
    if backend == "torch" and n > 50_000:
        pytest.skip("the N x N reference does not fit in memory at this scale")
    a = randn_rows(n, D, 0).requires_grad_()
    b = randn_rows(n, D, 1).requires_grad_()

    def step():
        a.grad = b.grad = None
        solosim_loss(a, b, TAU, backend=backend).backward()

    compare(f"solosim fwd+bwd {scale}", backend, step, rounds=ROUNDS[scale])
