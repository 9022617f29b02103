"""Fused losses, mmfast kernels vs the pure-PyTorch formulation MMRec-style code writes.

* SoloSim forward + backward over all items at Amazon Baby (7,050) and Clothing (23,033)
  scale, d = 32 (SEA's out_dim); N = 200,000 with MMFAST_BENCH_LARGE=1 (the N x N reference
  needs 160 GB there, so only mmfast runs).
* CLUB: the bound (sampled, SEA's form) forward + backward for two modalities, then 50
  club_learn steps on both modalities' detached pairs with the shared q-net (SEA's per-batch
  work), at the same scales. The reference is the Python loop with torch.optim.Adam.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import DEVICE
from mmfast.nn import ClubNet
from mmfast.ops import club_learn, club_upper_bound, solosim_loss

SCALES = {"baby": 7_050, "clothing": 23_033}
if os.environ.get("MMFAST_BENCH_LARGE") == "1":
    SCALES["200k"] = 200_000
ROUNDS = {"baby": 5, "clothing": 3, "200k": 1}
D, TAU = 32, 0.2


def unit_rows(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=gen).to(DEVICE)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_solosim(compare, scale, backend):
    n = SCALES[scale]
    if backend == "torch" and n > 50_000:
        pytest.skip("the N x N reference does not fit in memory at this scale")
    a = unit_rows(n, 0).requires_grad_()
    b = unit_rows(n, 1).requires_grad_()

    def step():
        a.grad = b.grad = None
        solosim_loss(a, b, TAU, backend=backend).backward()

    compare(f"solosim fwd+bwd {scale}", backend, step, rounds=ROUNDS[scale])


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", [s for s in SCALES if s != "200k"])
def test_club(compare, scale, backend):
    n = SCALES[scale]
    torch.manual_seed(0)
    q = ClubNet(D, D, 8).to(DEVICE)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)
    xs = [unit_rows(n, s).requires_grad_() for s in (2, 3)]
    ys = [unit_rows(n, s).requires_grad_() for s in (4, 5)]

    def step():
        for t in xs + ys:
            t.grad = None
        bound = sum(club_upper_bound(x, y, q, backend=backend) for x, y in zip(xs, ys)) / 2
        bound.backward()
        club_learn(xs, ys, q, optimizer, steps=50, backend=backend)

    compare(f"club bound+50 learn steps {scale}", backend, step, rounds=ROUNDS[scale])
