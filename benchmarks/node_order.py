"""Does a locality-friendly node order speed up propagation? (issue 20's relabeling candidate)

    python benchmarks/node_order.py [--dataset tiktok] [--data-root ../shared/data]
                                    [--threads 1] [--layers 3] [--reps 30]

Times one ``propagate`` (``--layers`` layers, d = 64, forward) over the dataset's normalized Â
with its users and items in three orders: as loaded, by degree (largest first), and reverse
Cuthill-McKee (SciPy; a bandwidth-reducing order). Each is timed warm (the tables in cache,
the product repeated) and cold (a 160 MB copy between products, as the optimizer step and the
other parts of a training step leave the caches). Median milliseconds per product.
Nothing in mmfast relabels today; this measures what a relabeling could give.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmfast import models
from mmfast.data import load_dataset
from mmfast.ops import SparseGraph, propagate
from mmfast.trainer import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def orders(graph: SparseGraph) -> dict[str, np.ndarray]:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n = graph.n_rows
    rowptr = graph.rowptr.numpy()
    matrix = sp.csr_matrix((graph.val.numpy(), graph.col.numpy().astype(np.int64), rowptr),
                           shape=(n, n))
    return {"as loaded": np.arange(n),
            "degree": np.argsort(-np.diff(rowptr), kind="stable"),
            "RCM": reverse_cuthill_mckee(matrix, symmetric_mode=True)}


def permuted(graph: SparseGraph, perm: np.ndarray) -> SparseGraph:
    rows = torch.repeat_interleave(torch.arange(graph.n_rows), graph.rowptr.diff())
    new_id = torch.empty(graph.n_rows, dtype=torch.long)
    new_id[torch.from_numpy(perm.copy())] = torch.arange(graph.n_rows)
    return SparseGraph.from_coo(new_id[rows], new_id[graph.col.long()], graph.val, graph.shape)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="tiktok")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = cfg.resolve("LightGCN", args.dataset,
                         model_defaults=models.get("LightGCN").default_config(args.dataset),
                         cli={"data_path": args.data_root, "device": "cpu", "no_grid": True})
    graph = load_dataset(cfg.grid_points(config)[0]).norm_adj()
    x0 = torch.randn(graph.n_rows, 64, generator=torch.Generator().manual_seed(0))
    flush_src, flush_dst = torch.randn(20_000_000), torch.empty(20_000_000)
    print(f"{args.dataset}: Â {graph.n_rows} x {graph.n_rows}, {graph.col.numel()} nonzeros; "
          f"{args.layers}-layer propagate, d = 64, {args.threads} thread(s), ms per product")
    for name, perm in orders(graph).items():
        g = permuted(graph, perm)
        x = x0[torch.from_numpy(perm.copy())].contiguous()
        line = []
        for cold in (False, True):
            times = []
            for _ in range(args.reps):
                if cold:
                    flush_dst.copy_(flush_src)
                start = time.perf_counter()
                propagate(g, x, args.layers)
                times.append(time.perf_counter() - start)
            line.append(f"{'cold' if cold else 'warm'} {sorted(times)[len(times) // 2] * 1e3:7.3f}")
        print(f"  {name:10s} " + "   ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
