"""ItemKNNCBF (content-based item kNN, as in Dacrema et al., RecSys'19) as MMRec runs it: nothing
to train, one pass that builds the item-item scorer from the item features, then one evaluation.

Scorer: the features of the two roles concatenated, x_i = [x_i^visual ‖ x_i^textual] (TikTok's
audio plays the textual role; one modality alone is used as is); S keeps, for each item a, its
``knn_k`` items b of largest shrunk cosine s_ab = <x_a, x_b> / (||x_a|| ||x_b|| + ``shrink``)
with that value (the item itself included, as MMRec keeps it). Score of (u, i) = (R S)_ui, R the
binary training interactions.

Full ranking: the score is an inner product, of vectors as wide as the catalogue. ``embeddings()``
returns them as torch sparse CSR matrices: user u = row u of R [n_users, n_items], item i = row i
of S^T [n_items, n_items] (column i of S), so <R_u, (S^T)_i> = (R S)_ui. The evaluator and
``mmfast.recommend`` score a batch of users from sparse tables by one sparse x dense product
(:func:`mmfast.eval.evaluator.sparse_inner_products`), then rank as for any score matrix: no dense
users x items or items x items matrix is ever formed (S is built in row blocks by
:func:`mmfast.data.knn.shrunk_knn_graph`, O(n_items x k) memory, cached on disk). Dense
k-sparse vectors would cost n_items^2 floats (200 MB on Baby, 16 GB on Elec).

Reference: Maurizio Ferrari Dacrema, Paolo Cremonesi and Dietmar Jannach. "Are We Really Making
Much Progress? A Worrying Analysis of Recent Neural Recommendation Approaches." RecSys 2019.

Differences from MMRec: none in the scores. MMRec holds a 2-element dummy parameter (never
used) and the dense R S matrix; here there are no parameters and no dense matrix. A zero feature
row with ``shrink: 0`` gets similarity 0 where MMRec divides 0 by 0 (NaN). Ties in the top-k
go to the smaller item index (torch.topk leaves them unspecified).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from mmfast.data.dataset import Dataset
from mmfast.data.knn import shrunk_knn_graph
from mmfast.eval.evaluator import sparse_inner_products
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn.features import check_features
from mmfast.nn.roles import image_text_roles
from mmfast.ops import SparseGraph


@register()
class ItemKNNCBF(Recommender):
    """Content-based item kNN. Config: ``knn_k``, ``shrink``."""

    trains: ClassVar[bool] = False
    uses_negatives: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.knn_k = int(config["knn_k"])
        self.shrink = float(config["shrink"])
        self.modalities = image_text_roles(dataset.modalities, "ItemKNNCBF")
        raw = {m: dataset.feature(m).float() for m in self.modalities}
        check_features(raw, "ItemKNNCBF")
        features = torch.cat([raw[m] for m in self.modalities], dim=1)
        # S [n_items, n_items], k entries a row (frozen, cached on disk).
        self.sim = shrunk_knn_graph(features, self.knn_k, self.shrink, device=self.device)
        train = dataset.train
        col = train.items.to(torch.int32 if train.n_items < 2**31 else torch.int64)
        # R [n_users, n_items], binary.
        self.interactions = SparseGraph(
            train.rowptr.clone(), col, torch.ones(col.numel()), (self.n_users, self.n_items)
        ).to(self.device)

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        # Nothing to train (trains = False); MMRec's loss is a constant 0.
        return torch.zeros((), device=self.device)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, S^T) as torch sparse CSR matrices: <R_u, (S^T)_i> = (R S)_ui."""
        return self.interactions.to_torch(), self.sim.T.to_torch()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """(R S)[users] [len(users), n_items], dense (MMRec's ``full_sort_predict``)."""
        return sparse_inner_products(*self.embeddings())(users)
