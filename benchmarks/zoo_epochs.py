"""Seconds per epoch of every model on a real dataset, through ``python -m mmfast.train``, at one
and two torch threads (issue 21's table: "s/epoch at one and two threads").

    python benchmarks/zoo_epochs.py [--models ALL] [--threads 1 2] [--epochs 3]
                                    [--dataset tiktok] [--data-root ../shared/data]
                                    [--json out.json]

Each (model, threads) pair is one ``mmfast.train --no-grid --device cpu`` process started with
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the thread count, so what is timed is exactly
what a user runs: the trainer's epoch (sampling, steps, per-epoch model work) and its valid + test
evaluation. The first epoch carries one-off work (caches, graph building, allocator warm-up) and
is left out: the figures are the medians of epochs 2..``--epochs`` read from the run's
``metrics.json``. A model that trains nothing (ItemKNNCBF) shows its one evaluation. Runs go to a
temporary folder; prints a Markdown table (train s/epoch and eval s per thread count).

The machine must be otherwise idle for the figures to mean anything (report the load with them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def all_models() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from mmfast import models
    return sorted(models.available(), key=str.lower)


def run_one(model: str, threads: int, args, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "mmfast.train", "-m", model, "-d", args.dataset,
           "--data-root", args.data_root, "--no-grid", "--device", "cpu",
           "--epochs", str(args.epochs), "--out", str(out), "--progress", "lines"]
    for kv in args.overrides:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"model": model, "threads": threads, "error": tail[0], "wall": wall}
    metrics = sorted(out.glob(f"{model}-{args.dataset}-*/metrics.json"),
                     key=lambda p: p.stat().st_mtime)[-1]
    epochs = json.loads(metrics.read_text())["epochs"]
    later = epochs[1:] or epochs
    train = [e["train_time"] for e in later if e.get("train_time")]
    evals = [e["eval_time"] for e in later if e.get("eval_time") is not None]
    return {"model": model, "threads": threads, "wall": wall, "epochs": len(epochs),
            "train_s": statistics.median(train) if train else None,
            "eval_s": statistics.median(evals) if evals else None}


def fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="tiktok")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    names = args.models or all_models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for t in args.threads:
                r = run_one(name, t, args, Path(tmp))
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    head = " | ".join(f"train s/epoch ({t}t) | eval s ({t}t)" for t in args.threads)
    print(f"| model | {head} |")
    print("|---|" + "---|" * (2 * len(args.threads)))
    for name in names:
        cells = []
        for t in args.threads:
            r = next(r for r in rows if r["model"] == name and r["threads"] == t)
            if "error" in r:
                cells += [f"failed: {r['error'][:60]}", "–"]
            else:
                cells += [fmt(r["train_s"]), fmt(r["eval_s"])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
