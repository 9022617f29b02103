"""Raw interactions -> an MMRec dataset folder (5-core, MMRec's seeded split, id maps).

    python -m mmfast.data.prepare --input ../shared/data/ml100k/ml-100k.inter \\
        --name ml100k --out data/

reads a tab-separated table with a header (RecBole atomic ``.inter`` files work as they are:
``user_id:token item_id:token rating:float timestamp:float``), keeps the first row of each
repeated (user, item) pair, applies the k-core filter, gives users and items contiguous ids,
splits each user's rows by MMRec's rule and writes ``<out>/<name>/<name>.inter`` with
``u_id_mapping.csv`` and ``i_id_mapping.csv`` (original id -> new id, tab-separated, as in
MMRec's folders).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from mmfast._atomic import atomic_write_text
from mmfast.data.mmrec import read_mmrec
from mmfast.data.split import k_core, mmrec_split, remap_ids
from mmfast.data.tables import as_ids, column, read_table


def _fmt(values: np.ndarray) -> list[str]:
    # Keep integral numbers (ratings, unix times) free of a trailing ".0".
    if np.all(values == np.floor(values)):
        return [str(v) for v in values.astype(np.int64).tolist()]
    return [repr(v) for v in values.tolist()]


def prepare(
    input_path: str | os.PathLike,
    out_root: str | os.PathLike,
    name: str,
    *,
    user_column: str = "user_id",
    item_column: str = "item_id",
    rating_column: str | None = "rating",
    timestamp_column: str | None = "timestamp",
    min_rating: float | None = None,
    k: int = 5,
    seed: int = 999,
) -> Path:
    """Write ``<out_root>/<name>`` in MMRec layout from a raw interaction table; returns it."""
    table = read_table(input_path)
    raw_u = column(table, user_column, input_path)
    raw_i = column(table, item_column, input_path)
    extra: dict[str, np.ndarray] = {}
    for out_name, col in (("rating", rating_column), ("timestamp", timestamp_column)):
        if col and col in table:
            try:
                extra[out_name] = table[col].astype(np.float64)
            except ValueError:
                bad = next(n for n, v in enumerate(table[col]) if not _is_number(v))
                raise ValueError(
                    f"{input_path}: line {bad + 2}: column {col} must be a number, "
                    f"got {table[col][bad]!r}"
                ) from None
    uid, u_orig = as_ids(raw_u)
    iid, i_orig = as_ids(raw_i)

    keep = np.ones(uid.size, dtype=bool)
    if min_rating is not None:
        if "rating" not in extra:
            raise ValueError(f"{input_path}: --min-rating needs a {rating_column!r} column")
        keep &= extra["rating"] >= min_rating
    _, first = np.unique(uid * (i_orig.size + 1) + iid, return_index=True)
    dup = np.ones(uid.size, dtype=bool)
    dup[first] = False
    if dup.any():
        warnings.warn(f"{input_path}: {int(dup.sum())} repeated (user, item) rows; keeping the "
                      "first of each", stacklevel=2)
    keep &= ~dup
    rows = np.flatnonzero(keep)
    rows = rows[k_core(uid[rows], iid[rows], k)]
    if rows.size == 0:
        raise ValueError(f"{input_path}: nothing is left after the {k}-core filter")

    users, u_kept = remap_ids(uid[rows])
    items, i_kept = remap_ids(iid[rows])
    labels = mmrec_split(users, seed=seed)
    order = np.lexsort((items, users))  # one block per user, like MMRec's files

    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    cols = [("userID", users.tolist()), ("itemID", items.tolist())]
    cols += [(c, _fmt(v[rows])) for c, v in extra.items()]
    cols.append(("x_label", labels.tolist()))
    header = "\t".join(c for c, _ in cols)
    lines = ["\t".join(str(col[1][r]) for col in cols) for r in order.tolist()]
    atomic_write_text(folder / f"{name}.inter", header + "\n" + "\n".join(lines) + "\n")
    for fname, col, new_col, originals, kept in (
        ("u_id_mapping.csv", user_column, "userID", u_orig, u_kept),
        ("i_id_mapping.csv", item_column, "itemID", i_orig, i_kept),
    ):
        body = "\n".join(f"{o}\t{n}" for n, o in enumerate(originals[kept].tolist()))
        atomic_write_text(folder / fname, f"{col}\t{new_col}\n{body}\n")
    return folder


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmfast.data.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="raw interaction table (TSV with a header)")
    ap.add_argument("--out", required=True, help="root folder; the dataset goes to <out>/<name>")
    ap.add_argument("--name", required=True, help="dataset name")
    ap.add_argument("--user-column", default="user_id")
    ap.add_argument("--item-column", default="item_id")
    ap.add_argument("--rating-column", default="rating")
    ap.add_argument("--timestamp-column", default="timestamp")
    ap.add_argument("--min-rating", type=float, default=None,
                    help="drop rows rated below this (default: keep all)")
    ap.add_argument("--k", type=int, default=5, help="k-core threshold (default 5)")
    ap.add_argument("--seed", type=int, default=999, help="split seed (default 999, MMRec's)")
    args = ap.parse_args(argv)
    folder = prepare(
        args.input, args.out, args.name, user_column=args.user_column,
        item_column=args.item_column, rating_column=args.rating_column,
        timestamp_column=args.timestamp_column, min_rating=args.min_rating, k=args.k,
        seed=args.seed,
    )
    print(read_mmrec(args.out, args.name))
    print(f"\nwrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
