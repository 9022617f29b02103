"""``python -m mmfast.recommend --run RUN_DIR --user ID [--k 10]``: top-K items from a saved model.

Scores every item for the user with the run's best model (``best.pt``) and returns the k
highest, excluding the user's training items (as evaluation does). ``--users FILE`` reads
one user id per line. Output: tab-separated ``userID rank itemID score`` lines.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from mmfast import _ext, models
from mmfast.data import Dataset, load_dataset
from mmfast.eval.evaluator import is_sparse, sparse_inner_products
from mmfast.models.base import Recommender
from mmfast.ops import topk_scores, use_backend
from mmfast.ops.csr import gather_rows
from mmfast.ops.topk import topk_of_scores
from mmfast.trainer.experiment import resolve_device
from mmfast.train import import_models


def load_run(
    run_dir: str | Path, device: str = "cpu", data_root: str | None = None
) -> tuple[Recommender, Dataset]:
    """The best model of a run folder, on ``device``, with the dataset it was trained on
    (read from ``data_root`` when given, else from where the run read it)."""
    run_dir = Path(run_dir)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no best.pt (not a run folder, or the run never finished an evaluation)"
        )
    payload = torch.load(best, map_location="cpu", weights_only=False)
    config = dict(payload["config"])
    if data_root is not None:
        config["data_path"] = data_root
    dev = resolve_device(device)
    dataset = load_dataset(config)
    with use_backend(config.get("backend", "mmfast")):
        model = models.get(payload["model_name"])(config, dataset, dev)
    model.load_state_dict(payload["model"])
    model.to(dev).eval()
    return model, dataset


@torch.no_grad()
def recommend(
    model: Recommender, dataset: Dataset, users: torch.Tensor, k: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, item ids), each [len(users), k], excluding each user's training items; rows
    with fewer than k candidates are padded with -inf / -1."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    users = torch.as_tensor(users, dtype=torch.int64)
    bad = users[(users < 0) | (users >= dataset.n_users)]
    if bad.numel():
        raise ValueError(f"user ids out of range [0, {dataset.n_users}): {bad[:10].tolist()}")
    user_vecs, item_vecs = model.embeddings()
    train = dataset.train
    # Each requested user's training items as a CSR with one row per query.
    rowptr, col = gather_rows(train.rowptr, train.items, users)
    dev = user_vecs.device
    if is_sparse(user_vecs, item_vecs):  # sparse vectors (ItemKNNCBF): score, then rank
        scores = sparse_inner_products(user_vecs, item_vecs)(users)
        return topk_of_scores(scores, k, exclude=(rowptr.to(scores.device), col.to(scores.device)))
    return topk_scores(user_vecs[users.to(dev)], item_vecs, k, exclude=(rowptr.to(dev), col.to(dev)))


def _read_users(path: str) -> list[int]:
    users = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            users.append(int(line))
        except ValueError:
            raise ValueError(f"{path}:{n}: expected a user id (integer), got {line!r}") from None
    return users


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmfast.recommend",
        description="Top-K items for users from a trained run (training items excluded).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder with best.pt")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, default=None, help="one user id")
    who.add_argument("--users", default=None, metavar="FILE", help="file of user ids, one a line")
    p.add_argument("--k", type=int, default=10, help="items per user")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers the run's model (repeatable), as the "
                   "run was trained with")
    p.add_argument("--data-root", default=None,
                   help="where the run's dataset folder is now (default: where it was trained)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import_models(parser, args.imports)
    try:
        users = [args.user] if args.user is not None else _read_users(args.users)
        model, dataset = load_run(args.run, args.device, args.data_root)
        scores, items = recommend(model, dataset, torch.tensor(users, dtype=torch.int64), args.k)
    except (FileNotFoundError, ValueError, _ext.KernelsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = ["userID\trank\titemID\tscore"]
    for u, row_s, row_i in zip(users, scores.tolist(), items.tolist()):
        out += [f"{u}\t{r}\t{i}\t{s:.6f}" for r, (s, i) in enumerate(zip(row_s, row_i), 1) if i >= 0]
    try:
        print("\n".join(out), flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
