"""Full-ranking evaluation of every user of a split, in batches, without a users x items matrix.

For each batch of users (MMRec's 4096 by default): the top max(ks) items by
:func:`mmfast.ops.topk_scores` with the users' training items excluded (only training items,
as MMRec masks them: when test is evaluated, validation items stay rankable), then
:func:`mmfast.ops.rank_metrics` on the device. Metric sums are combined across batches and
read back once, at the end: with embeddings, a batch reads nothing back from the device (its
CSR sizes come from the host's row pointers, and rows gathered from the validated
Interactions are not checked again).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from mmfast.data.dataset import Dataset, Interactions
from mmfast.ops.csr import expand_rows, gather_rows
from mmfast.ops.metrics import METRICS, rank_metrics
from mmfast.ops.topk import topk_of_scores, topk_scores

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
MMREC_METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


@contextlib.contextmanager
def _small_ops(device: torch.device) -> Iterator[None]:
    """One CPU thread for the bookkeeping (row gathers, metrics on batch x k tensors): these
    ops are too small to gain from threads, and each parallel region waits for every thread,
    which on a shared CPU costs far more than the work itself."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def is_sparse(*tables: torch.Tensor | None) -> bool:
    """Whether any of ``tables`` is a torch sparse matrix (COO or CSR)."""
    return any(isinstance(t, torch.Tensor) and t.layout != torch.strided for t in tables)


def sparse_inner_products(user_emb: torch.Tensor, item_emb: torch.Tensor) -> ScoreFn:
    """``users -> <user_emb[u], item_emb[i]>`` for every item, [len(users), n_items], where
    either table or both may be torch sparse matrices (COO or CSR). For models whose vectors
    are sparse and as wide as the catalogue, e.g. ItemKNNCBF: user u = row u of R, item i =
    column i of S, so the inner product is (R S)_ui. Both sparse: the batch's rows of R times
    S, sparse x sparse, densified; one sparse: a batch's user rows are densified (as large as
    its scores) and multiplied sparse x dense. No users x items or items x items matrix is
    formed beyond one batch's scores."""
    if user_emb.layout != torch.strided:
        user_csr = user_emb.to_sparse_csr() if user_emb.layout != torch.sparse_csr else user_emb
        rowptr, col, val = (user_csr.crow_indices(), user_csr.col_indices(),
                            user_csr.values())
        positions = torch.arange(col.numel(), device=col.device)

        def sparse_user_rows(users: torch.Tensor) -> torch.Tensor:
            out_ptr, pos = gather_rows(rowptr, positions, users.to(rowptr.device))
            with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
                warnings.simplefilter("ignore", UserWarning)
                return torch.sparse_csr_tensor(out_ptr, col[pos], val[pos],
                                               (users.numel(), user_csr.shape[1]))

        if item_emb.layout != torch.strided:
            # Both sparse (ItemKNNCBF: R's rows, S's columns): the batch's scores are the sparse
            # product R[users] S, a few entries a row, densified once.
            items_t = item_emb.to_sparse_coo().t().to_sparse_csr()  # [width, n_items]

            def sparse_score(users: torch.Tensor) -> torch.Tensor:
                return (sparse_user_rows(users) @ items_t).to_dense()

            return sparse_score

        def user_rows(users: torch.Tensor) -> torch.Tensor:
            users = users.to(rowptr.device)
            out_ptr, pos = gather_rows(rowptr, positions, users)
            rows = expand_rows(out_ptr, pos.numel())
            dense = torch.zeros(users.numel(), user_csr.shape[1], dtype=val.dtype,
                                device=val.device)
            return dense.index_put_((rows, col[pos]), val[pos], accumulate=True)
    else:
        def user_rows(users: torch.Tensor) -> torch.Tensor:
            return user_emb[users.to(user_emb.device)]
    if item_emb.layout != torch.strided:
        item_csr = item_emb.to_sparse_csr() if item_emb.layout != torch.sparse_csr else item_emb

        def score(users: torch.Tensor) -> torch.Tensor:
            # Row-major scores: the ranking reads each user's row.
            return torch.sparse.mm(item_csr, user_rows(users).T).T.contiguous()
    else:
        def score(users: torch.Tensor) -> torch.Tensor:
            return user_rows(users) @ item_emb.T
    return score


class Evaluator:
    """Evaluates a model's rankings on a split of ``data`` the way MMRec does.

    ``data`` is a :class:`Dataset` (splits are then named ``"valid"``/``"test"``) or the
    training :class:`Interactions` alone (splits are then passed as Interactions).
    ``decimals`` rounds the returned means as MMRec reports them (``None``: unrounded).
    """

    def __init__(
        self,
        data: Union[Dataset, Interactions],
        *,
        ks: Iterable[int] = (5, 10, 20, 50),
        metrics: Sequence[str] = MMREC_METRICS,
        batch_size: int = 4096,
        backend: str | None = None,
        decimals: int | None = 4,
    ) -> None:
        if isinstance(data, Dataset):
            self.dataset: Optional[Dataset] = data
            self.train = data.train
        elif isinstance(data, Interactions):
            self.dataset, self.train = None, data
        else:
            raise TypeError(
                f"Evaluator: data must be a Dataset or the training Interactions, got "
                f"{type(data).__name__}"
            )
        self.ks = sorted(set([ks] if isinstance(ks, int) else ks))
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                              for k in self.ks):
            raise ValueError(f"Evaluator: ks must be positive ints, got {ks}")
        self.metrics = tuple(metrics)
        if not self.metrics or any(m not in METRICS for m in self.metrics):
            raise ValueError(f"Evaluator: metrics must be a non-empty subset of {METRICS}, "
                             f"got {self.metrics}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Evaluator: batch_size must be a positive int, got {batch_size}")
        self.batch_size = batch_size
        self.backend = backend
        self.decimals = decimals
        self.last_counts: dict[str, int] = {}
        # (id(part), device) -> (part, rowptr, items). Holding ``part`` keeps its id from being
        # reused by another Interactions while its CSR is cached here.
        self._on_device: dict[
            tuple[int, str], tuple[Interactions, torch.Tensor, torch.Tensor]
        ] = {}

    # ------------------------------------------------------------------ public
    def evaluate(
        self,
        split: Union[str, Interactions] = "test",
        user_emb: torch.Tensor | None = None,
        item_emb: torch.Tensor | None = None,
        *,
        score_fn: ScoreFn | None = None,
        users: torch.Tensor | None = None,
        return_topk: bool = False,
    ) -> Union[dict[str, float], tuple[dict[str, float], torch.Tensor, torch.Tensor]]:
        """Metrics ``{"recall@20": ..., "ndcg@10": ..., ...}`` over the users of ``split``.

        Score with ``user_emb`` [n_users, d] and ``item_emb`` [n_items, d] (inner product,
        fused kernel; torch sparse tables are scored by :func:`sparse_inner_products`), or with ``score_fn(user_ids) -> scores [len(user_ids), n_items]`` for
        models that score otherwise (its batch of scores is then masked and ranked in
        PyTorch). ``users`` overrides the evaluated users (default: those present in the
        split, as MMRec); users without held-out items are skipped and counted in
        ``self.last_counts``. With ``return_topk`` also returns the users and their top
        max(ks) item lists [n_users, max(ks)] (index -1 pads users with fewer candidates).
        """
        results, users, topk = self._rank_and_score([split], user_emb, item_emb, score_fn,
                                                    users, return_topk)
        if return_topk:
            return results[0], users, topk
        return results[0]

    def evaluate_splits(
        self,
        splits: Sequence[Union[str, Interactions]],
        user_emb: torch.Tensor | None = None,
        item_emb: torch.Tensor | None = None,
        *,
        score_fn: ScoreFn | None = None,
    ) -> list[dict[str, float]]:
        """The metrics of each split, as :meth:`evaluate` gives them, from one ranking of the
        union of their users: every split masks the same training items, so a user's top-K
        list is the same for valid and test, and it is computed once (the trainer evaluates
        both every epoch). ``self.last_counts`` holds the last split's counts."""
        if isinstance(splits, (str, Interactions)):
            raise TypeError("Evaluator.evaluate_splits: splits must be a sequence of splits")
        results, _, _ = self._rank_and_score(list(splits), user_emb, item_emb, score_fn,
                                             None, False)
        return results

    # ------------------------------------------------------------------ the ranking
    def _rank_and_score(self, splits, user_emb, item_emb, score_fn, users, return_topk):
        truths = [self._split(split) for split in splits]
        if score_fn is None and is_sparse(user_emb, item_emb):
            self._check_embeddings(user_emb, item_emb)
            score_fn, user_emb, item_emb = sparse_inner_products(user_emb, item_emb), None, None
        if (score_fn is None) == (user_emb is None or item_emb is None):
            raise ValueError(
                "Evaluator.evaluate: give either user_emb and item_emb, or score_fn"
            )
        if score_fn is None:
            self._check_embeddings(user_emb, item_emb)
            device = item_emb.device
        else:
            device = None  # the device of the scores score_fn returns
        active = [truth.active_users() for truth in truths]
        if users is None:
            users = active[0] if len(active) == 1 else torch.unique(torch.cat(active))
        users = torch.as_tensor(users, dtype=torch.int64)
        if users.dim() != 1 or (users.numel() and (int(users.min()) < 0
                                                  or int(users.max()) >= self.train.n_users)):
            raise ValueError(
                f"Evaluator.evaluate: users must be a 1-D tensor of ids in [0, "
                f"{self.train.n_users})"
            )
        k_max = max(self.ks)

        sums: list[dict[str, torch.Tensor]] = [{} for _ in truths]
        lists = []
        with torch.no_grad():
            for b0 in range(0, users.numel(), self.batch_size):
                batch = users[b0:b0 + self.batch_size]
                if score_fn is None:
                    batch_dev = batch.to(device)
                    with _small_ops(device):
                        exclude = self._gather(self.train, device, batch, batch_dev)
                    _, idx = topk_scores(user_emb[batch_dev], item_emb, k_max, exclude,
                                         backend=self.backend, validate=False)
                else:
                    scores = score_fn(batch)
                    self._check_scores(scores, batch)
                    device = scores.device
                    batch_dev = batch.to(device)
                    with _small_ops(device):
                        exclude = self._gather(self.train, device, batch, batch_dev)
                    _, idx = topk_of_scores(scores, k_max, exclude, validate=False)
                for truth, split_sums in zip(truths, sums):
                    with _small_ops(device):
                        held_out = self._gather(truth, device, batch, batch_dev)
                        part = rank_metrics(idx, held_out, self.ks, self.metrics,
                                            reduction="sum")
                    for key, value in part.items():
                        split_sums[key] = split_sums[key] + value if key in split_sums else value
                if return_topk:
                    lists.append(idx)

        names = [(i, n) for i, split_sums in enumerate(sums) for n in split_sums]
        flat = torch.stack([sums[i][n].double() for i, n in names]).tolist() if names else []
        host: list[dict[str, float]] = [{} for _ in truths]  # the one device->host read
        for (i, n), value in zip(names, flat):
            host[i][n] = value
        results = []
        for i, split_host in enumerate(host):
            n_users = int(split_host.pop("n_users", 0))
            # Users ranked for another split only are not this split's skipped users.
            n_skipped = int(split_host.pop("n_skipped", 0)) - (users.numel() - active[i].numel()
                                                               if len(truths) > 1 else 0)
            self.last_counts = {"users": n_users, "skipped": n_skipped}
            result = {}
            for m in self.metrics:
                for k in self.ks:
                    key = f"{m}@{k}"
                    value = split_host[key] / n_users if n_users else float("nan")
                    result[key] = round(value, self.decimals) if self.decimals is not None else value
            results.append(result)
        topk = None
        if return_topk:
            topk = torch.cat(lists) if lists else torch.empty(0, k_max, dtype=torch.int64)
        return results, users, topk

    # ------------------------------------------------------------------ internals
    def _split(self, split: Union[str, Interactions]) -> Interactions:
        if isinstance(split, Interactions):
            truth = split
        elif isinstance(split, str):
            if self.dataset is None:
                raise ValueError(
                    "Evaluator.evaluate: this evaluator was built from Interactions; pass the "
                    "split's Interactions, not a name"
                )
            truth = self.dataset.split(split)
        else:
            raise TypeError(f"Evaluator.evaluate: split must be a name or Interactions, got "
                            f"{type(split).__name__}")
        if truth.n_users != self.train.n_users or truth.n_items != self.train.n_items:
            raise ValueError(
                f"Evaluator.evaluate: the split has {truth.n_users} users x {truth.n_items} "
                f"items but train has {self.train.n_users} x {self.train.n_items}"
            )
        return truth

    def _gather(self, part: Interactions, device: torch.device, batch: torch.Tensor,
                batch_dev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows ``batch`` of ``part`` as a CSR on ``device``; its size is counted on the
        host copy of the row pointers (``part.rowptr`` stays on the CPU), not read back."""
        total = None
        if part.rowptr.device.type == "cpu" and batch.device.type == "cpu":
            rowptr, rows = part.rowptr.numpy(), batch.numpy()
            total = int((rowptr[rows + 1] - rowptr[rows]).sum())
        return gather_rows(*self._rows_on(part, device), batch_dev, total)

    def _rows_on(
        self, part: Interactions, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``part``'s CSR on ``device``, moved once and kept."""
        key = (id(part), str(device))
        if key not in self._on_device:
            col_dtype = torch.int32 if part.n_items < 2**31 else torch.int64
            self._on_device[key] = (
                part, part.rowptr.to(device), part.items.to(device, col_dtype)
            )
        return self._on_device[key][1:]

    def _check_embeddings(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        for name, x, rows in (("user_emb", user_emb, self.train.n_users),
                              ("item_emb", item_emb, self.train.n_items)):
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != rows:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"Evaluator.evaluate: {name} must be a 2-D tensor with {rows} rows, got {shape}"
                )
        if user_emb.device != item_emb.device:
            raise ValueError(
                f"Evaluator.evaluate: user_emb is on {user_emb.device} but item_emb is on "
                f"{item_emb.device}"
            )

    def _check_scores(self, scores: torch.Tensor, batch: torch.Tensor) -> None:
        want = (batch.numel(), self.train.n_items)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != want:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"Evaluator.evaluate: score_fn must return scores of shape {want}, "
                             f"got {got}")
