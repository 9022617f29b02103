"""python -m mmfast.tune: the sweep plan and its reports (no Ray needed), then a few quick sweeps
on a local Ray with 2 CPUs: a 4-point grid x 2 seeds on 2 workers, the same sweep killed and
resumed (no finished trial rerun, the same table), a failing trial among others, and ASHA
stopping a trial whose learning rate cannot learn."""
from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmfast import tune as tune_cli
from mmfast.configs import ConfigError
from mmfast.trainer import sweep as sw
from trainer_helpers import TINY, tiny_config

ROOT = Path(__file__).resolve().parent.parent
TINY_SETS = [a for s in [*TINY, "synthetic.n_users=300", "synthetic.n_items=150",
                         "synthetic.n_interactions=4000"] for a in ("--set", s)]
GRID = ["-m", "LightGCN", *TINY_SETS, "--set", "n_layers=[1,2]", "--set", "reg_weight=[1e-3,1e-4]",
        "--n-seeds", "2", "--workers", "2", "--epochs", "3", "--device", "cpu"]


# ----------------------------------------------------------------------------- the plan
def test_ranges_parse_and_sample():
    rng = np.random.default_rng(0)
    lr = sw.Range.parse("learning_rate", "loguniform(1e-4, 1e-2)")
    assert lr.kind == "loguniform" and all(1e-4 <= lr.sample(rng) < 1e-2 for _ in range(50))
    n = sw.Range.parse("n_layers", "randint(1, 4)")
    assert {n.sample(rng) for _ in range(100)} == {1, 2, 3}
    c = sw.Range.parse("dropout", "choice([0.1, 0.5])")
    assert {c.sample(rng) for _ in range(50)} == {0.1, 0.5}
    u = sw.Range.parse("x", "uniform(0, 1)")
    assert 0 <= u.sample(rng) < 1
    for bad in ("loguniform(0, 1)", "uniform(2, 1)", "randint(1.5, 3)", "choice(1)", "normal(0, 1)"):
        with pytest.raises(ConfigError):
            sw.Range.parse("x", bad)
    plain, ranges = sw.split_overrides(["n_layers=2", "learning_rate=loguniform(1e-4,1e-2)"])
    assert plain == ["n_layers=2", "learning_rate=0.0001"] and set(ranges) == {"learning_rate"}


def test_plan_grid_random_and_seeds():
    config = tiny_config("LightGCN", "n_layers=[1,2,3]", "reg_weight=[1e-3,1e-4]")
    seeds = sw.seed_list(config, None, 3)
    assert seeds == [999, 1000, 1001] and sw.seed_list(config, "1,5", None) == [1, 5]
    plan = sw.make_plan(config, {}, seeds)
    assert plan.axes == ["n_layers", "reg_weight"] and len(plan.points) == 6
    assert plan.points[1] == {"n_layers": 1, "reg_weight": 1e-4}  # MMRec's order, first axis slowest
    assert len(plan.trials()) == 18 and plan.lookup("p001-s1000") == (plan.points[1], 1000)
    assert sw.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    ranges = {"learning_rate": sw.Range.parse("learning_rate", "loguniform(1e-4,1e-2)")}
    rnd = sw.make_plan(config, ranges, [999], search="random", samples=5, sample_seed=999)
    assert rnd == sw.make_plan(config, ranges, [999], search="random", samples=5, sample_seed=999)
    assert len(rnd.points) == 5 and rnd.axes == ["n_layers", "reg_weight", "learning_rate"]
    assert all(p["n_layers"] in (1, 2, 3) and 1e-4 <= p["learning_rate"] < 1e-2 for p in rnd.points)
    with pytest.raises(ConfigError, match="need --search random or optuna"):
        sw.make_plan(config, ranges, [999])
    with pytest.raises(ConfigError, match="--samples"):
        sw.make_plan(config, {}, [999], search="random")
    with pytest.raises(ConfigError, match="distinct"):
        sw.seed_list(config, "1,1", None)


def test_trial_config_is_the_train_point():
    config = tiny_config("LightGCN", "n_layers=[1,2]", "reg_weight=[1e-3,1e-4]")
    one = sw.trial_config(config, {"n_layers": 2, "reg_weight": 1e-4}, 7)
    assert one["seed"] == 7 and one["n_layers"] == 2 and one["hyper_parameters"] == []
    direct = tiny_config("LightGCN", "n_layers=2", "reg_weight=1e-4", "seed=7")
    keys = set(direct) - {"hyper_parameters", "default_point"}
    assert {k: one[k] for k in keys} == {k: direct[k] for k in keys}


def test_point_table_is_mean_and_sample_std_of_the_rows():
    rows = [{"point": p, "seed": s, "status": "finished", "epochs": e,
             "valid_recall@20": v, "test_recall@20": t}
            for p, s, e, v, t in [(0, 1, 5, 0.1, 0.2), (0, 2, 7, 0.3, 0.1), (1, 1, 4, 0.25, 0.3),
                                  (1, 2, 4, 0.25, 0.5)]]
    table = sw.point_table(rows, [], "recall@20")
    assert [e["point"] for e in table] == [1, 0]  # 0.25 > 0.2 mean valid
    assert table[1]["valid_recall@20"] == pytest.approx((0.2, statistics.stdev([0.1, 0.3])))
    assert table[0]["test_recall@20"] == pytest.approx((0.4, statistics.stdev([0.3, 0.5])))
    assert table[1]["epochs"] == pytest.approx((6.0, statistics.stdev([5, 7])))


def test_without_ray_one_line_hint(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.setattr(tune_cli.importlib, "import_module",
                        lambda n: no_ray(n) if n.startswith("ray") else real(n))
    assert tune_cli.main(["-m", "LightGCN"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tune_cli.TUNE_HINT}" and 'pip install "mmfast[tune]"' in err


# ----------------------------------------------------------------------------- sweeps on Ray
ray = pytest.importorskip("ray", reason="ray[tune] is the tune extra")


def read_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "results.csv") as f:
        return list(csv.DictReader(f))


def only_sweep(out: Path) -> Path:
    (sweep,) = [p for p in out.iterdir() if p.is_dir()]
    return sweep


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    os.environ.setdefault("MMFAST_CACHE", str(out / "cache"))
    assert tune_cli.main([*GRID, "--out", str(out / "runs")]) == 0
    return only_sweep(out / "runs")


@pytest.mark.slow
def test_grid_over_seeds_on_two_workers(grid_sweep):
    rows = read_rows(grid_sweep)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    assert sorted({(r["n_layers"], r["reg_weight"], r["seed"]) for r in rows}) == sorted(
        (n, w, s) for n in ("1", "2") for w in ("0.001", "0.0001") for s in ("999", "1000"))
    summary = (grid_sweep / "summary.md").read_text().splitlines()
    table = [line for line in summary if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 4
    means = []
    for line in table:  # every mean ± std is the rows' own
        cells = [c.strip() for c in line.strip("|").split("|")]
        n_layers, reg = cells[1], cells[2]
        group = [r for r in rows if r["n_layers"] == n_layers and float(r["reg_weight"]) == float(reg)]
        valid = [float(r["valid_recall@20"]) for r in group]
        test = [float(r["test_recall@20"]) for r in group]
        assert cells[4] == f"{statistics.fmean(valid):.4f} ± {statistics.stdev(valid):.4f}"
        assert cells[6] == f"{statistics.fmean(test):.4f} ± {statistics.stdev(test):.4f}"
        means.append(statistics.fmean(valid))
    assert means == sorted(means, reverse=True)  # ranked by mean valid
    best = json.loads((grid_sweep / "best" / "metrics.json").read_text())
    assert best["best"]["valid"]["recall@20"] == max(
        float(r["valid_recall@20"]) for r in rows
        if (r["n_layers"], float(r["reg_weight"])) == (table[0].split("|")[2].strip(),
                                                       float(table[0].split("|")[3])))
    assert (grid_sweep / "sweep.png").is_file() and (grid_sweep / "best" / "best.pt").is_file()
    for r in rows:  # each trial is a normal run folder
        folder = Path(r["run_dir"])
        assert {"config.yaml", "metrics.json", "best.pt", "last.pt"} <= {p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(grid_sweep, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmfast.tune", *GRID,
                             "--out", str(tmp_path / "runs")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    finished: dict[Path, float] = {}
    while time.time() < deadline and len(finished) < 2 and proc.poll() is None:
        time.sleep(0.5)
        for m in tmp_path.glob("runs/*/trials/*/metrics.json"):
            try:
                if "selection" in json.loads(m.read_text()):  # the run's final summary
                    finished[m] = m.stat().st_mtime_ns
            except (ValueError, OSError):
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(finished) >= 2, "the sweep did not finish two trials in time"
    time.sleep(2)  # the killed driver's workers exit
    finished = {m: m.stat().st_mtime_ns for m in tmp_path.glob("runs/*/trials/*/metrics.json")
                if "selection" in json.loads(m.read_text())}  # complete runs
    assert finished
    sweep = only_sweep(tmp_path / "runs")
    assert not (sweep / "results.csv").exists()  # the driver died before reporting
    assert tune_cli.main(["--resume", str(sweep)]) == 0
    for m, mtime in finished.items():  # finished trials were not run again
        assert m.stat().st_mtime_ns == mtime
    rows, uninterrupted = read_rows(sweep), read_rows(grid_sweep)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    # Same trials, same seeds, bit-identical training: the uninterrupted sweep's table.
    keep = [k for k in rows[0] if k not in ("run_dir", "seconds")]
    assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep} for r in uninterrupted]
    strip = lambda text: text.splitlines()[1:]  # noqa: E731 (the title names no folder, but be safe)
    assert strip((sweep / "summary.md").read_text()) == strip((grid_sweep / "summary.md").read_text())


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_asha_stops_a_hopeless_one(tmp_path):
    # Points in order: 1 layer at lr 0.05 (learns), at lr 1e-9 (cannot), then -2 layers (fails).
    argv = ["-m", "LightGCN", *TINY_SETS, "--set", "n_layers=[1, -2]", "--set", "reg_weight=1e-4",
            "--set", "learning_rate=[0.05, 1.0e-9]",
            "--set", "hyper_parameters=[n_layers, reg_weight, learning_rate]",
            "--workers", "1", "--epochs", "6", "--device", "cpu", "--scheduler", "asha",
            "--asha-grace", "1", "--asha-reduction", "2", "--out", str(tmp_path / "runs")]
    assert tune_cli.main(argv) == 0
    sweep = only_sweep(tmp_path / "runs")
    rows = {(r["n_layers"], r["learning_rate"]): r for r in read_rows(sweep)}
    assert rows[("1", "0.05")]["status"] == "finished" and rows[("1", "0.05")]["epochs"] == "6"
    stopped = rows[("1", "1e-09")]
    assert stopped["status"] == "stopped" and int(stopped["epochs"]) < 6
    assert "asha" in stopped["error"]
    for lr in ("0.05", "1e-09"):
        failed = rows[("-2", lr)]
        assert failed["status"] == "failed" and "layers must be a non-negative int" in failed["error"]
    summary = (sweep / "summary.md").read_text()
    assert "0/1 (1 failed)" in summary
