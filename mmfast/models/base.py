"""What a model is to the trainer: parameters, a loss per batch, final embeddings, and the
extension points of a training step (auxiliary optimizers, a hook between backward and step,
model-owned random streams, the epoch counter)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from mmfast.configs import load_yaml, merge, model_config_path
from mmfast.data.dataset import Dataset
from mmfast.ops import SparseGraph


@dataclass
class PluginViews:
    """What a model exposes from one training forward so that plug-ins (``+SEA``, ``+BMA``) can
    attach to it without a class per pair. Every field is optional; a plug-in names the fields
    it needs and refuses, in one line, a model that does not provide them.

    - ``behavior``: (users [n_users, d], items [n_items, d]), the behaviour (ID / user-item
      graph) line of this forward, full tables (BMA's behaviour side).
    - ``modal``: (users [n_users, d], items [n_items, d]), the modal representation of the
      same width (BMA's modal side; users usually lifted from items by R̂).
    - ``modal_features``: ``rows -> {modality: [len(rows) or n_items, d_m]}``, the per-modality
      item representations SEA splits into generic and unique halves (``rows=None``: all items).
    """

    behavior: tuple[torch.Tensor, torch.Tensor] | None = None
    modal: tuple[torch.Tensor, torch.Tensor] | None = None
    modal_features: Callable[[torch.Tensor | None], dict[str, torch.Tensor]] | None = None


class Recommender(nn.Module):
    """Base class of every model the trainer runs.

    A subclass implements ``calculate_loss`` (a scalar tensor for one batch of
    ``(users, positives, negatives)``; it must not read values back to the host, so that a
    training step never waits on the device) and ``embeddings`` (final user and item vectors;
    the score of (u, i) is their inner product, as in MMRec's ``full_sort_predict``).
    ``pre_epoch_processing``/``post_epoch_processing`` are MMRec's per-epoch hooks;
    ``current_epoch`` (set by the trainer before each epoch, restored on resume) lets a model
    follow its own schedule (e.g. a warm-up).

    A training step is :meth:`train_step`: zero the gradients, ``calculate_loss``, backward,
    :meth:`after_backward`, the model optimizer's step. Models that train a part of themselves
    on their own terms (SEA's CLUB q-net: its own Adam, 50 steps between the model's backward
    and its step) register that optimizer with :meth:`add_auxiliary_optimizer` and run it in
    ``after_backward``; the trainer keeps its parameters out of the model optimizer and saves its
    state. Random draws a model makes itself come from :meth:`add_generator` streams, which
    ``last.pt`` saves, so a resumed run continues bit-identically.

    Default hyper-parameters come from ``config_file`` (a YAML path), else the package's
    ``configs/model/<Name>.yaml``, else ``defaults``.
    """

    config_file: ClassVar[str | Path | None] = None
    defaults: ClassVar[Mapping[str, Any]] = {}
    config_overrides: ClassVar[Mapping[str, Any]] = {}
    # False: the loss reads no sampled negatives (BM3, SLMRec), so the model trains with
    # ``use_neg_sampling: false`` and its batches are (users, positives, None).
    uses_negatives: ClassVar[bool] = True
    # False: nothing to train (ItemKNNCBF builds its scorer when constructed); the trainer
    # evaluates the model once, as its only epoch, with no optimizer and no batches.
    trains: ClassVar[bool] = True
    # The PluginViews fields ``loss_and_views`` fills (None: undeclared, checked when training),
    # and for ``+SEA`` the config key behind ``modal_feature_dims()`` (see mmfast/models/plugins.py).
    plugin_views: ClassVar[tuple[str, ...] | None] = None
    modal_width_key: ClassVar[str | None] = None

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__()
        self.config = dict(config)
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.device = torch.device(device)
        self.current_epoch = 0
        self._auxiliary_optimizers: dict[str, torch.optim.Optimizer] = {}
        self._generators: dict[str, torch.Generator] = {}

    # --------------------------------------------------------------- the contract
    def calculate_loss(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """The batch loss. Models that take plug-ins implement :meth:`loss_and_views` instead;
        this then returns its loss."""
        if type(self).loss_and_views is Recommender.loss_and_views:
            raise NotImplementedError(f"{type(self).__name__} implements neither calculate_loss "
                                      "nor loss_and_views")
        return self.loss_and_views(users, positives, negatives)[0]

    def loss_and_views(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> tuple[torch.Tensor, PluginViews]:
        """The model's own batch loss and the :class:`PluginViews` of the same forward (the
        plug-in protocol). A model that implements it can take ``+SEA`` / ``+BMA``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose PluginViews")

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors [n_users, d], item vectors [n_items, d]) for full ranking: dense, or
        torch sparse matrices where the vectors are sparse and wide (ItemKNNCBF: rows of R and
        of S^T, d = n_items), which the evaluator and ``recommend`` score batch by batch."""
        raise NotImplementedError

    def pre_epoch_processing(self) -> None:
        """Runs before each training epoch, after ``current_epoch`` is set (FREEDOM prunes
        edges here)."""

    def post_epoch_processing(self) -> None:
        """Runs after each training epoch."""

    # --------------------------------------------------------------- the training step
    def train_step(
        self,
        users: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        loss_scale: float = 1.0,
    ) -> torch.Tensor:
        """One batch: the loss, the gradients of ``loss_scale`` x loss, :meth:`after_backward`,
        ``optimizer.step()``. Returns the detached, unscaled loss (no host read). The trainer
        scales the loss only for Mirror Gradient's two steps (``mg: true``). Override only to
        change the step's shape, passing ``loss_scale`` on; most models need just
        ``calculate_loss`` and perhaps ``after_backward``."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.calculate_loss(users, positives, negatives)
        (loss if loss_scale == 1.0 else loss_scale * loss).backward()
        self.after_backward()
        optimizer.step()
        return loss.detach()

    def after_backward(self) -> None:
        """Runs after the model loss's backward pass, before the model optimizer's step: the
        model gradients are final here (computed with the auxiliary parts as they were), and
        auxiliary optimizers may step (SEA: 50 q-net steps on detached pairs)."""

    def add_auxiliary_optimizer(
        self, name: str, optimizer: torch.optim.Optimizer
    ) -> torch.optim.Optimizer:
        """Register an optimizer the model runs itself (in ``after_backward`` or ``train_step``).
        Its parameters are left out of the model optimizer, and its state is saved in
        ``last.pt`` and restored on resume. Returns ``optimizer``."""
        if name in self._auxiliary_optimizers:
            raise ValueError(f"{type(self).__name__}: auxiliary optimizer {name!r} exists already")
        mine = {id(p) for p in self.parameters()}
        for group in optimizer.param_groups:
            if any(id(p) not in mine for p in group["params"]):
                raise ValueError(f"{type(self).__name__}: auxiliary optimizer {name!r} holds "
                                 "parameters that are not the model's")
        self._auxiliary_optimizers[name] = optimizer
        return optimizer

    @property
    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._auxiliary_optimizers)

    def auxiliary_parameters(self) -> set[int]:
        """ids of the parameters auxiliary optimizers own (kept out of the model optimizer)."""
        return {id(p) for opt in self._auxiliary_optimizers.values()
                for group in opt.param_groups for p in group["params"]}

    def model_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters the model optimizer updates."""
        aux = self.auxiliary_parameters()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in aux]

    # --------------------------------------------------------------- random streams
    def add_generator(self, name: str, device: torch.device | str | None = None) -> torch.Generator:
        """A random stream of the model's own on ``device`` (default: the model's), seeded from
        the global torch RNG (so from the run's seed), saved in ``last.pt``. Draws from it
        (``torch.randperm(n, generator=g, device=g.device)``) stay on the device and never
        disturb the global stream the trainer's other draws use."""
        if name in self._generators:
            raise ValueError(f"{type(self).__name__}: generator {name!r} exists already")
        gen = torch.Generator(device=torch.device(device or self.device))
        gen.manual_seed(int(torch.randint(0, 2**62, (1,))))
        self._generators[name] = gen
        return gen

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {name: g.get_state() for name, g in self._generators.items()}

    def set_rng_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self._generators):
            raise ValueError(f"{type(self).__name__}: saved random streams {sorted(state)} do not "
                             f"match the model's {sorted(self._generators)}")
        for name, s in state.items():
            self._generators[name].set_state(s)

    # --------------------------------------------------------------- run facts, masking
    def run_info(self) -> dict[str, Any]:
        """Facts about this model worth keeping with its results (ALIGNREC: which input
        features it read). The trainer writes a non-empty one to ``metrics.json`` as
        ``model_info``."""
        return {}

    @torch.no_grad()
    def mask_modality(self, modality: str, items: torch.Tensor) -> None:
        """Zero ``modality``'s input features for ``items`` in place (evaluation-time masking,
        ``python -m mmfast.evaluate --mask-modality``). The default zeroes the rows of every
        :class:`mmfast.nn.ModalityProjection` table and ``raw_<modality>`` buffer of that
        modality; models holding features otherwise override it."""
        from mmfast.nn import ModalityProjection

        found = False
        for module in self.modules():
            if isinstance(module, ModalityProjection) and modality in module.features:
                table = module.features[modality]
                table[items.to(table.device)] = 0
                found = True
        for name, buf in self.named_buffers():
            if name.rsplit(".", 1)[-1] == f"raw_{modality}":
                buf[items.to(buf.device)] = 0
                found = True
        if not found:
            raise ValueError(f"{type(self).__name__} holds no {modality!r} features to mask")

    # --------------------------------------------------------------- helpers
    def _apply(self, fn, recurse=True):
        """``.to(device)``, ``.double()`` and friends move the frozen graphs the model's modules
        hold as plain attributes (Â, kNN graphs), as they move parameters and buffers."""
        super()._apply(fn, recurse)
        moved: dict[int, tuple[SparseGraph, SparseGraph]] = {}  # id -> (graph, its copy)
        for module in self.modules():
            for name, value in list(vars(module).items()):
                if isinstance(value, SparseGraph):
                    if id(value) not in moved:  # a graph held twice (FREEDOM's train_adj is
                        # full_adj until the first pruning) stays one graph
                        probe = fn(torch.empty(0, dtype=value.dtype, device=value.device))
                        moved[id(value)] = (value, value.to(probe.device, probe.dtype))
                    setattr(module, name, moved[id(value)][1])
        return self

    @classmethod
    def default_config(cls, dataset: str | None = None) -> dict[str, Any]:
        """The nearest class in the MRO with a ``config_file``, a package YAML of its name,
        or ``defaults`` decides (so a subclass inherits its parent's defaults). A YAML
        ``<Name>.yaml`` may have per-dataset layers beside it, ``<Name>/<dataset>.yaml``,
        merged over it for that dataset. ``config_overrides`` (a subclass's few differences
        from its parent's YAML, e.g. SAND's distancing) come last."""
        config: dict[str, Any] = {}
        for klass in cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, Recommender)):
                break
            own = klass.__dict__.get("config_file")
            path = Path(own) if own is not None else model_config_path(klass.__name__)
            if own is not None or path.is_file():
                config = load_yaml(path)
                layer = path.parent / path.stem / f"{dataset}.yaml"
                if dataset is not None and layer.is_file():
                    config = merge(config, load_yaml(layer))
                break
            if klass.__dict__.get("defaults"):
                config = dict(klass.__dict__["defaults"])
                break
        return merge(config, dict(cls.config_overrides))

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        # MMRec prints the module tree followed by the trainable parameter count.
        return super().__repr__() + f"\nTrainable parameters: {self.n_trainable()}"
