"""Where one training epoch goes, part by part, beside a floor for each part (issue 20).

    python benchmarks/epoch_profile.py [--models LightGCN FREEDOM SEA] [--threads 1 2]
                                       [--dataset tiktok] [--data-root ../shared/data]
                                       [--epochs 2] [--json out.json] [--ops N]

For each model and thread count: builds the model at its ``--no-grid`` point, runs one warm-up
epoch, then ``--epochs`` epochs exactly as the trainer does (sampler, ``train_step`` per batch,
evaluation of valid and test), under ``torch.profiler``. Every op's own time is put in one part:

- ``sampler``: the epoch's negative sampling and batching;
- ``graph``: mmfast's ``propagate``/``spmm`` (forward and backward), or the ``torch.sparse``
  chain on the reference backend;
- ``GEMM``: dense matrix products (``mm``, ``addmm``, ``bmm``, ``linear``);
- ``InfoNCE / CLUB``: the fused SoloSim and CLUB ops (SEA);
- ``optimizer``: the model's Adam step (and auxiliary optimizers);
- ``gather / scatter``: embedding lookups, row gathers and their backward (index_put, zeros);
- ``elementwise + rest``: everything else (losses, norms, activations, autograd bookkeeping);
- ``evaluation``: the users' and items' vectors and the ranking of valid and test.

Floors, from rates measured in the same process at the same thread count:
- ``graph``: bytes a product must move (per layer: the gathered rows nnz x d, the CSR, the
  output and the addend) at the copy bandwidth of a buffer the size of the embedding table,
  and ("from memory") at that of a 256 MiB buffer: inside an epoch the optimizer step streams
  every parameter and its moments through the caches, so the products read cold tables;
- ``GEMM`` and ``evaluation``: FLOPs (profiler-counted for GEMMs; users x items x d x 2 for the
  ranking) at the measured float32 GEMM rate;
- ``optimizer``: Adam reads parameter, gradient and two moments and writes three tensors:
  7 x 4 bytes a parameter at the copy bandwidth of a buffer the size of the parameters;
An older checkout profiles the same way (``PYTHONPATH=<checkout> python
benchmarks/epoch_profile.py``: the "before" columns of RESULTS.md). Parts without a floor show "—" (the sampler's work is random draws and rejection tests, not
bytes; it is about 1% of an epoch). Prints one table per model and thread count (ms per epoch) and
``--json`` writes them all. Times are wall-clock under the profiler (which adds a few µs per
op); the total without the profiler is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mmfast import models
from mmfast.data import load_dataset
from mmfast.trainer import config as cfg
from mmfast.trainer.evaluation import build_evaluator

try:
    from mmfast.trainer.memory import keep_freed_memory
except ImportError:  # an older checkout: its trainer left glibc's defaults
    def keep_freed_memory():
        return False

try:
    from mmfast.trainer.fit import adam
except ImportError:  # a checkout from before fused Adam: profile it as it trained
    def adam(params, lr, weight_decay, impl=None):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("sampler", "graph", "GEMM", "InfoNCE / CLUB", "optimizer", "gather / scatter",
         "elementwise + rest", "evaluation")
GRAPH_OPS = ("mmfast::propagate", "mmfast::spmm", "_propagate", "_spmm", "aten::_sparse",
             "aten::addmm_", "sparse")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")
LOSS_OPS = ("mmfast::solosim", "mmfast::club", "solosim", "club")
GATHER_OPS = ("aten::index", "aten::index_select", "aten::embedding", "aten::_index_put",
              "aten::index_put", "aten::index_add", "aten::scatter", "aten::gather",
              "aten::zeros", "aten::new_zeros", "aten::fill_", "aten::zero_", "embedding_dense")


def category(name: str) -> str:
    low = name.lower()
    if "optimizer.step" in low or "adam" in low:
        return "optimizer"
    if any(k in low for k in LOSS_OPS):
        return "InfoNCE / CLUB"
    if any(k in low for k in ("propagate", "spmm")) or "sparse" in low:
        return "graph"
    if any(name.startswith(k) for k in GEMM_OPS):
        return "GEMM"
    if any(name.startswith(k) or k in name for k in GATHER_OPS):
        return "gather / scatter"
    return "elementwise + rest"


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write counted) on buffers of ``nbytes``."""
    n = max(nbytes // 4, 1024)
    src, dst = torch.randn(n), torch.empty(n)
    reps = max(3, int(2e8 // (8 * n)))
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    return 2 * 4 * n * reps / (time.perf_counter() - start)


def gemm_rate() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 1024**3 / (time.perf_counter() - start)


def graph_call_bytes(ev) -> float:
    """Bytes one ``mmfast::propagate``/``spmm`` call must move: per layer the gathered rows
    (nnz x d), the CSR (col, val, rowptr) and the output row block plus its addend."""
    shapes = ev.input_shapes
    nnz, (n, d) = shapes[1][0], shapes[6]
    layers = 1
    if ev.name == "mmfast::propagate":
        coeffs = (ev.concrete_inputs or [None] * 8)[7] or [0, 0]
        layers = max(len(coeffs) - 1, 0)
    return float(layers * (nnz * d * 4 + nnz * 8 + n * 8 + 2 * n * d * 4))


def profile_model(name: str, threads: int, args) -> dict:
    torch.set_num_threads(threads)
    config = cfg.resolve(name, args.dataset, model_defaults=models.get(name).default_config(args.dataset),
                         overrides=args.overrides,
                         cli={"data_path": args.data_root, "device": "cpu", "no_grid": True})
    point = cfg.grid_points(config)[0]
    ds = load_dataset(point)
    torch.manual_seed(999)
    model = models.get(name)(point, ds, torch.device("cpu"))
    opt = adam(model.model_parameters(), float(point["learning_rate"]),
               float(point["weight_decay"]), point.get("optimizer_impl"))
    sampler = ds.sampler(batch_size=int(point["train_batch_size"]), seed=999)
    evaluate = build_evaluator(ds, point, torch.device("cpu"))

    def epoch(epoch_no: int, timings: dict) -> None:
        model.train()
        model.current_epoch = epoch_no
        model.pre_epoch_processing()
        t0 = time.perf_counter()
        with torch.profiler.record_function("mmfast.sampler"):
            batches = list(sampler)
        t1 = time.perf_counter()
        for users, pos, neg in batches:
            model.train_step(users, pos, neg, opt)
        model.post_epoch_processing()
        t2 = time.perf_counter()
        model.eval()
        with torch.no_grad(), torch.profiler.record_function("mmfast.evaluation"):
            u, i = model.embeddings()
            try:
                evaluate(u, i, ("valid", "test"))
            except TypeError:  # a checkout from before the shared ranking: one split a call
                evaluate(u, i, "valid"), evaluate(u, i, "test")
        t3 = time.perf_counter()
        timings["sampler"] += t1 - t0
        timings["train"] += t2 - t1
        timings["evaluation"] += t3 - t2
        timings["batches"] = len(batches)

    epoch(0, defaultdict(float))  # warm-up: caches, allocator, first-epoch work
    plain: dict = defaultdict(float)
    for e in range(args.epochs):
        epoch(1 + e, plain)
    prof_t: dict = defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        for e in range(args.epochs):
            epoch(1 + args.epochs + e, prof_t)

    parts: dict[str, float] = defaultdict(float)
    per_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    gemm_flops = graph_bytes = 0.0
    events = prof.events()
    # Self time of each op, attributed to evaluation / sampler when inside those regions.
    def region(name: str) -> str | None:
        if name in ("mmfast.sampler", "mmfast.evaluation"):
            return name[7:]
        if name.startswith("Optimizer.step") or name.startswith("Optimizer.zero_grad"):
            return "optimizer"  # its element-wise ops too (the unfused Adam of older runs)
        return None

    regions = [(ev.time_range.start, ev.time_range.end, region(ev.name)) for ev in events
               if region(ev.name)]
    for ev in events:
        if region(ev.name):
            continue
        where = next((r for s, e_, r in regions if s <= ev.time_range.start < e_), None)
        self_us = ev.self_cpu_time_total
        part = where if where is not None else category(ev.name)
        parts[part] += self_us
        per_op[(part, ev.name)][0] += self_us
        per_op[(part, ev.name)][1] += 1
        if where is not None:  # floors count only the training step's own ops
            continue
        if part == "GEMM":
            gemm_flops += ev.flops or 0
        if ev.name in ("mmfast::propagate", "mmfast::spmm"):  # forward, and inside backward
            graph_bytes += graph_call_bytes(ev)
    n = args.epochs
    ms = {k: parts[k] / 1e3 / n for k in PARTS}

    table_bytes = (ds.n_users + ds.n_items) * 64 * 4
    bw_table = copy_bandwidth(table_bytes)
    n_params = sum(p.numel() for p in model.model_parameters())
    bw_params = copy_bandwidth(n_params * 4)
    rate = gemm_rate()
    batches = plain["batches"]
    eval_flops = 2.0 * ds.n_users * ds.n_items * int(point.get("embedding_size", 64))
    # Inside an epoch the tables are cold: the optimizer step alone streams 7 x 4 bytes a
    # parameter through the caches, so the graph part's bytes come from memory. Its second
    # floor moves them at the copy bandwidth of a buffer far larger than the caches.
    bw_memory = copy_bandwidth(256 << 20)
    floors = {
        "graph (memory)": graph_bytes / n / bw_memory * 1e3 if graph_bytes else None,
        "graph": graph_bytes / n / bw_table * 1e3 if graph_bytes else None,
        "GEMM": gemm_flops / n / rate * 1e3 if gemm_flops else None,
        "optimizer": batches * 7 * 4 * n_params / bw_params * 1e3,
        "evaluation": eval_flops / rate * 1e3,
    }
    return {
        "model": name, "threads": threads, "dataset": args.dataset, "batches": batches,
        "ms": ms, "floor_ms": floors,
        "unprofiled_ms": {k: plain[k] / n * 1e3 for k in ("sampler", "train", "evaluation")},
        "rates": {"copy_GBps_table": bw_table / 1e9, "copy_GBps_params": bw_params / 1e9,
                  "copy_GBps_memory": bw_memory / 1e9,
                  "gemm_GFLOPs": rate / 1e9},
        "params": n_params,
        "ops": sorted(([part, op, us / 1e3 / n, int(calls) // n] for (part, op), (us, calls)
                       in per_op.items()), key=lambda r: -r[2]),
    }


def show(r: dict, ops: int = 0) -> None:
    print(f"\n{r['model']} on {r['dataset']}, {r['threads']} thread(s), {r['batches']} batches/epoch, "
          f"{r['params'] / 1e6:.2f} M trained parameters; copy "
          f"{r['rates']['copy_GBps_table']:.0f} GB/s (table-sized), "
          f"{r['rates'].get('copy_GBps_memory', float('nan')):.0f} GB/s (from memory), "
          f"GEMM {r['rates']['gemm_GFLOPs']:.0f} GFLOP/s")
    print(f"{'part (ms per epoch)':22s} {'measured':>9s} {'floor':>8s} {'gap':>6s}")
    for part in PARTS:
        m, f = r["ms"][part], r["floor_ms"].get(part)
        gap = f"{m / f:5.1f}x" if f else "    —"
        print(f"{part:22s} {m:9.0f} {f if f is not None else float('nan'):8.0f} {gap}")
        cold = r["floor_ms"].get(f"{part} (memory)")
        if cold:
            print(f"{'  from memory':22s} {'':9s} {cold:8.0f} {m / cold:5.1f}x")
    u = r["unprofiled_ms"]
    print(f"{'total (profiled)':22s} {sum(r['ms'].values()):9.0f}")
    print(f"without the profiler: sampler {u['sampler']:.0f} + train {u['train']:.0f} + "
          f"evaluation {u['evaluation']:.0f} ms")
    if ops:
        print(f"\n{'part':18s} {'op (self time)':44s} {'ms/epoch':>9s} {'calls/epoch':>11s}")
        for part, op, ms_, calls in r["ops"][:ops]:
            print(f"{part:18s} {op[:44]:44s} {ms_:9.1f} {calls:11d}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["LightGCN", "FREEDOM", "SEA"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--dataset", default="tiktok")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", default=None)
    p.add_argument("--ops", type=int, default=0, help="also list the N ops with the most self time")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the trainer does (malloc_cache: true)
    results = []
    for name in args.models:
        for threads in args.threads:
            r = profile_model(name, threads, args)
            show(r, args.ops)
            results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
