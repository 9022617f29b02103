"""Wall time of one LightGCN grid: ``python -m mmfast.train`` (points one after another, as
MMRec runs them) against ``python -m mmfast.tune --workers N`` (trials at once on a local Ray),
and the same sweep over several seeds. Each command runs as its own process, timed from start
to exit (Ray's start-up included), with the machine's load printed beside it.

    python benchmarks/sweep_speed.py                    # 8 points, workers 2, seeds 1 and 3
    python benchmarks/sweep_speed.py --epochs 40 --workers 2 --seeds 3
    python benchmarks/sweep_speed.py --device cuda --gpus-per-trial 0.25 --workers 4  # 4 a GPU

Both sweeps train the same points with the same seed, so their best valid results agree; the
script checks that too.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["-m", "LightGCN", "--set", "n_layers=[1,2]",
        "--set", "reg_weight=[1.0e-02,1.0e-03,1.0e-04,1.0e-05]"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3, help="the seeded sweep's --n-seeds")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the serial run on the GPU, "
                    "the sweep's trials sharing it (--gpus-per-trial)")
    ap.add_argument("--gpus-per-trial", type=float, default=None,
                    help="with --device cuda: the GPU share of a trial (0.25: four at once)")
    args = ap.parse_args()
    if args.device != "cpu" and not args.gpus_per_trial:
        ap.error("--device cuda needs --gpus-per-trial (e.g. 0.25)")
    out = Path(tempfile.mkdtemp(prefix="mmfast-sweep-speed-"))
    env = dict(os.environ, MMFAST_CACHE=str(out / "cache"))
    py = [sys.executable, "-m"]
    epochs = ["--epochs", str(args.epochs)]
    # Serial: one process, one torch thread per core available (as a user would run it).
    device = ["--device", args.device]
    serial = timed([*py, "mmfast.train", *GRID, *device, *epochs, "--out", str(out / "serial"),
                    "--progress", "lines"], env)
    load_serial = os.getloadavg()[0]
    tune = [*py, "mmfast.tune", *GRID, *device, *epochs, "--workers", str(args.workers)]
    if args.gpus_per_trial:
        tune += ["--gpus-per-trial", str(args.gpus_per_trial)]
    parallel = timed([*tune, "--out", str(out / "tune")], env)
    load_tune = os.getloadavg()[0]
    seeded = timed([*tune, "--n-seeds", str(args.seeds), "--out", str(out / "seeds")], env)
    load_seeds = os.getloadavg()[0]

    serial_best = json.loads(next((out / "serial").glob("*/metrics.json")).read_text())
    serial_valid = [p["best"]["valid"]["recall@20"] for p in serial_best["grid"]]
    rows = list(csv.DictReader(open(next((out / "tune").glob("*/results.csv")))))
    tune_valid = [float(r["valid_recall@20"]) for r in rows]
    same = serial_valid == tune_valid
    cores = os.cpu_count()
    where = (f"{cores} cores" if args.device == "cpu" else
             f"{args.device}, {args.gpus_per_trial} GPU a trial")
    print(f"LightGCN, 8-point grid, synthetic, {args.epochs} epochs max, {where}")
    print("| sweep | trials | wall s | vs serial | load (1 min) |")
    print("|---|---|---|---|---|")
    print(f"| mmfast.train (serial) | 8 | {serial:.1f} | 1.00× | {load_serial:.1f} |")
    print(f"| mmfast.tune --workers {args.workers} | 8 | {parallel:.1f} | {serial / parallel:.2f}× "
          f"| {load_tune:.1f} |")
    print(f"| mmfast.tune --workers {args.workers} --n-seeds {args.seeds} | {8 * args.seeds} | "
          f"{seeded:.1f} | {serial * args.seeds / seeded:.2f}× (vs {args.seeds} serial grids) "
          f"| {load_seeds:.1f} |")
    print(f"same best valid Recall@20 per point in both: {same}")
    print(f"(folders under {out})")


if __name__ == "__main__":
    main()
