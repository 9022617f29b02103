"""SMORE (Ong & Khong, WSDM'25): spectral modality fusion on top of MGCN's multi-view graph
convolution, as MMRec trains it.

Forward (all users and items, every batch), with v the visual and t the textual modality:

1. Projection: x_m = W_m f_m + b_m (the raw tables f_m fine-tuned, as MMRec's
   ``nn.Embedding.from_pretrained(freeze=False)``).
2. Spectrum (Eq. 3-6): X_m = rfft(x_m) along the feature axis (orthonormal), then per
   frequency learnable complex filters: c_m = irfft(X_m ⊙ W_m) (uni-modal denoising) and the
   fusion c_f = irfft(X_v ⊙ X_t ⊙ W_f) (a product in the spectrum is a circular convolution of
   the two modalities). W_* are [d/2 + 1] complex, drawn N(0, 1) per real and imaginary part.
3. Purifiers: p_b = e^id ⊙ σ(G_b c_b + g_b) for b in {v, t, f}
   (:class:`mmfast.nn.alignment.BehaviorPurifier`).
4. Item views: p_b <- S_b^L p_b (L = ``n_layers``) on frozen kNN graphs of the raw features,
   S_v with ``image_knn_k`` neighbours, S_t with ``text_knn_k`` (both MGCN's G3: similarity
   values, symmetric row-sum normalization), S_f = max(S_v, S_t) entrywise over the union of
   their edges (:func:`mmfast.data.knn.max_graphs`); users lifted by R̂, E_b = [R̂ p_b; p_b].
5. Content view H = mean of layers 0..``n_ui_layers`` of LightGCN on Â.
6. Preference: a_m = softmax over the d features of q_m(E_f) (q_m = Linear-tanh-Linear, no
   bias on the second, one per modality), gates π_b = σ(P_b H + b_b) with dropout
   (``dropout_rate``, training only), side M = (π_v ⊙ a_v ⊙ E_v + π_t ⊙ a_t ⊙ E_t
   + π_f ⊙ E_f) / 3, final Z = H + M.

Loss: MGCN's (:func:`mmfast.nn.multiview.multiview_loss`): BPR on Z + ``reg_weight``
½(|z_u|² + |z_i+|² + |z_i-|²) / ``train_batch_size`` + ``cl_loss`` (NCE(M_I, H_I) over the
positives + NCE(M_U, H_U) over the batch users), in-batch InfoNCE at ``cl_temperature``.

Plug-in views (``+BMA``/``+SEA``): behaviour = H, modal = M, modal features = the projected x_m.

Reference: Rongqing Kenneth Ong, Andy W. H. Khong. "Spectrum-based Modality Representation
Fusion Graph Convolutional Network for Multimodal Recommendation." WSDM 2025 (MMRec's
``models/smore.py``).

Differences from MMRec: none in the computation at MMRec's settings. The dropout masks come
from a model-owned random stream (so a resumed run draws the same ones), not the global one.
The NCE temperature is ``cl_temperature`` (as in MGCN) where MMRec hard-codes 0.2 (the
default); MMRec's YAML key ``temperature``, which nothing reads, is left out (``+BMA`` owns
it). A zero feature row has similarity 0 in the frozen graphs where MMRec's would be NaN.
MMRec's YAML key ``lambda_coeff`` is kept and unused, as in MMRec.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset
from mmfast.data.knn import item_knn_graph, max_graphs
from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import register
from mmfast.nn.alignment import BehaviorPurifier
from mmfast.nn.features import ModalityProjection, check_features
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.lift import UserLift
from mmfast.nn.multiview import lifted_item_view, multiview_loss
from mmfast.nn.roles import image_text_roles
from mmfast.nn.ssl_views import DropoutView

FUSION = "fusion"  # the third branch, beside the two modalities


class SpectralFilters(nn.Module):
    """SMORE's spectrum convolution (Eq. 3-6): with X = rfft(x, norm="ortho") along the feature
    axis, c_v = irfft(X_v ⊙ W_v), c_t = irfft(X_t ⊙ W_t), c_f = irfft(X_v ⊙ X_t ⊙ W_f), each
    W a learnable complex vector over the d/2 + 1 frequencies (stored as [1, d/2 + 1, 2] real
    pairs, standard normal, as MMRec)."""

    def __init__(self, dim: int, branches: tuple[str, str, str]) -> None:
        super().__init__()
        self.dim = dim
        self.weights = nn.ParameterDict(
            {b: nn.Parameter(torch.randn(1, dim // 2 + 1, 2)) for b in branches})
        self.branches = branches

    def forward(self, visual: torch.Tensor, textual: torch.Tensor) -> dict[str, torch.Tensor]:
        """{branch: [n, d]} for the visual, textual and fusion branches, from x_v, x_t [n, d]."""
        bv, bt, bf = self.branches
        fv = torch.fft.rfft(visual, dim=1, norm="ortho")
        ft = torch.fft.rfft(textual, dim=1, norm="ortho")

        def back(spectrum: torch.Tensor, branch: str) -> torch.Tensor:
            w = torch.view_as_complex(self.weights[branch])
            return torch.fft.irfft(spectrum * w, n=self.dim, dim=1, norm="ortho")

        return {bv: back(fv, bv), bt: back(ft, bt), bf: back(ft * fv, bf)}


@register()
class SMORE(Recommender):
    """SMORE. Config: ``configs/model/SMORE.yaml``."""

    plugin_views: ClassVar[tuple[str, ...]] = ("behavior", "modal", "modal_features")
    modal_width_key: ClassVar[str] = "embedding_size"

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        self.roles = image_text_roles(dataset.modalities, "SMORE", need=2)
        raw = {m: dataset.feature(m).float() for m in self.roles}
        check_features(raw, "SMORE")
        dim = int(config["embedding_size"])
        self.n_ui_layers, self.n_layers = int(config["n_ui_layers"]), int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"])
        self.batch_size = int(config["train_batch_size"])
        self.cl_weight = float(config["cl_loss"])
        self.temperature = float(config["cl_temperature"])
        self.branches = (*self.roles, FUSION)
        # Built in MMRec's order, so a seed draws the same initial weights.
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, dim)
        self.modal = ModalityProjection(raw, dim,
                                        trainable=not bool(config.get("freeze_features", False)))
        self.queries = nn.ModuleDict({m: nn.Sequential(
            nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim, bias=False)) for m in self.roles})
        self.purifiers = nn.ModuleDict({b: BehaviorPurifier(dim) for b in self.branches})
        self.prefer = nn.ModuleDict({b: nn.Linear(dim, dim) for b in self.branches})
        self.spectrum = SpectralFilters(dim, self.branches)
        p = float(config["dropout_rate"])
        self.dropout = DropoutView(p, self.add_generator("prefer_dropout")) if p > 0 else None
        # S_v, S_t: G3 of each modality's raw features with its own k, built once (cached on
        # disk), frozen; S_f their entrywise max.
        ks = dict(zip(self.roles, (int(config["image_knn_k"]), int(config["text_knn_k"]))))
        graphs = {m: item_knn_graph(raw[m], ks[m], style="mgcn", device=self.device)
                  for m in self.roles}
        graphs[FUSION] = max_graphs([graphs[m] for m in self.roles])
        for b in self.branches:
            setattr(self, f"item_graph_{b}", graphs[b].to(self.device))
        self.adj = dataset.norm_adj().to(self.device)
        self.lift = UserLift(dataset.user_item_lift().to(self.device))

    def views(self, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, M), each [n_users + n_items, d], users first: the content (user-item) view and
        the side (spectral modality) view; Z = H + M. ``train`` applies the preference dropout."""
        conv = self.spectrum(*(self.modal(m) for m in self.roles))
        content = torch.cat(self.ids(self.adj, self.n_ui_layers))
        item = self.ids.item.weight
        views = {b: lifted_item_view(getattr(self, f"item_graph_{b}"),
                                     self.purifiers[b](item, conv[b]), self.n_layers, self.lift)
                 for b in self.branches}
        fusion = views[FUSION]
        parts = {m: torch.softmax(self.queries[m](fusion), dim=-1) * views[m] for m in self.roles}
        parts[FUSION] = fusion
        side = None
        for b in self.branches:
            gate = torch.sigmoid(self.prefer[b](content))
            if train and self.dropout is not None:
                gate = self.dropout.view(gate)
            side = gate * parts[b] if side is None else side + gate * parts[b]
        return content, side / len(self.branches)

    def modal_feature_dims(self) -> dict[str, int]:
        """Widths of the per-modality item features (``+SEA`` splits them in half)."""
        return {m: self.modal.projections[m].out_features for m in self.roles}

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        content, side = self.views(train=True)
        loss = multiview_loss(content, side, users, positives, negatives, n_users=self.n_users,
                              reg_weight=self.reg_weight, batch_size=self.batch_size,
                              cl_weight=self.cl_weight, temperature=self.temperature)
        nu = self.n_users
        views = PluginViews(
            behavior=(content[:nu], content[nu:]), modal=(side[:nu], side[nu:]),
            modal_features=lambda rows=None: {m: self.modal(m, rows) for m in self.roles})
        return loss, views

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        content, side = self.views()
        z = content + side
        return z[: self.n_users], z[self.n_users:]
