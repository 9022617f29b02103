"""One experiment: a run folder, the dataset, every grid point trained, the selected result.

Run folder ``<out>/<Model>-<dataset>-<timestamp>/``: the log (MMRec's name and layout),
``config.yaml`` (as resolved, grid lists included), ``metrics.json``, ``best.pt``,
``last.pt`` and ``curves.png``. With a grid of several points each point trains in
``grid/<index>/`` with its own files, and the top level holds the selected point's
``best.pt``, ``curves.png`` and ``metrics.json`` (plus a ``grid`` summary).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mmfast import models
from mmfast.data import dataset_root, load_dataset
from mmfast.ops import use_backend
from mmfast.trainer import config as cfg
from mmfast._atomic import atomic_copy, atomic_write_text
from mmfast.trainer.rng import seed_everything
from mmfast.trainer.evaluation import build_evaluator, valid_metric
from mmfast.trainer.memory import keep_freed_memory
from mmfast.trainer.fit import (
    BEST, CURVES, LAST, METRICS, EvaluationCallback, Trainer, TrainingInterrupted,
)
from mmfast.trainer.progress import use_bar
from mmfast.trainer.runlog import (
    close_logger, config_block, dict2str, metrics_table, setup_logger, write_metrics,
)

DONE = ("finished", "early_stopped", "nan")


@dataclass
class RunResult:
    run_dir: Path
    best: dict[str, Any]
    params: dict[str, Any]
    selected: int
    points: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def new_run_dir(out: Path, model: str, dataset: str) -> tuple[Path, str]:
    stamp = time.strftime("%b-%d-%Y-%H-%M-%S")
    base = f"{model}-{dataset}-{stamp}"
    run_dir, n = out / base, 1
    while run_dir.exists():
        n += 1
        run_dir = out / f"{base}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir, f"{base}.log"


def _params_str(params: Mapping[str, Any]) -> str:
    return f"{list(params)}={tuple(params.values())}"


def select(points: list[dict[str, Any]], metric: str, mode: str) -> int:
    """Index of the chosen point: best valid score (``valid``), or MMRec's choice, the best
    test-at-best-valid score (``mmrec``). Ties keep the earlier point; points that never
    evaluated are skipped."""
    split = "valid" if mode == "valid" else "test"
    best_i, best_v = -1, float("-inf")
    for i, p in enumerate(points):
        v = p["best"][split].get(metric) if p["best"].get(split) else None
        if v is not None and v > best_v:
            best_i, best_v = i, v
    return best_i


def run(
    config: Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
    console: bool = True,
    run_dir: str | Path | None = None,
    on_evaluation: EvaluationCallback | None = None,
) -> RunResult:
    """Train every grid point of ``config`` (or continue the run in ``resume``).

    The run folder is a new ``<out>/<Model>-<dataset>-<timestamp>/``, or exactly ``run_dir``
    (created; it must not hold a run yet). ``on_evaluation(epoch, valid, test)`` runs after
    every evaluation of every point (a sweep's scheduler listens there)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise cfg.ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        config = cfg.load_yaml(run_dir / "config.yaml")
        dataset = None
        logs = sorted(run_dir.glob("*.log"))
        log_name = logs[0].name if logs else f"{run_dir.name}.log"
    else:
        if config is None:
            raise ValueError("run: pass a config or resume=RUN_DIR")
        models.get(config["model"])  # fail before creating a run folder
        dataset_root(config)
        resolve_device(str(config["device"]))
        dataset = load_dataset(config)  # a bad feature file too
        if run_dir is None:
            run_dir, log_name = new_run_dir(Path(out or config["checkpoint_dir"]),
                                             config["model"], config["dataset"])
        else:
            run_dir = Path(run_dir)
            if (run_dir / "config.yaml").exists():
                raise cfg.ConfigError(f"{run_dir} holds a run already (resume it instead)")
            run_dir.mkdir(parents=True, exist_ok=True)
            log_name = f"{config['model']}-{config['dataset']}-{run_dir.name}.log"
        atomic_write_text(run_dir / "config.yaml", cfg.dump(config))
    logger = setup_logger(run_dir / log_name, console=console)
    if config.get("malloc_cache", True):
        keep_freed_memory()
    try:
        with use_backend(config["backend"]):
            return _run(dict(config), run_dir, logger, resume is not None, use_bar(progress),
                        dataset, on_evaluation)
    except TrainingInterrupted as exc:  # resume takes the run folder, not a grid point's
        raise TrainingInterrupted(run_dir, exc.epoch) from None
    finally:
        close_logger(logger)


def _run(config: dict[str, Any], run_dir: Path, logger: logging.Logger, resuming: bool,
         bar: bool, dataset=None, on_evaluation: EvaluationCallback | None = None) -> RunResult:
    log = logger.info
    model_cls = models.get(config["model"])
    device = resolve_device(str(config["device"]))
    if resuming:
        log(f"\n████ resuming {run_dir} ████")
    log(f"██Server: \t{os.uname().nodename}")
    log(f"██Dir: \t{os.getcwd()}\n")
    log(config_block(config))
    log(f"device: {device}, backend: {config['backend']}")
    dataset = load_dataset(config) if dataset is None else dataset
    log("\n" + str(dataset))
    evaluate = build_evaluator(dataset, config, device)
    metric = valid_metric(config)
    grid = cfg.grid_points(config)
    if config.get("no_grid"):
        log(f"one grid point (no_grid): {_params_str(cfg.point_params(config, grid[0]))}; "
            f"the full grid has {len(cfg.grid_points({**config, 'no_grid': False}))} points")
    points: list[dict[str, Any]] = []
    current = -1
    for idx, point in enumerate(grid):
        params = cfg.point_params(config, point)
        folder = run_dir if len(grid) == 1 else run_dir / "grid" / f"{idx:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        done = _saved_result(folder / METRICS) if resuming else None
        if done is not None and done["status"] in DONE:
            log(f"========={idx + 1}/{len(grid)}: Parameters:{_params_str(params)} (done)=======")
            points.append(done)
        else:
            log(f"========={idx + 1}/{len(grid)}: Parameters:{_params_str(params)}=======")
            points.append(_fit_point(point, params, model_cls, dataset, device, evaluate,
                                     folder, logger, resuming, bar, on_evaluation))
        res = points[-1]
        log(f"best valid result: {dict2str(res['best']['valid'])}")
        log(f"test result: {dict2str(res['best']['test'])}")
        current = select(points, metric, config["selection"])
        if current >= 0:
            b = points[current]
            log(f"████Current BEST████:\nParameters: {_params_str(b['params'])},\n"
                f"Valid: {dict2str(b['best']['valid'])},\nTest: {dict2str(b['best']['test'])}\n\n")
    return _finish(config, run_dir, logger, points, current, len(grid))


def _saved_result(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _fit_point(point, params, model_cls, dataset, device, evaluate, folder, logger, resuming,
               bar, on_evaluation=None) -> dict[str, Any]:
    seed = int(point["seed"])
    seed_everything(seed)  # MMRec reseeds before every grid point
    try:
        model = model_cls(point, dataset, device).to(device)
        logger.info(str(model))
        sampler = dataset.sampler(batch_size=int(point["train_batch_size"]), device=device,
                                  seed=seed, negatives=bool(point["use_neg_sampling"]))
        trainer = Trainer(point, model, sampler, evaluate, folder, logger, params=params,
                          progress=bar, on_evaluation=on_evaluation)
    except ValueError as exc:  # the model refuses this dataset or setting: the CLI's one line
        raise cfg.ConfigError(str(exc)) from exc
    if resuming and (folder / LAST).is_file():
        trainer.resume(folder / LAST)
    return trainer.fit()


def _finish(config, run_dir: Path, logger, points, selected: int, n: int) -> RunResult:
    log = logger.info
    log("\n============All Over=====================")
    for p in points:
        log(f"Parameters: {_params_str(p['params'])},\n best valid: {dict2str(p['best']['valid'])},"
            f"\n best test: {dict2str(p['best']['test'])}")
    if selected < 0:
        log("No grid point produced an evaluation (all stopped before their first one).")
        chosen = points[0]
    else:
        chosen = points[selected]
        log(f"\n\n█████████████ BEST ({config['selection']} selection) ████████████████")
        log(f"\tParameters: {_params_str(chosen['params'])},\nValid: "
            f"{dict2str(chosen['best']['valid'])},\nTest: {dict2str(chosen['best']['test'])}\n\n")
        log(metrics_table(chosen["best"]["valid"], chosen["best"]["test"],
                          chosen["best"]["epoch"]))
    summary = dict(chosen)
    summary["selection"] = config["selection"]
    if n > 1:
        summary["selected"] = selected
        summary["grid"] = [{"index": i, "params": p["params"], "status": p["status"],
                            "best": p["best"]} for i, p in enumerate(points)]
        src = run_dir / "grid" / f"{max(selected, 0):03d}"
        for name in (BEST, CURVES):
            if (src / name).is_file():
                atomic_copy(src / name, run_dir / name)
    write_metrics(run_dir / METRICS, summary)
    log(f"outputs in {run_dir}")
    return RunResult(run_dir, chosen["best"], chosen["params"], selected, points)
