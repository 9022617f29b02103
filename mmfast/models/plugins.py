"""Plug-ins that attach to any model speaking the plug-in protocol: ``-m VBPR+SEA``,
``-m FREEDOM+SEA``, ``-m FREEDOM+BMA``, ``-m MGCN+BMA``, ... (chainable: ``FREEDOM+SEA+BMA``).

The protocol (a model that wants plug-ins):

* implement ``loss_and_views(users, positives, negatives) -> (loss, PluginViews)``
  (:class:`mmfast.models.base.PluginViews`): the model's own batch loss and the views of the
  same forward; keep a plain ``calculate_loss`` too if it is cheaper without the views;
* declare the views it fills: ``plugin_views = ("behavior", "modal", "modal_features")``
  (optional: without it a plug-in composes and checks the views at the first training step);
* for ``+SEA``: ``modal_feature_dims() -> {modality: width}``, the widths of the per-modality
  item features ``modal_features(rows)`` returns (each is split in half; optionally
  ``modal_width_key``, the config key that sets them, for the odd-width error);
* optionally skip views no attached plug-in reads: a composed class sets ``plugin_needs`` (a
  frozenset of view names; ``None`` on a bare model, meaning "fill every view").

Plug-ins:

* ``+SEA`` reads ``modal_features``: :class:`mmfast.nn.SeparateLearning` on the model's
  per-modality item features (each split into generic and unique halves; SoloSim other ->
  anchor, CLUB or negative-L2 distancing, 50 q-net steps after the model's backward). Keys:
  ``configs/plugin/SEA.yaml`` (SEA's names; MODELS.md §2.6).
* ``+BMA`` reads ``behavior`` and ``modal``: :class:`mmfast.nn.BehaviorModalAlignment`
  (DRepMRec's behaviour-modal alignment, MODELS.md §4.3) on the batch's users and positive
  items of the two lines. Keys: ``configs/plugin/BMA.yaml``.

A new plug-in is a mixin class decorated with
``@register_plugin("NAME", needs=(view, ...))`` (``mmfast.models.registry``) whose
``__init__(config, dataset, device)`` calls ``super().__init__`` first, whose
``loss_and_views`` calls ``super().loss_and_views`` and adds its term, and whose
``calculate_loss`` returns ``self.loss_and_views(...)[0]`` (inherit :class:`Plugin`); its keys go
in ``configs/plugin/NAME.yaml``. ``plugin_hooks`` names model methods it calls besides the views.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from mmfast.data.dataset import Dataset
from mmfast.models.base import PluginViews
from mmfast.models.registry import register_plugin
from mmfast.models.sea import aux_rows, check_aux_rows, separate_learning
from mmfast.nn.bma import BehaviorModalAlignment
from mmfast.nn.bpr import batch_rows
from mmfast.nn.separation import ordered_modalities


def wants_view(model: Any, view: str) -> bool:
    """Whether ``model``'s ``loss_and_views`` should fill ``view``: always on a bare model, and
    on a composed one when an attached plug-in reads it."""
    needs = getattr(model, "plugin_needs", None)
    return needs is None or view in needs


class Plugin:
    """Common part of the plug-in mixins: the batch loss is ``loss_and_views``' loss, and a view
    the model did not fill is a one-line error."""

    plugin_name: ClassVar[str]
    plugin_reads: ClassVar[tuple[str, ...]]
    plugin_hooks: ClassVar[tuple[str, ...]] = ()

    def calculate_loss(self, users, positives, negatives) -> torch.Tensor:
        return self.loss_and_views(users, positives, negatives)[0]

    def _view(self, views: PluginViews, field: str, plugin: str):
        value = getattr(views, field)
        if value is None:
            base = type(self).base_model.__name__
            raise ValueError(f"{type(self).__name__}: {base}'s loss_and_views gives no {field} "
                             f"view, which the {plugin} plug-in needs")
        return value


@register_plugin("SEA", needs=("modal_features",))
class SeparateLearningPlugin(Plugin):
    """SEA's separate learning on the model's per-modality item features"""

    plugin_hooks: ClassVar[tuple[str, ...]] = ("modal_feature_dims",)

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        name = type(self).__name__
        dims = dict(self.modal_feature_dims())
        self.sea_modalities = ordered_modalities(list(dims), str(config["anchor_modality"]), name)
        for m in self.sea_modalities:
            if dims[m] % 2:
                key = getattr(self, "modal_width_key", None)
                base = type(self).base_model.__name__
                raise ValueError(
                    f"{name} splits the {dims[m]}-d {m} features of {base} in half: "
                    + (f"{key} must be even" if key else "their width must be even"))
        self.sea_aux_rows = check_aux_rows(str(config["aux_rows"]))
        self.separate = separate_learning(config, {m: dims[m] // 2 for m in self.sea_modalities})
        club_lr = config.get("club_lr")
        self.separate.attach(self, float(config["learning_rate"] if club_lr is None else club_lr))

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        loss, views = super().loss_and_views(users, positives, negatives)
        features = self._view(views, "modal_features", "SEA")
        z = features(aux_rows(self.sea_aux_rows, positives, negatives))
        return loss + self.separate({m: z[m] for m in self.sea_modalities}), views

    def after_backward(self) -> None:
        super().after_backward()
        self.separate.after_backward()


@register_plugin("BMA", needs=("behavior", "modal"))
class BehaviorModalAlignmentPlugin(Plugin):
    """DRepMRec's behaviour-modal alignment between the model's behaviour and modal lines"""

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__(config, dataset, device)
        intra = config.get("intra_weight")
        self.bma = BehaviorModalAlignment(
            temperature=float(config["temperature"]), inter_weight=float(config["inter_weight"]),
            intra_weight=None if intra is None else float(intra),
            detach_cross=bool(config["detach_cross"]))

    def loss_and_views(self, users, positives, negatives) -> tuple[torch.Tensor, PluginViews]:
        loss, views = super().loss_and_views(users, positives, negatives)
        b_u, b_i = self._view(views, "behavior", "BMA")
        m_u, m_i = self._view(views, "modal", "BMA")
        if b_u.shape[1] != m_u.shape[1] or b_i.shape[1] != m_i.shape[1]:
            raise ValueError(f"{type(self).__name__}: BMA aligns lines of one width, and the "
                             f"behaviour line is {b_u.shape[1]}-d, the modal {m_u.shape[1]}-d")
        return loss + self.bma(*batch_rows(b_u, b_i, users, positives),
                               *batch_rows(m_u, m_i, users, positives)), views
