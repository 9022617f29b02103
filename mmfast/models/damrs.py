"""DAMRS (DA-MRS, Xv et al., KDD'24) as MMRec trains it: a LightGCN ID line plus three item-item
graphs over the item ID embeddings (denoised visual and textual kNN graphs and the item-item
behaviour "session" graph), trained with a denoised BPR, neighbour discrimination and a KL
alignment of user preferences.

Graphs (frozen, built once and cached on disk): Â of the training split; the visual and
textual graphs S_v, S_t of :mod:`mmfast.data.consensus_knn` (a pair survives only when both
modalities' cosine similarities are above their mean, then top ``knn_k`` per item); the session
graph S_s of :mod:`mmfast.data.item_behavior_graph` (each item with itself and its top 2
co-interacted items, pairs with >= 2 common users: the authors' ``item_graph_dict_2.npy``, read
from the dataset folder when present).

Forward: [u; i] = mean of layers 0..L_ui of Â [e_user; e_item]; h_m = S_m^{L_mm} e_item for
m in (t, v, s) (last layer); the item vector is i + (h_t + h_v + h_s) / 3, the user vector u.

Loss on a batch (users, positives, negatives), I the distinct batch items, U the distinct users:
- denoised BPR (L_DB): -mean[w+ log σ(d) + w- log σ(-d)], d = <u, i⁺> - <u, i⁻> on the item
  vectors; with p_m = σ(<u, ĥ_m(i⁺)>) (ĥ: L2-normalized) over m in (t, s, v), w+ =
  clamp(mean_m p_m · exp(-var_m p_m)², 0, 1) (unbiased variance), and w- = clamp(max_m p_m - n̄,
  0, 1) where mean_m p_m < n̄ (else 0), n̄ the mean of σ(<u, ĥ_m(i⁻)>) over the whole batch and
  the three lines; both weights are constants (no gradient).
- neighbour discrimination (L_AI), per graph m: c_ab = cos(h_m[a], h_m[b]) for a in I, b all
  items; P_m = softmax_b(c). The multi-modal positives M(a) are the top ``pseudo_positives``
  (10) of P_o1 + P_o2 + 2 P_m (o1, o2 the other two graphs, in MMRec's order), the single-modal
  ones S(a) the top 10 of P_m outside M(a); with E = exp(c / τ) (τ = 0.2),
  ℓ_a = -log(Σ_M E / Σ_all E + 1e-9) - log(Σ_S E / (Σ_all E - Σ_M E) + 1e-9); L_AI is the mean
  over I, averaged over the three graphs.
- alignment (L_AU): x_g = <u_a, î_b>, x_m = <u_a, ĥ(b)> with ĥ the normalized (h_t + h_s + h_v)/3,
  for a in U, b in I; mean of KL(σ(x_g) || σ(x_m)) + KL(σ(x_m) || σ(x_g)) (Bernoulli).
Total: L_DB + ``neighbor_weight`` L_AI + ``kl_weight`` L_AU.

Reference: Guipeng Xv, Xinyu Li, Ruobing Xie, Chen Lin, Chong Liu, Feng Xia, Zhanhui Kang, Leyu
Lin. "Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content
and User Feedback." KDD 2024. Code: github.com/XMUDM/DA-MRS.

MMRec quirks, each the default and a switch: ``session_weighted: false`` (the session graph is
built from ones; its co-interaction counts are read and dropped); ``pseudo_positives: 10`` and
``neighbor_temperature: 0.2`` are MMRec's constants.

The neighbour discrimination runs in row blocks (:mod:`mmfast.nn.neighbor_discrimination`):
each block's three similarity rows are selected and differentiated in cache and no [batch
items, n_items] matrix is kept for the backward pass (a TikTok step 1.5 s -> 0.7 s at one
thread); ``--backend torch`` runs MMRec's dense form.

Differences from MMRec: on a GPU the distinct users and items of a batch are not gathered with
``torch.unique`` (a host sync): each batch position carries a weight, 1 at an id's first
occurrence and 0 at its repeats, so the means over U and I are the same numbers (the dense
[batch items, n_items] similarity matrices of L_AI then have 2 x batch rows where MMRec's have the
distinct items': up to ~1.3x the work and memory on TikTok-sized data); on the CPU, where a
unique syncs nothing, they are gathered as MMRec gathers them; the symmetric
Bernoulli KL is computed in the equal closed form (σ(x_g) - σ(x_m)) (x_g - x_m) and the BPR terms
with logsigmoid (MMRec's log(σ) forms give NaN / -inf once a probability saturates); the mean
similarity that gates the kNN graphs is computed exactly (MMRec: a float32 mean of the n x n
matrix); a zero feature row gets no neighbours instead of NaN; the unused ``image_trs`` /
``text_trs`` linear layers are not created (they never receive gradients); Â has no 1e-7 on the
degrees (as every mmfast LightGCN line).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mmfast.data.consensus_knn import consensus_knn_graphs
from mmfast.data.dataset import Dataset
from mmfast.data.item_behavior_graph import dataset_item_graph, session_adjacency
from mmfast.models.base import Recommender
from mmfast.models.registry import register
from mmfast.nn import LightGCNEmbeddings, check_features
from mmfast.nn.neighbor_discrimination import neighbor_discrimination
from mmfast.nn.roles import visual_textual
from mmfast.ops import propagate, select_rows


def first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Per position of ``ids``, 1.0 at the first occurrence of its value and 0.0 at repeats
    (the distinct ids of ``torch.unique`` as weights, with no data-dependent shape)."""
    order = torch.sort(ids, stable=True).indices
    ranked = ids[order]
    first = torch.ones_like(ranked, dtype=torch.bool)
    first[1:] = ranked[1:] != ranked[:-1]
    return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device).scatter_(
        0, order, first.float())


@register()
class DAMRS(Recommender):
    """DA-MRS on LightGCN. Config: see ``configs/model/DAMRS.yaml``."""

    # Devices where the batch's distinct ids are gathered with torch.unique (no sync there).
    unique_on: tuple[str, ...] = ("cpu",)

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        visual, textual = visual_textual(dataset.modalities, "DAMRS", need_both=True)
        raw = {m: dataset.feature(m).float() for m in (visual, textual)}
        check_features(raw, "DAMRS")
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.kl_weight = float(config["kl_weight"])
        self.neighbor_weight = float(config["neighbor_weight"])
        self.n_pseudo = min(int(config["pseudo_positives"]), self.n_items)
        self.temperature = float(config["neighbor_temperature"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, int(config["embedding_size"]))
        self.adj = dataset.norm_adj().to(self.device)
        image_adj, text_adj = consensus_knn_graphs(raw[visual], raw[textual],
                                                   int(config["knn_k"]))
        self.image_adj, self.text_adj = image_adj.to(self.device), text_adj.to(self.device)
        graph, self.item_graph_source = dataset_item_graph(
            dataset, config.get("item_graph_dict_file") or None,
            topk=int(config["item_graph_topk"]), min_count=int(config["item_graph_min_count"]))
        self.session_adj = session_adjacency(
            graph, weighted=bool(config["session_weighted"])).to(self.device)

    # ------------------------------------------------------------------ forward
    def lines(self) -> tuple[torch.Tensor, ...]:
        """(u, i) of the ID line and h_t, h_v, h_s of the three item-item graphs."""
        u, i = self.ids(self.adj, self.n_ui_layers)
        e = self.ids.item.weight
        h_t = propagate(self.text_adj, e, self.n_mm_layers, "last")
        h_v = propagate(self.image_adj, e, self.n_mm_layers, "last")
        h_s = propagate(self.session_adj, e, self.n_mm_layers, "last")
        return u, i, h_t, h_v, h_s

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i, h_t, h_v, h_s = self.lines()
        return u, i + (h_v + h_t + h_s) / 3.0

    # ------------------------------------------------------------------ loss
    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        u, i, h_t, h_v, h_s = self.lines()
        items = torch.cat([positives, negatives])
        if items.device.type in self.unique_on:
            # On the CPU a unique reads nothing back from a device: gather each id once, as
            # MMRec does (its L_AI matrices have the distinct items' rows, ~0.75x of 2 x batch).
            distinct_users, w_users = torch.unique(users), None
            items, w_items = torch.unique(items), None
        else:
            distinct_users = users
            w_users = first_occurrence(users).to(u.dtype)
            w_items = first_occurrence(items).to(u.dtype)
        loss = self.denoised_bpr(u, i + (h_t + h_v + h_s) / 3.0, h_t, h_v, h_s,
                                 users, positives, negatives)
        if self.neighbor_weight:
            loss = loss + self.neighbor_weight * self.neighbor_discrimination(
                h_t, h_v, h_s, items, w_items)
        if self.kl_weight:
            loss = loss + self.kl_weight * self.alignment(
                u, i, (h_t + h_s + h_v) / 3.0, distinct_users, w_users, items, w_items)
        return loss

    @staticmethod
    def modal_weights(ub, h_t, h_v, h_s, positives, negatives):
        """(w+, w-) of the denoised BPR, constants (module docstring)."""
        with torch.no_grad():
            lines = (h_t, h_s, h_v)  # MMRec's order
            p = torch.sigmoid(torch.stack(
                [(ub * F.normalize(select_rows(h, positives), dim=-1)).sum(1) for h in lines]))
            n = torch.sigmoid(torch.stack(
                [(ub * F.normalize(select_rows(h, negatives), dim=-1)).sum(1) for h in lines]))
            p_mean, p_var, p_max = p.mean(0), p.var(0), p.max(0).values
            n_mean = n.mean()
            pos_w = (p_mean * torch.exp(-p_var).square()).clamp(0, 1)
            neg_w = ((p_max - n_mean) * (p_mean < n_mean).to(p.dtype)).clamp(0, 1)
        return pos_w, neg_w

    def denoised_bpr(self, u, items, h_t, h_v, h_s, users, positives, negatives):
        ub = select_rows(u, users)
        pos_w, neg_w = self.modal_weights(ub, h_t, h_v, h_s, positives, negatives)
        pb, nb = select_rows(items, positives), select_rows(items, negatives)
        diff = (ub * pb).sum(1) - (ub * nb).sum(1)
        return -(F.logsigmoid(diff) * pos_w + F.logsigmoid(-diff) * neg_w).mean()

    def neighbor_discrimination(self, h_t, h_v, h_s, items, w_items) -> torch.Tensor:
        """L_AI averaged over the session, visual and textual graphs (module docstring;
        :mod:`mmfast.nn.neighbor_discrimination`)."""
        normalized = [F.normalize(h, dim=1) for h in (h_t, h_v, h_s)]
        return neighbor_discrimination(normalized, items, w_items, self.n_pseudo, self.temperature)

    @staticmethod
    def alignment(u, i, modal, users, w_users, items, w_items) -> torch.Tensor:
        """L_AU: the mean symmetric Bernoulli KL over distinct (user, item) pairs of the batch."""
        ub = select_rows(u, users)
        x_g = ub @ F.normalize(i[items], dim=-1).T
        x_m = ub @ F.normalize(modal[items], dim=-1).T
        sym = (torch.sigmoid(x_g) - torch.sigmoid(x_m)) * (x_g - x_m)
        if w_users is None:  # the distinct ids themselves
            return sym.mean()
        return (w_users @ sym @ w_items) / (w_users.sum() * w_items.sum())

    def run_info(self) -> dict[str, Any]:
        return {"item_graph": self.item_graph_source}
