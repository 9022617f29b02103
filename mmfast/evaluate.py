"""``python -m mmfast.evaluate``: AlignRec's intermediate metrics (MODELS.md §3.6) and
re-evaluation of trained runs.

Examples::

    # zero-shot and item-CF Recall/NDCG of features, no training (repeat --features to compare)
    python -m mmfast.evaluate -d tiktok --data-root ../data --features image --features audio \\
        --features concat --features stage1.npy --json tiktok-features.json
    # a trained run's best checkpoint on valid and test
    python -m mmfast.evaluate --run runs/ALIGNREC-tiktok-...
    # the same with the image features zeroed for a seeded half of the items
    python -m mmfast.evaluate --run runs/ALIGNREC-tiktok-... --mask-modality image --ratio 0.5

``--features`` takes a ``.npy`` file (one row per item, any width), a modality name of the
dataset, or ``concat`` (every modality side by side). Output: a table on stdout, and with
``--json FILE`` the same numbers as JSON. Errors exit 2 with one line and write nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmfast import _ext
from mmfast._atomic import atomic_write_json
from mmfast.data import load_dataset
from mmfast.data.dataset import Dataset
from mmfast.data.mmrec import read_feature
from mmfast.eval import feature_metrics, results_table
from mmfast.ops import use_backend
from mmfast.recommend import load_run
from mmfast.trainer import config as cfg
from mmfast.trainer.evaluation import build_evaluator
from mmfast.trainer.experiment import resolve_device
from mmfast.train import import_models


def data_config(dataset: str, data_root: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """overall.yaml < dataset/<name>.yaml < ``--set`` (checked keys), for loading a dataset."""
    config = cfg.load_yaml(cfg.CONFIG_DIR / "overall.yaml")
    path = cfg.dataset_config_path(dataset)
    if path.is_file():
        config = cfg.merge(config, cfg.load_yaml(path))
    for text in overrides:
        key, value = cfg.parse_override(text)
        layer: dict[str, Any] = {}
        node = layer
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        cfg.check_layer(config, layer, f"from --set {text}")
        config = cfg.merge(config, layer)
    config["dataset"] = dataset
    if data_root is not None:
        config["data_path"] = data_root
    return config


def resolve_features(dataset: Dataset, spec: str) -> tuple[str, torch.Tensor]:
    """(label, [n_items, d] float32) for a ``--features`` value."""
    if spec == "concat":
        if not dataset.modalities:
            raise ValueError(f"dataset {dataset.name!r} has no modality features to concatenate")
        table = np.concatenate([dataset.features[m] for m in dataset.modalities], axis=1)
        return f"concat({'+'.join(dataset.modalities)})", torch.from_numpy(table)
    if spec in dataset.features:
        return spec, dataset.feature(spec)
    path = Path(spec)
    if path.suffix != ".npy" and not path.exists():
        raise ValueError(f"--features {spec!r}: not a file, 'concat' or one of the dataset's "
                         f"modalities {dataset.modalities}")
    return path.stem, torch.from_numpy(np.array(read_feature(path, dataset.n_items)))


def evaluate_features(args: argparse.Namespace) -> dict[str, Any]:
    config = data_config(args.dataset, args.data_root, args.overrides)
    dataset = load_dataset(config)
    device = resolve_device(args.device)
    ks = tuple(args.topk or config["topk"])
    tables = [resolve_features(dataset, spec) for spec in args.features]  # all checked first
    out: dict[str, Any] = {"dataset": dataset.name, "topk": list(ks), "features": {}}
    with use_backend(args.backend):
        for (label, table), spec in zip(tables, args.features):
            name, n = label, 2
            while name in out["features"]:
                name, n = f"{label}#{n}", n + 1
            res = feature_metrics(dataset, table.to(device), ks=ks,
                                  batch_size=int(config["eval_batch_size"]))
            out["features"][name] = {"spec": spec, "dim": int(table.shape[1]), **res}
    rows = {f"{name} {method}": res[method] for name, res in out["features"].items()
            for method in ("zero_shot", "item_cf")}
    out["table"] = results_table(rows)
    return out


def evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.run)
    if not (run_dir / "best.pt").is_file():
        raise FileNotFoundError(f"{run_dir}: no best.pt (not a run folder, or the run never "
                                "finished an evaluation)")
    saved = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    trained_on = saved["config"]["dataset"]
    if args.dataset is not None and args.dataset != trained_on:
        raise ValueError(f"{run_dir} was trained on dataset {trained_on!r}, not {args.dataset!r}")
    if args.ratio is not None and not args.mask_modality:
        raise ValueError("--ratio needs --mask-modality NAME")
    try:
        model, dataset = load_run(run_dir, args.device, args.data_root)
    except _ext.KernelsUnavailable:
        raise
    except RuntimeError as exc:  # a state dict that does not fit the dataset found there
        first = str(exc).strip().splitlines()
        raise ValueError(f"{run_dir}: its checkpoint does not fit the dataset "
                         f"{trained_on!r} found now ({first[1].strip() if len(first) > 1 else first[0]})"
                         ) from None
    config = dict(saved["config"])
    mask = None
    if args.mask_modality:
        ratio = 0.5 if args.ratio is None else float(args.ratio)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"--ratio must be in [0, 1], got {ratio}")
        if "fused" in dataset.modalities:
            raise ValueError(f"masking needs per-modality features, and {run_dir} was trained on "
                             "one fused feature file (fused_feature); train on the dataset's "
                             "modality files to mask one")
        if args.mask_modality not in dataset.modalities:
            raise ValueError(f"--mask-modality {args.mask_modality!r}: the run's dataset has "
                             f"{dataset.modalities}")
        gen = torch.Generator().manual_seed(int(args.seed))
        n = int(round(ratio * dataset.n_items))
        items = torch.randperm(dataset.n_items, generator=gen)[:n]
        model.mask_modality(args.mask_modality, items)
        mask = {"modality": args.mask_modality, "ratio": ratio, "seed": int(args.seed),
                "items": n}
    if args.topk:
        config["topk"] = list(args.topk)
    device = next(iter(model.parameters())).device
    evaluate = build_evaluator(dataset, config, device)
    with use_backend(config.get("backend", "mmfast")):
        users, items_ = model.embeddings()
        result = dict(zip(("valid", "test"), evaluate(users, items_, ("valid", "test"))))
    name = f"{saved['model_name']} epoch {saved['epoch']}" + (
        f" masked {mask['modality']} {mask['ratio']:g}" if mask else "")
    return {"run": str(run_dir), "model": saved["model_name"], "dataset": trained_on,
            "epoch": saved["epoch"], "mask": mask, **result,
            "table": results_table({name: result})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmfast.evaluate",
        description="Intermediate metrics of item features (zero-shot and item-CF "
        "Recall/NDCG, no training), or re-evaluation of a trained run (optionally with one "
        "modality masked for a share of the items).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--features", action="append", default=None, metavar="FILE|MODALITY|concat",
                      help="features to judge (repeatable): a .npy file, a modality of the "
                      "dataset, or concat")
    what.add_argument("--run", default=None, metavar="RUN_DIR", help="a run folder with best.pt")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset (needed with --features; with --run, checked against the run's)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers the run's model (repeatable), as the "
                   "run was trained with")
    p.add_argument("--data-root", default=None,
                   help="folder holding <dataset>/ (default: config data_path, then $MMFAST_DATA; "
                   "with --run: where the run read it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data config override for --features (e.g. synthetic.n_users=800)")
    p.add_argument("--topk", type=int, nargs="+", default=None,
                   help="cut-offs K (default: the config's topk)")
    p.add_argument("--mask-modality", default=None, metavar="NAME",
                   help="with --run: zero this modality's features for a share of the items")
    p.add_argument("--ratio", type=float, default=None,
                   help="share of items masked (default 0.5, AlignRec's mask_ratio)")
    p.add_argument("--seed", type=int, default=999, help="seed of the masked-item draw")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", default="mmfast", choices=["mmfast", "torch"],
                   help="op implementation for --features")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import_models(parser, args.imports)
    try:
        if args.features is not None:
            if args.dataset is None:
                raise ValueError("--features needs -d DATASET")
            if args.mask_modality or args.ratio is not None:
                raise ValueError("--mask-modality / --ratio re-evaluate a trained run: use --run")
            result = evaluate_features(args)
        else:
            if args.overrides:
                raise ValueError("--set applies to --features; a run keeps its saved config")
            result = evaluate_run(args)
    except (FileNotFoundError, ValueError, KeyError, _ext.KernelsUnavailable) as exc:  # ConfigError, DataFormatError too
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
    table = result.pop("table")
    print(table)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
