"""``python -m mmfast.train``: train a model with MMRec's protocol (MMRec's ``main.py -m -d``).

Examples::

    python -m mmfast.train --model LightGCN --no-grid          # embedded synthetic data
    python -m mmfast.train --model LightGCN                    # the whole grid
    python -m mmfast.train -m FREEDOM -d baby --data-root ../data --set dropout=0.8
    python -m mmfast.train --resume runs/FREEDOM-baby-Jun-01-2026-10-00-00
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from mmfast import _ext
from mmfast.trainer import config as cfg

EXIT_INTERRUPTED = 130


def _config_epilog() -> str:
    overall = cfg.load_yaml(cfg.CONFIG_DIR / "overall.yaml")
    lines = ["config keys (defaults from configs/overall.yaml; change with --set key=value or "
             "--config FILE; model keys: --show-config):"]
    lines += [f"  {k} = {v}" for k, v in overall.items()]
    return "\n".join(lines)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default once: options whose default comes from the config say so in their help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_experiment_options(p: argparse.ArgumentParser, *, out_help: str = "folder for run "
                           "folders (default: config checkpoint_dir = runs)") -> None:
    """The options that choose what to train (shared with ``python -m mmfast.tune``)."""
    p.add_argument("-m", "--model", default="LightGCN",
                   help="registered model name (see --list-models)")
    p.add_argument("-d", "--dataset", default="synthetic",
                   help="dataset name: 'synthetic' (embedded) or a folder under --data-root")
    p.add_argument("--data-root", default=None,
                   help="folder holding <dataset>/<dataset>.inter (default: config data_path, "
                   "then $MMFAST_DATA)")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="YAML file of config overrides (after the package defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (YAML value; repeatable; dotted keys for "
                   "nested ones, e.g. synthetic.n_users=800)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N (default: config device = auto)")
    p.add_argument("--backend", default=None, choices=["mmfast", "torch"],
                   help="op implementation: compiled kernels or their pure-PyTorch references "
                   "(default: config backend = mmfast)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config seed = 999)")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: config epochs = 1000)")
    p.add_argument("--selection", default=None, choices=["valid", "mmrec"],
                   help="grid selection: best valid, or MMRec's best test-at-best-valid "
                   "(default: config selection = valid)")
    p.add_argument("--mg", action="store_true", default=None,
                   help="train with Mirror Gradient (MMRec's mg.yaml: alpha1, alpha2, beta join "
                   "the grid; config mg = false)")
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers extra models (repeatable)")


def import_models(parser: argparse.ArgumentParser, modules: Sequence[str]) -> None:
    """``--import MODULE``: import modules that register models (an argparse error if one is
    missing). Every command that builds a model by name takes it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            parser.error(f"--import: {exc}")


def resolve_config(args: argparse.Namespace, overrides: Sequence[str] | None = None) -> dict:
    """The experiment's config from the options of :func:`add_experiment_options` (raises
    ConfigError / UnknownModelError)."""
    from mmfast import models

    model_cls = models.get(args.model)
    return cfg.resolve(
        models.canonical(args.model), args.dataset,
        model_defaults=model_cls.default_config(args.dataset), config_file=args.config,
        overrides=args.overrides if overrides is None else overrides,
        cli={"data_path": args.data_root, "device": args.device, "backend": args.backend,
             "seed": args.seed, "epochs": args.epochs, "selection": args.selection,
             "no_grid": getattr(args, "no_grid", None), "checkpoint_dir": args.out,
             "mg": args.mg},
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmfast.train",
        description="Train a recommendation model with MMRec's protocol: per-epoch negative "
        "sampling, Adam + LambdaLR, valid and test every epoch, early stopping on valid "
        "Recall@20, grid search over `hyper_parameters`.",
        formatter_class=_HelpFormatter,
        epilog=_config_epilog(),
    )
    add_experiment_options(p)
    p.add_argument("--no-grid", action="store_true", default=None,
                   help="train one point of the grid: each axis at the model YAML's "
                   "default_point (the paper's setting), else its first value")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its last completed epoch")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "lines"],
                   help="a progress bar per epoch (auto: when stderr is a terminal)")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved configuration and exit")
    p.add_argument("--list-models", action="store_true",
                   help="print the registered models and the plug-in combinations they take")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mmfast import models, trainer

    import_models(parser, args.imports)
    if args.list_models:
        for name in models.available():
            also = models.aliases(name)
            print(name + (f"  (also: {', '.join(also)})" if also else ""))
        from mmfast.models.registry import combinations

        combos = combinations()
        if combos:
            print("\nwith plug-ins (-m MODEL+PLUGIN; they chain: A+SEA+BMA):")
            for name, note in combos:
                print(name + (f"  ({note})" if note else ""))
        return 0
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    try:
        if args.resume:
            explicit = [o for o in ("config", "seed", "epochs", "selection", "data_root",
                                    "device", "backend", "no_grid", "mg") if getattr(args, o) is not None]
            argv_list = list(sys.argv[1:] if argv is None else argv)
            if explicit or args.overrides or any(
                a.split("=")[0] in ("-m", "--model", "-d", "--dataset") for a in argv_list
            ):
                parser.error("--resume continues a run with its saved config.yaml; "
                             "it takes no model, dataset or config options")
            trainer.run(resume=args.resume, progress=progress)
            return 0
        config = resolve_config(args)
        if args.show_config:
            print(cfg.dump(config), end="")
            return 0
        if config["backend"] == "mmfast":
            _ext.require()  # before a run folder exists
        trainer.run(config, progress=progress)
        return 0
    except trainer.TrainingInterrupted as exc:
        print(f"\n{exc}; continue with: python -m mmfast.train --resume {exc.folder}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted before training started", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (cfg.ConfigError, models.UnknownModelError, _ext.KernelsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
