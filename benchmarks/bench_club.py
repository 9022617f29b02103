"""CLUB, mmfast kernels vs the pure-PyTorch formulation CLUB code writes.

The bound (sampled, SEA's form) forward + backward for two modalities, then 50 club_learn
steps on both modalities' detached pairs with the shared q-net (SEA's per-batch work), at
Amazon Baby (7,050) and Clothing (23,033) scale, d = 32. The reference is the Python loop with
torch.optim.Adam.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE, randn_rows
from mmfast.nn import ClubNet
from mmfast.ops import club_learn, club_upper_bound

SCALES = {"baby": 7_050, "clothing": 23_033}
ROUNDS = {"baby": 5, "clothing": 3}
D = 32


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_club(compare, scale, backend):
    n = SCALES[scale]
    torch.manual_seed(0)
    q = ClubNet(D, D, 8).to(DEVICE)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)
    xs = [randn_rows(n, D, s).requires_grad_() for s in (2, 3)]
    ys = [randn_rows(n, D, s).requires_grad_() for s in (4, 5)]

    def step():
        for t in xs + ys:
            t.grad = None
        bound = sum(club_upper_bound(x, y, q, backend=backend) for x, y in zip(xs, ys)) / 2
        bound.backward()
        club_learn(xs, ys, q, optimizer, steps=50, backend=backend)

    compare(f"club bound+50 learn steps {scale}", backend, step, rounds=ROUNDS[scale])
