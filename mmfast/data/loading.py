"""Datasets by name: ``load(name, root)`` and ``load_dataset(config)`` (a run's ``dataset``,
``data_path`` and feature keys). Configuration mistakes raise :class:`mmfast.configs.ConfigError`
naming the fix, as the command lines report them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from mmfast.configs import ConfigError
from mmfast.data.dataset import Dataset
from mmfast.data.interactions import DataFormatError
from mmfast.data.mmrec import read_feature, read_mmrec
from mmfast.data.synthetic import generate as generate_synthetic


def load(name: str, root: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """The dataset called ``name``.

    With ``root=None`` only ``"synthetic"`` is known: the embedded dataset, generated in
    memory (``kwargs`` go to :func:`mmfast.data.synthetic.generate`, e.g. ``seed``). With a
    ``root``, reads ``<root>/<name>`` in MMRec layout (``kwargs`` go to :func:`read_mmrec`).
    """
    if root is None:
        if name == "synthetic":
            return generate_synthetic(**kwargs)
        raise FileNotFoundError(
            f"mmfast.data.load: no root given and {name!r} is not an embedded dataset; pass "
            "root=<folder holding the MMRec dataset folders>, or use name='synthetic'"
        )
    return read_mmrec(root, name, **kwargs)


def dataset_root(config: Mapping[str, Any]) -> Path | None:
    """Where ``config``'s dataset is read from; None for the embedded synthetic one. Raises
    a ConfigError naming the fix when the folder is missing."""
    name = config["dataset"]
    root = config.get("data_path") or os.environ.get("MMFAST_DATA")
    if name == "synthetic" and (root is None or not (Path(root) / name).is_dir()):
        return None
    if root is None:
        raise ConfigError(
            f"dataset {name!r} needs a data folder: --data-root DIR (holding {name}/{name}.inter) "
            "or $MMFAST_DATA; the embedded dataset is 'synthetic'"
        )
    if not (Path(root) / name).is_dir():
        found = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise ConfigError(
            f"unknown dataset {name!r}: no folder {Path(root) / name}"
            + (f"; {root} holds {', '.join(found)}" if found else f" ({root} has no dataset folders)")
        )
    return Path(root)


def load_dataset(config: Mapping[str, Any]) -> Dataset:
    """The dataset named in ``config``: the embedded synthetic one, or ``<data_path>/<name>``."""
    root = dataset_root(config)
    if root is None:
        ds = load("synthetic", **dict(config.get("synthetic") or {}))
        if config.get("fused_feature") is not None:  # e.g. python -m mmfast.pretrain's output
            try:
                ds.features = {"fused": read_feature(config["fused_feature"], ds.n_items)}
            except DataFormatError as exc:
                raise ConfigError(f"dataset 'synthetic': {exc}") from None
            return ds
        wanted = config.get("modalities")
        if wanted is not None:
            missing = set(wanted) - set(ds.features)
            if missing:
                raise ConfigError(f"synthetic has no {sorted(missing)} features")
            ds.features = {m: ds.features[m] for m in wanted}
        return ds
    kwargs = {k: config.get(k) for k in ("modalities", "feature_dir", "fused_feature")}
    try:
        return load(config["dataset"], root, **{k: v for k, v in kwargs.items() if v is not None})
    except (DataFormatError, FileNotFoundError) as exc:
        raise ConfigError(f"dataset {config['dataset']!r}: {exc}") from None
