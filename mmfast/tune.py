"""``python -m mmfast.tune``: a model's grid (or a random / Optuna search) as Ray Tune trials,
many at once, on one machine or a Ray cluster, each point repeated over seeds.

Examples::

    python -m mmfast.tune -m LightGCN --n-seeds 2 --workers 2      # the grid, 2 seeds, 2 at once
    python -m mmfast.tune -m FREEDOM -d baby --data-root ../data --scheduler asha
    python -m mmfast.tune -m LightGCN --search random --samples 20 \\
        --set "learning_rate=loguniform(1e-4, 1e-2)" --set "n_layers=choice([1, 2, 3])"
    python -m mmfast.tune --resume runs/LightGCN-synthetic-sweep-<timestamp>
    python -m mmfast.tune -m LightGCN --address auto                # an existing Ray cluster

Every trial is one point at one seed, trained exactly as ``python -m mmfast.train`` trains it
(:func:`mmfast.trainer.run`), in a normal run folder ``<sweep>/trials/p<point>-s<seed>/``. The
sweep folder also holds ``sweep.yaml`` (what the sweep is), ``results.csv`` (a row per trial),
``summary.md`` (a row per point, mean ± std over seeds, ranked by mean valid), ``best/`` (the
best trial's run folder) and ``sweep.png``. See docs/tune.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from mmfast import _ext
from mmfast._atomic import atomic_write_json, atomic_write_text
from mmfast.train import (
    EXIT_INTERRUPTED, add_experiment_options, import_models, resolve_config,
)
from mmfast.trainer import config as cfg
from mmfast.trainer import sweep as sw
from mmfast.trainer.experiment import DONE

TUNE_HINT = 'mmfast.tune needs Ray Tune: pip install "mmfast[tune]"'
SWEEP_FILE = "sweep.yaml"
SCHEDULERS = ("fifo", "asha")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmfast.tune",
        description="Sweep a model's grid on Ray Tune: trials in parallel (cores, GPUs or a "
        "cluster), each point over seeds, ranked by mean valid metric; resumable.",
        formatter_class=lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, width=100),
    )
    add_experiment_options(p, out_help="folder for sweep folders (default: config "
                                       "checkpoint_dir = runs)")
    g = p.add_argument_group("sweep")
    g.add_argument("--seeds", default=None, metavar="S1,S2,...", help="repeat every point at these seeds")
    g.add_argument("--n-seeds", type=int, default=None, metavar="K",
                   help="repeat every point at K seeds: the config's seed and the K - 1 after it")
    g.add_argument("--search", default="grid", choices=sw.SEARCHES,
                   help="grid: the YAML's hyper_parameters grid; random / optuna: --samples "
                   "points drawn from list axes and --set ranges")
    g.add_argument("--samples", type=int, default=None, help="points to draw (random, optuna)")
    g.add_argument("--scheduler", default="fifo", choices=SCHEDULERS,
                   help="asha stops trials whose valid metric trails at a rung")
    g.add_argument("--asha-grace", type=int, default=10, metavar="EPOCHS",
                   help="ASHA: epochs every trial trains before it can be stopped")
    g.add_argument("--asha-reduction", type=float, default=3.0, metavar="ETA",
                   help="ASHA: 1/ETA of the trials go on at each rung")
    g.add_argument("--workers", type=int, default=None,
                   help="trials at once (default: the local cores / --cpus-per-trial, or one "
                   "per GPU share; no cap on a cluster)")
    g.add_argument("--cpus-per-trial", type=int, default=None,
                   help="CPUs (torch threads) per trial (default: cores / workers locally, 1 on "
                   "a cluster)")
    g.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share per trial; fractions pack small trials on one GPU (default: "
                   "1 when this machine has a GPU and --device is not cpu, else 0)")
    g.add_argument("--address", default=None,
                   help="join an existing Ray cluster (auto, or ray://host:port) instead of "
                   "starting a local one; the sweep folder must be on storage all nodes share")
    g.add_argument("--max-failures", type=int, default=0,
                   help="retries of a failing trial (the others go on either way)")
    g.add_argument("--resume", default=None, metavar="SWEEP_DIR",
                   help="continue a sweep: finished trials are kept, interrupted ones continue "
                   "from their last.pt")
    return p


# ----------------------------------------------------------------------------- the trial
def _trial(tune_config: dict[str, Any], sweep_dir: str, cwd: str, threads: int) -> None:
    """One trial, in a Ray worker: train (or continue) its run folder, reporting the valid
    metric to Tune after every evaluation."""
    import torch
    from ray import tune

    from mmfast.trainer import run

    os.chdir(cwd)  # relative data paths mean what they meant to the driver
    torch.set_num_threads(max(1, threads))
    sweep = Path(sweep_dir)
    state = cfg.load_yaml(sweep / SWEEP_FILE)
    for module in state.get("imports", []):  # models registered outside mmfast
        importlib.import_module(module)
    config = state["config"]
    metric = _metric_key(config)
    name = tune_config.get("trial")
    if name is not None:
        point, seed = sw.Plan.from_dict(state["plan"]).lookup(name)
    else:  # optuna: the point is the search's suggestion
        axes = state["plan"]["axes"]
        point, seed = {k: tune_config[k] for k in axes}, int(state["plan"]["seeds"][0])
        name = f"optuna-{tune.get_context().get_trial_id()}"
    folder = sweep / "trials" / name
    (folder / sw.ERROR_FILE).unlink(missing_ok=True)
    reported = []

    def report(epoch: int, valid, test) -> None:
        reported.append(epoch)
        tune.report({metric: float(valid[config["valid_metric"].lower()]), "epoch": epoch + 1,
                     **{f"valid_{k}": float(v) for k, v in valid.items()},
                     **{f"test_{k}": float(v) for k, v in test.items()}})

    try:
        if (folder / "config.yaml").is_file() and (folder / "last.pt").is_file():
            result = run(resume=folder, console=False, progress=False, on_evaluation=report)
        else:
            if folder.exists():  # stopped before its first checkpoint: start it again
                shutil.rmtree(folder)
            result = run(sw.trial_config(config, point, seed), run_dir=folder, console=False,
                         progress=False, on_evaluation=report)
    except Exception as exc:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / sw.ERROR_FILE, f"{type(exc).__name__}: {exc}\n\n"
                          + traceback.format_exc())
        raise
    if not reported and result.best.get("valid"):  # nothing left to train: say where it ended
        tune.report({metric: float(result.best["valid"][config["valid_metric"].lower()]),
                     "epoch": int(result.best["epoch"]) + 1})


def _metric_key(config: dict[str, Any]) -> str:
    return f"valid_{str(config['valid_metric']).lower()}"


# ----------------------------------------------------------------------------- the driver
def _trial_state(folder: Path) -> str:
    """done (kept on resume), failed, stopped, or open (to run or continue)."""
    if (folder / sw.ERROR_FILE).is_file():
        return "failed"
    metrics = folder / "metrics.json"
    summary = json.loads(metrics.read_text()) if metrics.is_file() else {}
    if summary.get("status") in DONE and "selection" in summary:
        return "done"  # the run wrote its final summary
    if (folder / sw.STOPPED_FILE).is_file():
        return "stopped"
    return "open"  # to run, or to continue (a killed run that had not written its summary too)


def _resources(args: argparse.Namespace, config: dict[str, Any]) -> tuple[int | None, int, float]:
    """(concurrent trials or None for no cap, CPUs per trial, GPUs per trial)."""
    import torch

    cores = os.cpu_count() or 1
    local_gpus = torch.cuda.device_count() if args.address is None else 0
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if local_gpus and str(config["device"]) != "cpu" else 0.0
    if gpus < 0:
        raise cfg.ConfigError(f"--gpus-per-trial must be >= 0, got {gpus}")
    if str(config["device"]).startswith("cuda") and gpus == 0:
        raise cfg.ConfigError("--device cuda needs --gpus-per-trial > 0 (Ray hides GPUs from "
                              "trials that asked for none)")
    workers = args.workers
    if workers is not None and workers < 1:
        raise cfg.ConfigError(f"--workers must be at least 1, got {workers}")
    if args.address is not None:
        return workers, args.cpus_per_trial or 1, gpus
    if workers is None:
        if gpus > 0 and local_gpus:
            workers = max(1, int(local_gpus / gpus + 1e-9))
        else:
            workers = max(1, cores // (args.cpus_per_trial or 1))
    cpus = args.cpus_per_trial or max(1, cores // workers)
    return workers, cpus, gpus


def _new_sweep(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    plain, ranges = sw.split_overrides(args.overrides)
    config = resolve_config(args, plain)
    for key in ranges:
        if key not in (config.get("hyper_parameters") or []):
            config["hyper_parameters"] = [*(config.get("hyper_parameters") or []), key]
    seeds = sw.seed_list(config, args.seeds, args.n_seeds)
    plan = sw.make_plan(config, ranges, seeds, search=args.search, samples=args.samples,
                        sample_seed=seeds[0])
    if config.get("data_path"):
        config["data_path"] = str(Path(config["data_path"]).resolve())
    out = Path(args.out or config["checkpoint_dir"])
    stamp = time.strftime("%b-%d-%Y-%H-%M-%S")
    sweep_dir = out / f"{config['model']}-{config['dataset']}-sweep-{stamp}"
    n = 1
    while sweep_dir.exists():
        n += 1
        sweep_dir = out / f"{config['model']}-{config['dataset']}-sweep-{stamp}-{n}"
    sweep_dir.mkdir(parents=True)
    state = {"model": config["model"], "dataset": config["dataset"], "search": args.search,
             "samples": args.samples, "scheduler": args.scheduler, "asha_grace": args.asha_grace,
             "asha_reduction": args.asha_reduction, "imports": list(args.imports),
             "plan": plan.to_dict(), "config": config}
    atomic_write_text(sweep_dir / SWEEP_FILE, cfg.dump(state))
    return sweep_dir, state


def _scheduler(state: dict[str, Any], metric: str):
    if state["scheduler"] != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # One past the last epoch: a trial ends itself (epochs or early stopping) and writes its
    # summary; at max_t Tune would stop it right after its last report, before that.
    epochs = int(state["config"]["epochs"]) + 1
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                         grace_period=max(1, min(int(state["asha_grace"]), epochs)),
                         reduction_factor=float(state["asha_reduction"]))


def run_sweep(sweep_dir: Path, state: dict[str, Any], args: argparse.Namespace) -> bool:
    """Run the sweep's open trials on Ray Tune; True when no trial is left open."""
    import ray
    from ray import tune

    config = state["config"]
    plan = sw.Plan.from_dict(state["plan"])
    metric = _metric_key(config)
    trials_dir = sweep_dir / "trials"
    workers, cpus, gpus = _resources(args, config)
    if state["search"] == "optuna":
        done = [f for f in trials_dir.glob("optuna-*") if _trial_state(f) != "open"]
        todo = max(0, int(state["samples"]) - len(done))
        open_trials: list[str] = []
    else:
        open_trials = [t for t in plan.trials() if _trial_state(trials_dir / t) == "open"]
        todo = len(open_trials)
    print(f"sweep {sweep_dir}: {len(plan.points) or state['samples']} points x "
          f"{len(plan.seeds)} seeds; {todo} trials to run, {workers or 'no cap on'} at once, "
          f"{cpus} CPU(s) and {gpus:g} GPU(s) each", flush=True)
    for i, point in enumerate(plan.points):
        print(f"  p{i:03d}: {point}", flush=True)
    if todo == 0:
        return True
    if args.address is not None:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=workers * cpus, num_gpus=(torch_gpus() if gpus else 0),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    completed: set[str] = set()

    class _Completed(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            completed.add(trial.config.get("trial") or f"optuna-{trial.trial_id}")

    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep_dir=str(sweep_dir.resolve()), cwd=os.getcwd(),
                             threads=cpus),
        {"cpu": cpus, "gpu": gpus})
    search_alg = None
    if state["search"] == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise cfg.ConfigError('--search optuna needs optuna: pip install optuna') from None
        space = _tune_space(config, plan)
        search_alg = OptunaSearch(metric=metric, mode="max", seed=plan.seeds[0])
        param_space, samples = space, todo
    else:
        param_space, samples = {"trial": tune.grid_search(open_trials)}, 1
    # Tune's classic table: trial, status, the valid metric, test Recall@20 and epochs, with the
    # best trial so far, every 30 s (the newer output engine prints every result instead).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    reporter = tune.CLIReporter(
        metric_columns={metric: metric, "test_recall@20": "test_recall@20", "epoch": "epochs"},
        parameter_columns=["trial"] if state["search"] != "optuna" else plan.axes,
        max_report_frequency=30, sort_by_metric=True)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=samples,
                                    max_concurrent_trials=workers, search_alg=search_alg,
                                    scheduler=_scheduler(state, metric)),
        run_config=tune.RunConfig(
            name=f"ray-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((sweep_dir / "ray").resolve()), callbacks=[_Completed()],
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            progress_reporter=reporter, verbose=1),
    )
    try:
        tuner.fit()
    finally:
        ray.shutdown()
    for name in completed:  # Tune ended it, but it did not finish training: the scheduler
        folder = trials_dir / name
        if _trial_state(folder) == "open" and (folder / "metrics.json").is_file():
            epochs = len(json.loads((folder / "metrics.json").read_text())["epochs"])
            atomic_write_json(folder / sw.STOPPED_FILE, {
                "reason": f"stopped by the {state['scheduler']} scheduler after {epochs} epochs"})
    if state["search"] == "optuna":
        return len([f for f in trials_dir.glob("optuna-*") if _trial_state(f) != "open"]) >= int(state["samples"])
    return all(_trial_state(trials_dir / t) != "open" for t in plan.trials())


def torch_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _tune_space(config: dict[str, Any], plan: sw.Plan) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for k in plan.axes:
        r = plan.ranges.get(k)
        if r is None:
            space[k] = tune.choice(config[k]) if isinstance(config[k], list) else config[k]
        elif r.kind == "choice":
            space[k] = tune.choice(list(r.args))
        else:
            space[k] = getattr(tune, r.kind)(*r.args)
    return space


def report(sweep_dir: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Write results.csv, summary.md, best/ and sweep.png; return the per-point table."""
    config = state["config"]
    plan = sw.Plan.from_dict(state["plan"])
    metric = str(config["valid_metric"]).lower()
    trials_dir = sweep_dir / "trials"
    rows = []
    if state["search"] == "optuna":
        for i, folder in enumerate(sorted(trials_dir.glob("optuna-*"))):
            saved = cfg.load_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
            point = {k: saved.get(k) for k in plan.axes}
            rows.append(sw.trial_row(folder, folder.name, i, point, int(saved.get("seed", plan.seeds[0]))))
    else:
        for i, point in enumerate(plan.points):
            for seed in plan.seeds:
                name = sw.trial_name(i, seed)
                rows.append(sw.trial_row(trials_dir / name, name, i, point, seed))
    sw.write_csv(sweep_dir / "results.csv", rows)
    table = sw.point_table(rows, plan.axes, metric)
    title = f"{state['model']} on {state['dataset']}: {state['search']} sweep, seeds {plan.seeds}"
    atomic_write_text(sweep_dir / "summary.md", sw.summary_markdown(table, plan.axes, metric, title))
    if table and f"valid_{metric}" in table[0]:
        best_point = table[0]["point"]
        candidates = [r for r in rows if r["point"] == best_point
                      and r.get(f"valid_{metric}") not in (None, "")]
        best = max(candidates, key=lambda r: float(r[f"valid_{metric}"]))
        tmp = sweep_dir / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best["run_dir"], tmp)
        shutil.rmtree(sweep_dir / "best", ignore_errors=True)
        tmp.rename(sweep_dir / "best")
    sw.plot_sweep(sweep_dir / "sweep.png", rows, plan.axes, metric)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        importlib.import_module("ray.tune")
    except ImportError:
        print(f"error: {TUNE_HINT}", file=sys.stderr)
        return 2
    import_models(parser, args.imports)
    from mmfast import models

    try:
        if args.resume:
            sweep_dir = Path(args.resume)
            if not (sweep_dir / SWEEP_FILE).is_file():
                raise cfg.ConfigError(f"--resume {sweep_dir}: not a sweep folder (no {SWEEP_FILE})")
            state = cfg.load_yaml(sweep_dir / SWEEP_FILE)
            for name in state.get("imports", []):
                importlib.import_module(name)
        else:
            sweep_dir, state = _new_sweep(args)
        if state["config"]["backend"] == "mmfast":
            _ext.require()
        finished = run_sweep(sweep_dir, state, args)
    except (cfg.ConfigError, models.UnknownModelError, _ext.KernelsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        finished = False
    table = report(sweep_dir, state)
    metric = str(state["config"]["valid_metric"]).lower()
    print("\n" + sw.console_table(table, sw.Plan.from_dict(state["plan"]).axes, metric))
    print(f"\nresults.csv, summary.md, best/ and sweep.png in {sweep_dir}")
    if not finished:
        print(f"the sweep is not finished; continue with: python -m mmfast.tune --resume "
              f"{sweep_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
