"""Helpers for the data-layer tests (a plain module, not a conftest, to stay out of the way)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real datasets: ``$MMFAST_SHARED_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("MMFAST_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def write_folder(root: Path, name: str, inter: str, **features: np.ndarray) -> Path:
    """A dataset folder ``root/name`` with ``name.inter`` holding ``inter`` verbatim."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(inter)
    for m, arr in features.items():
        np.save(folder / f"{m}_feat.npy", arr)
    return folder
