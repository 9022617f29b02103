"""``python -m mmfast.pretrain``: AlignRec's stage 1, inter-content alignment, as a small trainer.

Learns one unified vector per item from the dataset's modality features (image + text, or
TikTok's image + audio) with :class:`mmfast.nn.ContentAligner`: symmetric InfoNCE between the
modality encodings plus reconstruction of every modality from the unified vector, a share of
the items seeing one modality only. Writes the fused feature file stage 2 reads
(``--set fused_feature=FILE.npy`` for ``-m ALIGNREC``) and, beside it, ``FILE.json``: how it was
made. Both are written atomically, at the end.

Examples::

    python -m mmfast.pretrain --out stage1.npy                          # embedded synthetic set
    python -m mmfast.pretrain -d tiktok --data-root ../data --out tiktok-stage1.npy --epochs 100
    python -m mmfast.pretrain --out tiktok-stage1.npy --resume          # after Ctrl-C

Seeded (``--seed``, 999); after every epoch the state (model, Adam, the batch stream, the loss
history) is saved atomically to ``FILE.state.pt``, and ``--resume`` continues from it with the
saved settings, bit for bit on CPU. Errors exit 2 with one line and write nothing.

Unlike the paper's BEiT-3 pre-training (a vision-language transformer trained by masked
image/language modelling on raw pixels and text tokens), MMRec datasets hold only extracted
feature vectors, so "mask then predict" happens at the level of whole modalities: masked items
keep one modality and must reconstruct all of them from the unified vector.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmfast import _ext
from mmfast._atomic import atomic_torch_save, atomic_write, atomic_write_json
from mmfast.data import load_dataset
from mmfast.evaluate import data_config
from mmfast.nn import ContentAligner
from mmfast.ops import use_backend
from mmfast.trainer.experiment import resolve_device
from mmfast.trainer.progress import epoch_bar, use_bar
from mmfast.trainer.rng import seed_everything

EXIT_INTERRUPTED = 130
SETTINGS = {  # option: default
    "dim": 128, "hidden": 256, "epochs": 50, "batch_size": 1024, "lr": 1e-3,
    "temperature": 0.2, "recon_weight": 1.0, "mask_ratio": 0.3, "seed": 999,
}


def state_path(out: Path) -> Path:
    return out.with_suffix(".state.pt")


def meta_path(out: Path) -> Path:
    return out.with_suffix(".json")


def standardized(dataset, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each modality z-scored per column over the items (a constant column becomes 0)."""
    out = {}
    for m in modalities:
        x = dataset.feature(m).double()
        std = x.std(dim=0, keepdim=True)
        out[m] = ((x - x.mean(dim=0, keepdim=True)) / torch.where(std > 0, std, 1.0)).float()
    return out


class Interrupted(Exception):
    pass


def pretrain(settings: dict[str, Any], data: dict[str, Any], out: Path, *, device: str = "cpu",
             resume: bool = False, progress: bool | None = None,
             log=print) -> dict[str, Any]:
    """Train (or continue) stage 1 and write ``out`` + its JSON; returns the JSON's content."""
    dataset = load_dataset(data)
    modalities = list(settings.get("modalities") or dataset.modalities)
    if "fused" in dataset.modalities:
        raise ValueError("stage 1 fuses per-modality features; this dataset was loaded with one "
                         "fused feature file (fused_feature)")
    missing = [m for m in modalities if m not in dataset.features]
    if missing:
        raise ValueError(f"dataset {dataset.name!r} has no {missing} features; it has "
                         f"{dataset.modalities}")
    if len(modalities) < 2:
        raise ValueError(f"stage 1 aligns two or more modalities; dataset {dataset.name!r} has "
                         f"{modalities}")
    for m in modalities:
        if not bool(torch.isfinite(dataset.feature(m)).all()):
            raise ValueError(f"the {m} features hold NaN or infinite values")
    dev = resolve_device(device)
    x = {m: t.to(dev) for m, t in standardized(dataset, modalities).items()}
    seed_everything(int(settings["seed"]))
    model = ContentAligner({m: t.shape[1] for m, t in x.items()}, int(settings["dim"]),
                           int(settings["hidden"]), temperature=float(settings["temperature"]),
                           recon_weight=float(settings["recon_weight"]),
                           mask_ratio=float(settings["mask_ratio"])).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["lr"]))
    gen = torch.Generator(device=dev).manual_seed(int(settings["seed"]))
    history: list[dict[str, Any]] = []
    start = 0
    if resume:
        state = torch.load(state_path(out), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        history, start = state["history"], state["epoch"] + 1
        log(f"resumed from {state_path(out)} after epoch {state['epoch']}")
    n, bs = dataset.n_items, int(settings["batch_size"])
    batches = (n + bs - 1) // bs
    bar = use_bar(progress)
    epoch = start - 1
    t_start = time.perf_counter()
    try:
        for epoch in range(start, int(settings["epochs"])):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=gen, device=dev)
            total = torch.zeros((), device=dev)
            rows_iter = (order[b * bs:(b + 1) * bs] for b in range(batches))
            for rows in epoch_bar(rows_iter, batches, epoch, bar):
                keep = model.keep_mask(rows.numel(), gen, dev)
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss({m: t[rows] for m, t in x.items()}, keep)
                loss.backward()
                optimizer.step()
                total += loss.detach()
            loss_value = float(total) / batches
            history.append({"epoch": epoch, "loss": loss_value,
                            "time": round(time.perf_counter() - t0, 4)})
            log(f"epoch {epoch} pretraining [time: {time.perf_counter() - t0:.2f}s, "
                f"loss: {loss_value:.4f}]")
            atomic_torch_save({"epoch": epoch, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                               "history": history, "settings": settings, "data": data,
                               "modalities": modalities}, state_path(out))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during epoch {epoch}; resumable after epoch "
                          f"{len(history) - 1}") from None
    model.eval()
    with torch.no_grad():
        unified = torch.cat([model.unify({m: t[b:b + 8192] for m, t in x.items()})
                             for b in range(0, n, 8192)]).cpu().numpy().astype(np.float32)
    meta = {
        "made_by": "mmfast.pretrain", "stage": "AlignRec stage 1 (inter-content alignment)",
        "dataset": dataset.name, "source": str(dataset.source) if dataset.source else "embedded",
        "modalities": {m: int(t.shape[1]) for m, t in x.items()},
        "shape": list(unified.shape), "settings": settings,
        "objective": "symmetric InfoNCE between modality encodings + reconstruction of every "
                     "(standardized) modality from the unified vector; mask_ratio of the items "
                     "see one modality only",
        "epochs": len(history), "final_loss": history[-1]["loss"] if history else None,
        "history": history, "seconds": round(time.perf_counter() - t_start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(out, lambda fh: np.save(fh, unified))
    atomic_write_json(meta_path(out), meta)
    log(f"wrote {out} ({unified.shape[0]} x {unified.shape[1]}) and {meta_path(out)}")
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmfast.pretrain",
        description="AlignRec stage 1: pre-train one unified feature per item from the "
        "dataset's modalities (cross-modal InfoNCE + reconstruction) and write it as a fused "
        "feature file for -m ALIGNREC (--set fused_feature=FILE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-d", "--dataset", default=None, help="dataset (default: synthetic)")
    p.add_argument("--data-root", default=None,
                   help="folder holding <dataset>/ (default: config data_path, then $MMFAST_DATA)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data config override (e.g. synthetic.n_users=800)")
    p.add_argument("--modalities", nargs="+", default=None,
                   help="modalities to fuse (default: every one the dataset has)")
    p.add_argument("--out", required=True, metavar="FILE.npy",
                   help="the fused feature file to write (FILE.json and FILE.state.pt beside it)")
    for key, default in SETTINGS.items():
        kind = type(default)
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None,
                       help=f"(default: {default})")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", default="mmfast", choices=["mmfast", "torch"],
                   help="op implementation")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "lines"],
                   help="a progress bar per epoch (auto: when stderr is a terminal)")
    p.add_argument("--resume", action="store_true",
                   help="continue from FILE.state.pt with its saved settings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    try:
        if out.suffix != ".npy":
            raise ValueError(f"--out {out}: the fused feature file must end in .npy")
        explicit = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
        if args.resume:
            if explicit or args.dataset or args.overrides or args.modalities or args.data_root:
                raise ValueError("--resume continues with the settings saved in "
                                 f"{state_path(out)}; it takes no dataset or training options")
            if not state_path(out).is_file():
                raise FileNotFoundError(f"--resume: no {state_path(out)} to continue from")
            state = torch.load(state_path(out), map_location="cpu", weights_only=False)
            settings, data = state["settings"], state["data"]
        else:
            settings = {**SETTINGS, **explicit, "modalities": args.modalities}
            for key in ("dim", "hidden", "epochs", "batch_size"):
                if settings[key] <= 0:
                    raise ValueError(f"--{key.replace('_', '-')} must be positive, got {settings[key]}")
            data = data_config(args.dataset or "synthetic", args.data_root, args.overrides)
        with use_backend(args.backend):
            pretrain(settings, data, out, device=args.device, resume=args.resume,
                     progress=progress)
    except Interrupted as exc:
        print(f"\n{exc}; continue with: python -m mmfast.pretrain --out {out} --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, ValueError, _ext.KernelsUnavailable) as exc:  # ConfigError, DataFormatError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
