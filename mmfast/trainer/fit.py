"""Training of one configuration (one grid point): MMRec's epoch loop, resumable.

Per epoch: ``model.current_epoch`` and the model's pre-epoch hook, a pass over freshly sampled
(user, pos, neg) batches (neg None when the sampler draws none, ``use_neg_sampling: false``),
each one ``model.train_step`` (loss, backward, the model's ``after_backward`` hook, the model
optimizer's step; auxiliary optimizers are the model's; with Mirror Gradient, ``mg: true``, every
``beta``-th batch takes two such steps on scaled losses), the LambdaLR step, the post-epoch
hook, then valid and test evaluation every ``eval_step`` epochs, early stopping on the valid
metric, ``best.pt`` on a new best and ``last.pt`` (everything needed to continue: every
optimizer's state, the global RNG streams and the model's own) every ``checkpoint_every``
epochs. The batch loss is summed on the device and read once per epoch, so a training step
never waits for the device.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from mmfast.data.sampler import NegativeSampler
from mmfast.models.base import Recommender
from mmfast._atomic import atomic_torch_save
from mmfast.trainer.rng import rng_state, set_rng_state
from mmfast.trainer.early_stopping import EarlyStopping
from mmfast.trainer.evaluation import SplitEvaluator, valid_metric
from mmfast.trainer.progress import epoch_bar
from mmfast.trainer.runlog import dict2str, plot_curves, write_metrics

BEST, LAST, METRICS, CURVES = "best.pt", "last.pt", "metrics.json", "curves.png"

# Called after every evaluation, once its checkpoints are on disk: (epoch, valid, test). A sweep
# reports the valid metric to its scheduler here; an exception it raises stops the point.
EvaluationCallback = Callable[[int, Mapping[str, float], Mapping[str, float]], None]


ADAM_IMPLS = ("fused", "foreach", "loop")


def adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
         impl: str | None = "fused") -> torch.optim.Adam:
    """The model optimizer: ``torch.optim.Adam`` as MMRec builds it, in the implementation
    ``optimizer_impl`` names. ``fused`` updates every tensor in one kernel per device (on the
    CPU about 4x faster than the per-tensor loop on a 1 M-parameter table); ``foreach`` and
    ``loop`` are torch's multi-tensor and per-tensor paths. All three are the same algorithm
    and differ by rounding; their state dicts are interchangeable, so a run may resume under
    another one."""
    impl = impl or "fused"
    if impl not in ADAM_IMPLS:
        raise ValueError(f"optimizer_impl must be one of {ADAM_IMPLS}, got {impl!r}")
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kind[impl])


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the last completed checkpoint is on disk."""

    def __init__(self, folder: Path, epoch: int) -> None:
        super().__init__(f"interrupted; last checkpointed epoch {epoch} in {folder}")
        self.folder, self.epoch = folder, epoch


class Trainer:
    """Fits ``model`` with MMRec's protocol and writes its outputs into ``folder``."""

    def __init__(
        self,
        config: Mapping[str, Any],
        model: Recommender,
        sampler: NegativeSampler,
        evaluate: SplitEvaluator,
        folder: Path,
        logger: logging.Logger,
        *,
        params: Mapping[str, Any] | None = None,
        progress: bool = False,
        on_evaluation: EvaluationCallback | None = None,
    ) -> None:
        self.config, self.model, self.sampler, self.evaluate = config, model, sampler, evaluate
        self.folder, self.logger, self.progress = Path(folder), logger, progress
        self.params = dict(params or {})
        self.on_evaluation = on_evaluation
        self.metric = valid_metric(config)
        if not getattr(sampler, "negatives", True) and type(model).uses_negatives:
            raise ValueError(f"{config.get('model', type(model).__name__)} scores sampled negatives: "
                             "it needs use_neg_sampling: true")
        self.trains = type(model).trains
        # Parameters an auxiliary optimizer of the model owns stay out of the model optimizer.
        # A model with nothing to train (``trains = False``) gets neither.
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if self.trains:
            self.optimizer = adam(model.model_parameters(), float(config["learning_rate"]),
                                  float(config["weight_decay"]), config.get("optimizer_impl"))
            gamma, period = (float(x) for x in config["learning_rate_scheduler"])
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda epoch: gamma ** (epoch / period)
            )
        self.stopper = EarlyStopping(int(config["stopping_step"]))
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"valid": {}, "test": {}, "epoch": None}
        self.start_epoch = 0
        self.saved_epoch = -1  # the epoch last.pt continues after
        self.status = "running"

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "auxiliary_optimizers": {name: opt.state_dict() for name, opt
                                     in self.model.auxiliary_optimizers.items()},
            "model_rng": self.model.rng_state(),
            "stopper": self.stopper.state_dict(), "history": self.history, "best": self.best,
            "sampler": self.sampler.generator.get_state(), "rng": rng_state(),
            "params": self.params, "status": self.status,
        }

    def resume(self, path: Path) -> None:
        """Continue after the epoch saved in ``path`` (a ``last.pt``)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        auxiliary = self.model.auxiliary_optimizers
        saved = state.get("auxiliary_optimizers", {})
        if set(saved) != set(auxiliary):
            raise ValueError(f"{path}: saved auxiliary optimizers {sorted(saved)} do not match "
                             f"the model's {sorted(auxiliary)}")
        for name, opt in auxiliary.items():
            opt.load_state_dict(saved[name])
        self.model.set_rng_state(state.get("model_rng", {}))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["stopper"])
        self.history, self.best = state["history"], state["best"]
        self.sampler.generator.set_state(state["sampler"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        self.saved_epoch = state["epoch"]
        self.logger.info(f"resumed from {path} after epoch {state['epoch']}")

    def result(self) -> dict[str, Any]:
        result = {"params": self.params, "status": self.status, "best": self.best,
                  "epochs": self.history}
        info = self.model.run_info()
        if info:
            result["model_info"] = info
        return result

    # ------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int) -> float:
        if not self.trains:
            return 0.0
        self.model.train()
        self.model.current_epoch = epoch
        self.model.pre_epoch_processing()
        total = torch.zeros((), device=self.sampler.device)
        batches = epoch_bar(self.sampler, len(self.sampler), epoch, self.progress)
        step, opt = self.model.train_step, self.optimizer
        if self.config.get("mg"):
            # Mirror Gradient (MMRec's trainer, mg.yaml): on batches 0, beta, 2 beta, ... of the
            # epoch, a step on alpha1 x loss, then one on -alpha2 x the loss recomputed on the
            # same batch after it; the epoch's loss sums the first. Other batches: one step.
            a1, a2 = float(self.config["alpha1"]), float(self.config["alpha2"])
            beta = int(self.config["beta"])
            for b, (users, pos, neg) in enumerate(batches):
                if b % beta:
                    total += step(users, pos, neg, opt)
                else:
                    total += step(users, pos, neg, opt, loss_scale=a1)
                    step(users, pos, neg, opt, loss_scale=-a2)
        else:
            for users, pos, neg in batches:
                total += step(users, pos, neg, opt)
        self.scheduler.step()
        self.model.post_epoch_processing()
        return float(total)  # the one host sync of the epoch

    @torch.no_grad()
    def evaluate_splits(self) -> tuple[dict[str, float], dict[str, float]]:
        self.model.eval()
        users, items = self.model.embeddings()
        valid, test = self.evaluate(users, items, ("valid", "test"))
        return valid, test

    def fit(self) -> dict[str, Any]:
        epochs, eval_step = int(self.config["epochs"]), int(self.config["eval_step"])
        if not self.trains:  # one evaluation is the whole run; more epochs would repeat it
            epochs, eval_step = 1, 1
        every = int(self.config["checkpoint_every"])
        log = self.logger.info
        epoch = self.start_epoch - 1
        try:
            for epoch in range(self.start_epoch, epochs):
                if self.stopper.should_stop:  # resumed from the checkpoint of the stopping epoch
                    self.status = "early_stopped"
                    break
                t0 = time.perf_counter()
                loss = self.train_epoch(epoch)
                t1 = time.perf_counter()
                record: dict[str, Any] = {"epoch": epoch, "train_loss": loss,
                                          "train_time": round(t1 - t0, 4),
                                          "lr": (self.optimizer.param_groups[0]["lr"]
                                                 if self.optimizer else None)}
                if not math.isfinite(loss):
                    self.status = "nan"
                    record["train_loss"] = None  # metrics.json stays strict JSON
                    log(f"epoch {epoch} training [time: {t1 - t0:.2f}s, train loss: {loss}]")
                    log("Loss is nan. Stop training; the best result so far is kept.")
                    self.history.append(record)
                    break
                log(f"epoch {epoch} training [time: {t1 - t0:.2f}s, train loss: {loss:.4f}]")
                stop = False
                if (epoch + 1) % eval_step == 0:
                    valid, test = self.evaluate_splits()
                    t2 = time.perf_counter()
                    score = valid[self.metric]
                    record.update(eval_time=round(t2 - t1, 4), valid=valid, test=test)
                    log(f"epoch {epoch} evaluating [time: {t2 - t1:.2f}s, valid_score: {score:.6f}]")
                    log(f"valid result: \n{dict2str(valid)}")
                    log(f"test result: \n{dict2str(test)}")
                    if self.stopper.step(score):
                        self.best = {"valid": valid, "test": test, "epoch": epoch}
                        atomic_torch_save(self._best_payload(epoch), self.folder / BEST)
                        log(f"██ {self.config['model']}--Best validation results updated!!!")
                    stop = self.stopper.should_stop
                self.history.append(record)
                if stop:
                    self.status = "early_stopped"
                elif epoch + 1 == epochs:
                    self.status = "finished"
                if stop or (epoch + 1) % every == 0 or epoch + 1 == epochs:
                    atomic_torch_save(self.state_dict(epoch), self.folder / LAST)
                    self.saved_epoch = epoch
                write_metrics(self.folder / METRICS, self.result())
                if self.on_evaluation is not None and "valid" in record:
                    self.on_evaluation(epoch, record["valid"], record["test"])
                if stop:
                    log(f"Finished training, best eval result in epoch {self.best['epoch']}")
                    break
            else:
                if self.status == "running":  # resumed after the last epoch already ran
                    self.status = "finished"
        except KeyboardInterrupt:
            self.status = "interrupted"
            write_metrics(self.folder / METRICS, self.result())
            done = self.saved_epoch
            log(f"Interrupted during epoch {epoch}; resumable after epoch {done} "
                f"(python -m mmfast.train --resume {self.folder.resolve()})")
            raise TrainingInterrupted(self.folder, done) from None
        write_metrics(self.folder / METRICS, self.result())
        plot_curves(self.folder / CURVES, self.history, self.metric, self.logger)
        return self.result()

    def _best_payload(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "model_name": self.config["model"],
                "config": dict(self.config), "params": self.params, "epoch": epoch,
                "valid": self.best["valid"], "test": self.best["test"]}
