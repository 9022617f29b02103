"""Small readers for raw tab-separated tables (RecBole atomic files, id maps, item text)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmfast.data.interactions import DataFormatError


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A tab-separated file with a header -> column name -> array of strings.

    RecBole's ``name:type`` headers are reduced to ``name``. Every line must have as many
    fields as the header; errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    lines = text.rstrip("\n").split("\n")
    if not lines or not lines[0].strip():
        raise DataFormatError(f"{path}: line 1: empty; expected a header naming the columns")
    names = [h.strip().split(":", 1)[0] for h in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:]]
    widths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(widths != len(names))
    if bad.size:
        n = int(bad[0])
        raise DataFormatError(
            f"{path}: line {n + 2}: expected {len(names)} tab-separated fields "
            f"({', '.join(names)}), got {widths[n]}"
        )
    if not rows:
        return {n: np.array([], dtype=str) for n in names}
    cells = np.array(rows, dtype=str)
    return {n: cells[:, k] for k, n in enumerate(names)}


def column(table: dict[str, np.ndarray], name: str, path: str | os.PathLike) -> np.ndarray:
    if name not in table:
        raise DataFormatError(f"{path}: no column {name!r}; columns are {list(table)}")
    return table[name]


def as_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens -> contiguous 0-based ids: (ids, originals). Numeric tokens sort numerically."""
    try:
        keys = values.astype(np.int64)
    except ValueError:
        keys = values
    originals, ids = np.unique(keys, return_inverse=True)
    return ids.astype(np.int64), originals
