"""Reader and writer for MMRec's dataset layout.

``<root>/<name>/<name>.inter`` is tab-separated with a header naming the columns
(``userID itemID x_label`` required, ``rating timestamp`` optional, any order), and item
features sit beside it as ``<modality>_feat.npy`` (rows = items). Parsing is vectorized:
the whole file is converted by one ``np.fromstring`` call after byte-level checks; a slow
line-by-line pass runs only to explain a file that failed those checks.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from mmfast._atomic import atomic_write, atomic_write_text
from mmfast.data.dataset import SPLITS, DataFormatError, Dataset, Interactions

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
OPTIONAL_COLUMNS = ("rating", "timestamp")
_INT_COLUMNS = ("userID", "itemID", "x_label")

# Bytes that may appear in an integer column: digits and a sign (negatives get their own error).
_INT_BYTES = np.zeros(256, dtype=bool)
_INT_BYTES[[ord(c) for c in "0123456789-+"]] = True


@dataclass
class InterTable:
    """The validated columns of an ``.inter`` file, one entry per data line, in file order."""

    path: Path
    users: np.ndarray  # int64
    items: np.ndarray  # int64
    labels: np.ndarray  # int64 in {0, 1, 2}
    ratings: np.ndarray | None = None  # float64
    timestamps: np.ndarray | None = None  # float64

    def __len__(self) -> int:
        return self.users.size


def _parse_header(path: Path, line: bytes) -> list[str]:
    names = [c.strip() for c in line.decode("utf-8", errors="replace").split("\t")]
    # RecBole writes "userID:token"; the type suffix carries no information here.
    names = [n.split(":", 1)[0] for n in names]
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    expected = (
        f"expected tab-separated column names {', '.join(REQUIRED_COLUMNS)} "
        f"and optionally {', '.join(OPTIONAL_COLUMNS)}"
    )
    for n in names:
        if n not in allowed:
            raise DataFormatError(f"{path}: line 1 (header): unexpected column {n!r}; {expected}")
    for n in set(names):
        if names.count(n) > 1:
            raise DataFormatError(f"{path}: line 1 (header): column {n!r} appears twice")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise DataFormatError(
            f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; {expected}; "
            f"got {names}"
        )
    return names


def _explain(path: Path, body: bytes, names: list[str]) -> DataFormatError:
    """Find the first bad line the slow way (only after the fast checks failed)."""
    ncols = len(names)
    for n, raw in enumerate(body.split(b"\n"), start=2):
        fields = raw.decode("utf-8", errors="replace").split("\t")
        if len(fields) != ncols:
            return DataFormatError(
                f"{path}: line {n}: expected {ncols} tab-separated columns "
                f"({', '.join(names)}), got {len(fields)}: {raw[:80]!r}"
            )
        for name, tok in zip(names, fields):
            tok = tok.strip()
            if name in _INT_COLUMNS:
                try:
                    int(tok)
                except ValueError:
                    return DataFormatError(
                        f"{path}: line {n}: column {name} must be an integer, got {tok!r}"
                    )
            else:
                try:
                    ok = math.isfinite(float(tok))
                except ValueError:
                    ok = False
                if not ok:
                    return DataFormatError(
                        f"{path}: line {n}: column {name} must be a finite number, got {tok!r}"
                    )
    return DataFormatError(f"{path}: could not be parsed as a tab-separated table of numbers")


def read_inter(path: str | os.PathLike) -> InterTable:
    """Read and validate one ``.inter`` file. Raises :class:`DataFormatError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: interaction file not found")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark from some editors
        data = data[3:]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    head_end = data.find(b"\n")
    header = data if head_end < 0 else data[:head_end]
    if not header.strip():
        raise DataFormatError(f"{path}: line 1: empty; expected a header naming the columns")
    names = _parse_header(path, header)
    ncols = len(names)
    body = b"" if head_end < 0 else data[head_end + 1:].rstrip(b"\n")
    if not body:
        raise DataFormatError(f"{path}: no data lines after the header")

    buf = np.frombuffer(body, dtype=np.uint8)
    line_ends = np.append(np.flatnonzero(buf == 10), buf.size)
    n_lines = line_ends.size
    # Columns per line = tabs inside it + 1, from tab positions and line ends.
    tabs = np.flatnonzero(buf == 9)
    tabs_per_line = np.diff(np.searchsorted(tabs, line_ends), prepend=0)
    bad = np.flatnonzero(tabs_per_line != ncols - 1)
    if bad.size:
        raise _explain(path, body, names)

    # Integer columns may hold only digits and signs; locate any other byte by column.
    odd = np.flatnonzero(~_INT_BYTES[buf] & (buf != 9) & (buf != 10) & (buf != 32))
    if odd.size:
        line_of = np.searchsorted(line_ends, odd)
        line_start_tabs = np.searchsorted(tabs, np.where(line_of > 0, line_ends[line_of - 1], -1))
        col_of = np.searchsorted(tabs, odd) - line_start_tabs
        int_cols = np.array([n in _INT_COLUMNS for n in names])
        if int_cols[col_of].any():
            raise _explain(path, body, names)

    # Integer parsing is several times faster than float; use it when no float column exists.
    all_int = all(n in _INT_COLUMNS for n in names)
    try:
        flat = np.fromstring(body.replace(b"\n", b"\t").decode("ascii", "replace"),
                             dtype=np.int64 if all_int else np.float64, sep="\t")
    except ValueError:
        raise _explain(path, body, names) from None
    if flat.size != n_lines * ncols or not (all_int or np.isfinite(flat).all()):
        raise _explain(path, body, names)
    table = flat.reshape(n_lines, ncols)
    cols = {n: table[:, k] for k, n in enumerate(names)}

    for n in _INT_COLUMNS:
        c = cols[n]
        if n != "x_label" and (c < 0).any():
            row = int(np.argmax(c < 0))
            raise DataFormatError(
                f"{path}: line {row + 2}: {n} must be a non-negative integer id, got {int(c[row])}"
            )
    lab = cols["x_label"]
    bad_lab = (lab != 0) & (lab != 1) & (lab != 2)
    if bad_lab.any():
        row = int(np.argmax(bad_lab))
        raise DataFormatError(
            f"{path}: line {row + 2}: x_label must be 0 (train), 1 (valid) or 2 (test), "
            f"got {int(lab[row])}"
        )
    return InterTable(
        path=path,
        users=cols["userID"].astype(np.int64),
        items=cols["itemID"].astype(np.int64),
        labels=lab.astype(np.int64),
        ratings=None if "rating" not in cols else cols["rating"].astype(np.float64),
        timestamps=None if "timestamp" not in cols else cols["timestamp"].astype(np.float64),
    )


def _check_finite(path: Path, arr: np.ndarray, chunk: int = 4096) -> None:
    # Row blocks keep the temporary mask small for multi-GB feature files.
    for start in range(0, arr.shape[0], chunk):
        ok = np.isfinite(arr[start:start + chunk]).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            raise DataFormatError(f"{path}: row {row} (item {row}) holds NaN or infinite values")


def read_feature(path: str | os.PathLike, n_items: int) -> np.ndarray:
    """Load one ``[n_items, d]`` feature file as float32, memory-mapped when already float32."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: feature file not found")
    try:
        # Copy-on-write map: pages are shared with the file until someone writes to them.
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as exc:  # a non-.npy file raises several kinds of errors
        raise DataFormatError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.ndim != 2:
        raise DataFormatError(
            f"{path}: expected a 2-D array [n_items, dim], got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] != n_items:
        raise DataFormatError(
            f"{path}: expected one row per item ({n_items} rows, from the largest itemID + 1), "
            f"got {arr.shape[0]} rows"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(f"{path}: expected floating-point features, got dtype {arr.dtype}")
    if arr.dtype != np.float32:
        arr = np.ascontiguousarray(arr, dtype=np.float32)  # the one copy a conversion needs
    _check_finite(path, arr)
    return arr


def discover_features(folder: str | os.PathLike) -> dict[str, Path]:
    """``<modality>_feat.npy`` files in ``folder``, by modality name (sorted)."""
    folder = Path(folder)
    found = sorted(folder.glob("*_feat.npy")) if folder.is_dir() else []
    return {p.name[: -len("_feat.npy")]: p for p in found}


def build_dataset(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    features: dict[str, np.ndarray] | None = None,
    source: Path | None = None,
    where: str | None = None,
) -> Dataset:
    """Rows (user, item, x_label) -> :class:`Dataset`, with MMRec's load-time rules.

    Repeated (user, item) pairs keep their first row and raise a warning with the count;
    valid/test rows of users absent from train are dropped (MMRec's
    ``filter_out_cod_start_users``) with a warning; an empty split is an error.
    """
    where = where or name
    users, items, labels = (np.asarray(a, dtype=np.int64) for a in (users, items, labels))
    n_users = int(users.max()) + 1 if n_users is None else n_users
    n_items = int(items.max()) + 1 if n_items is None else n_items

    key = users * n_items + items
    _, first = np.unique(key, return_index=True)
    n_dup = users.size - first.size
    if n_dup:
        first.sort()
        dup_mask = np.ones(users.size, dtype=bool)
        dup_mask[first] = False
        example = int(np.argmax(dup_mask))
        warnings.warn(
            f"{where}: {n_dup} duplicate (user, item) row(s) (first at data row {example + 1}, "
            f"user {users[example]}, item {items[example]}); keeping the first occurrence of each",
            stacklevel=3,
        )
        users, items, labels = users[first], items[first], labels[first]

    features = dict(features or {})
    for m, arr in features.items():
        if arr.ndim != 2 or arr.shape[0] != n_items or arr.dtype != np.float32:
            raise DataFormatError(
                f"{where}: features {m!r} must be float32 [n_items={n_items}, d], got "
                f"{arr.dtype} {tuple(arr.shape)}"
            )

    parts: dict[str, Interactions] = {}
    dropped: dict[str, Interactions] = {}
    in_train = np.zeros(n_users, dtype=bool)
    in_train[users[labels == 0]] = True
    for code, split in enumerate(SPLITS):
        sel = labels == code
        if not sel.any():
            raise DataFormatError(
                f"{where}: the {split} split is empty (no rows with x_label = {code}); "
                "MMRec needs train, valid and test rows"
            )
        if code:
            keep = sel & in_train[users]
            gone = sel & ~keep
            if gone.any():
                dropped[split] = Interactions.from_pairs(users[gone], items[gone], n_users, n_items)
            if not keep.any():
                raise DataFormatError(
                    f"{where}: the {split} split is empty after dropping users absent from train"
                )
            sel = keep
        parts[split] = Interactions.from_pairs(users[sel], items[sel], n_users, n_items)
    if dropped:
        warnings.warn(
            f"{where}: dropped cold-start rows (user absent from train): "
            + ", ".join(f"{k} {len(v)}" for k, v in dropped.items()),
            stacklevel=3,
        )
    return Dataset(
        name=name, n_users=n_users, n_items=n_items, features=features,
        source=source, cold_start=dropped, **parts,
    )


def read_mmrec(
    root: str | os.PathLike,
    name: str,
    *,
    modalities: Iterable[str] | None = None,
    feature_dir: str | os.PathLike | None = None,
    fused_feature: str | os.PathLike | None = None,
) -> Dataset:
    """Read ``<root>/<name>`` in MMRec layout.

    ``modalities``: which ``<m>_feat.npy`` to load (default: every one found; a name listed
    here must exist). ``feature_dir``: where to look for them (default: the dataset folder;
    MMRec's ``multimodal_data_dir``). ``fused_feature``: one ``.npy`` holding a single fused
    feature per item (AlignRec's 768-d file); it becomes modality ``"fused"`` and replaces
    the per-modality files.
    """
    folder = Path(root) / name
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: dataset folder not found")
    table = read_inter(folder / f"{name}.inter")
    n_users = int(table.users.max()) + 1
    n_items = int(table.items.max()) + 1

    features: dict[str, np.ndarray] = {}
    if fused_feature is not None:
        features["fused"] = read_feature(fused_feature, n_items)
    else:
        fdir = Path(feature_dir) if feature_dir is not None else folder
        found = discover_features(fdir)
        wanted = list(found) if modalities is None else list(modalities)
        for m in wanted:
            features[m] = read_feature(found.get(m, fdir / f"{m}_feat.npy"), n_items)
    return build_dataset(
        name, table.users, table.items, table.labels, n_users=n_users, n_items=n_items,
        features=features, source=folder, where=str(table.path),
    )


def write_mmrec(dataset: Dataset, root: str | os.PathLike, name: str | None = None) -> Path:
    """Write ``dataset`` as ``<root>/<name>/<name>.inter`` + ``<m>_feat.npy``; returns the folder."""
    name = name or dataset.name
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    cols = []
    for code, split in enumerate(SPLITS):
        part = dataset.split(split)
        u = part.users().numpy()
        cols.append(np.stack([u, part.items.numpy(), np.full(u.size, code)], axis=1))
    rows = np.concatenate(cols)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]  # by user, then item, like MMRec's files
    text = "\n".join("\t".join(map(str, r)) for r in rows.tolist())
    atomic_write_text(folder / f"{name}.inter", f"userID\titemID\tx_label\n{text}\n")
    for m, arr in dataset.features.items():
        atomic_write(folder / f"{m}_feat.npy",
                     lambda fh, arr=arr: np.save(fh, np.asarray(arr, dtype=np.float32)))
    return folder
