"""The epoch loop: MMRec's early stopping, NaN stop, LR schedule, grid selection, resume."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from mmfast import models
from mmfast.trainer import EarlyStopping, Trainer, TrainingInterrupted, run
from mmfast.data import load_dataset
from mmfast.trainer.experiment import select
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    ctrl_c_at_epoch_call, one_thread, private_cache, tiny_config,
)


def test_early_stopping_counter_semantics():
    s = EarlyStopping(stopping_step=2)
    flags = [(s.step(v), s.counter, s.should_stop) for v in [0.1, 0.2, 0.2, 0.15, 0.3, 0.1, 0.3, 0.2]]
    # Equal is not an improvement; stop once the counter exceeds stopping_step (3 misses).
    assert flags == [(True, 0, False), (True, 0, False), (False, 1, False), (False, 2, False),
                     (True, 0, False), (False, 1, False), (False, 2, False), (False, 3, True)]


class Scripted:
    """An evaluator whose valid recall@20 follows a script (test values tag the epoch)."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    def __call__(self, users, items, splits):
        assert tuple(splits) == ("valid", "test")
        self.calls += 1
        return [{"recall@20": self.scores[self.calls - 1]}, {"recall@20": float(self.calls - 1)}]


def _trainer(tmp_path, config, evaluate, model_name="LightGCN"):
    ds = load_dataset(config)
    torch.manual_seed(0)
    model = models.get(model_name)(config, ds, torch.device("cpu"))
    sampler = ds.sampler(batch_size=config["train_batch_size"], seed=1)
    return Trainer(config, model, sampler, evaluate, tmp_path, logging.getLogger("test"))


def test_trainer_stops_like_mmrec_and_reports_test_at_best_valid(tmp_path):
    config = tiny_config(epochs=50, stopping_step=2)
    result = _trainer(tmp_path, config, Scripted([0.1, 0.2, 0.2, 0.15, 0.3, 0.1, 0.3, 0.2, 0.9])).fit()
    assert result["status"] == "early_stopped"
    assert [e["epoch"] for e in result["epochs"]] == list(range(8))
    assert result["best"] == {"valid": {"recall@20": 0.3}, "test": {"recall@20": 4.0}, "epoch": 4}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best"]["epoch"] == 4 and len(saved["epochs"]) == 8
    assert torch.load(tmp_path / "best.pt", weights_only=False)["epoch"] == 4


def test_eval_step_and_lambda_lr(tmp_path):
    config = tiny_config(epochs=4, eval_step=2, learning_rate_scheduler=[0.5, 2])
    result = _trainer(tmp_path, config, Scripted([0.1, 0.2])).fit()
    assert result["status"] == "finished"
    assert ["valid" in e for e in result["epochs"]] == [False, True, False, True]
    # lr after epoch e's scheduler step: lr0 * 0.5 ** ((e + 1) / 2).
    assert [e["lr"] for e in result["epochs"]] == pytest.approx(
        [1e-3 * 0.5 ** ((e + 1) / 2) for e in range(4)])


@models.register("NaNAtEpoch2")
class NaNAtEpoch2(models.LightGCN):
    """LightGCN whose loss turns NaN in its third epoch (registered without touching the trainer)."""

    def pre_epoch_processing(self):
        self.epoch = getattr(self, "epoch", -1) + 1

    def calculate_loss(self, users, positives, negatives):
        loss = super().calculate_loss(users, positives, negatives)
        return loss * float("nan") if self.epoch >= 2 else loss


def test_nan_loss_stops_and_keeps_best(tmp_path):
    config = tiny_config("NaNAtEpoch2", "n_layers=1", "reg_weight=0.0", epochs=10)
    result = _trainer(tmp_path, config, Scripted([0.1, 0.2, 0.3]), "NaNAtEpoch2").fit()
    assert result["status"] == "nan"
    assert len(result["epochs"]) == 3 and "valid" not in result["epochs"][2]
    assert result["epochs"][2]["train_loss"] is None and result["best"]["epoch"] == 1
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON


def test_select_valid_vs_mmrec():
    pts = [{"best": {"valid": {"r": 0.3}, "test": {"r": 0.1}}},
           {"best": {"valid": {"r": 0.2}, "test": {"r": 0.4}}},
           {"best": {"valid": {"r": 0.3}, "test": {"r": 0.4}}},
           {"best": {"valid": {}, "test": {}}}]
    assert select(pts, "r", "valid") == 0  # ties keep the earlier point
    assert select(pts, "r", "mmrec") == 1


def _epochs(run_dir):
    data = json.loads((run_dir / "metrics.json").read_text())
    return data, [(e["epoch"], e["train_loss"], e["valid"], e["test"]) for e in data["epochs"]]


@pytest.mark.parametrize("model", ["LightGCN", "FREEDOM"])
def test_resume_gives_identical_results(tmp_path, model):
    config = tiny_config(model, epochs=4)
    full = run(config, out=tmp_path / "a", console=False)

    with ctrl_c_at_epoch_call(3), pytest.raises(TrainingInterrupted) as info:  # in epoch 2
        run(config, out=tmp_path / "b", console=False)
    run_dir = info.value.folder
    assert info.value.epoch == 1
    partial, _ = _epochs(run_dir)
    assert partial["status"] == "interrupted" and len(partial["epochs"]) == 2
    resumed = run(resume=run_dir, console=False)

    a, ea = _epochs(full.run_dir)
    b, eb = _epochs(resumed.run_dir)
    assert ea == eb and a["best"] == b["best"] and b["status"] == "finished"
    wa = torch.load(full.run_dir / "best.pt", weights_only=False)["model"]
    wb = torch.load(resumed.run_dir / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = next(run_dir.glob("*.log")).read_text()
    assert "Interrupted during epoch 2; resumable after epoch 1" in log and "resumed from" in log


def test_grid_run_folders_and_selection(tmp_path):
    config = tiny_config("LightGCN", "n_layers=[1, 2]", epochs=2)
    result = run(config, out=tmp_path, console=False)
    d = result.run_dir
    assert (d / "grid" / "000" / "best.pt").is_file() and (d / "grid" / "001" / "last.pt").is_file()
    top = json.loads((d / "metrics.json").read_text())
    assert [g["params"]["n_layers"] for g in top["grid"]] == [1, 2]
    scores = [g["best"]["valid"]["recall@20"] for g in top["grid"]]
    assert top["selected"] == scores.index(max(scores))
    assert top["best"] == top["grid"][top["selected"]]["best"]
    assert (d / "best.pt").read_bytes() == (d / "grid" / f"{top['selected']:03d}" / "best.pt").read_bytes()
    log = next(d.glob("*.log")).read_text()
    assert "=========1/2: Parameters:['seed', 'n_layers', 'reg_weight']=(999, 1, 0.0001)=======" in log
    assert "█████████████ BEST (valid selection) ████████████████" in log


def test_backend_torch_trains_the_same_model(tmp_path):
    """--backend torch runs the same model code on the pure-PyTorch references."""
    runs = {b: run(tiny_config("FREEDOM", epochs=2, backend=b), out=tmp_path / b, console=False)
            for b in ("mmfast", "torch")}
    ea, eb = (json.loads((r.run_dir / "metrics.json").read_text())["epochs"] for r in runs.values())
    assert [e["train_loss"] for e in ea] == pytest.approx([e["train_loss"] for e in eb], rel=1e-4)
    assert ea[-1]["valid"]["recall@20"] == pytest.approx(eb[-1]["valid"]["recall@20"], abs=2e-3)


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from mmfast.trainer import progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress.use_bar(None) is False and progress.use_bar(True) is True
    plain = progress.epoch_bar([1, 2], 2, 0, enabled=False)
    assert list(plain) == [1, 2]
    bar = progress.epoch_bar([1, 2], 2, 0, enabled=True)
    assert type(bar).__name__ != "list_iterator" and list(bar) == [1, 2]


def test_resume_a_grid_skips_finished_points(tmp_path):
    config = tiny_config("LightGCN", "n_layers=[1, 2]", epochs=2)
    full = run(config, out=tmp_path / "a", console=False)
    # Point 0 runs epochs 0-1; Ctrl-C in point 1's first epoch.
    with ctrl_c_at_epoch_call(3), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    assert info.value.folder.parent == tmp_path / "b"  # the run folder, not the point's
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert a["grid"] == b["grid"] and a["selected"] == b["selected"] and a["best"] == b["best"]
    log = next(info.value.folder.glob("*.log")).read_text()
    assert "=========1/2: Parameters:['seed', 'n_layers', 'reg_weight']=(999, 1, 0.0001) (done)" in log


def test_adam_implementations_agree_and_bad_ones_are_refused(tmp_path):
    runs = {}
    for impl in ("fused", "foreach", "loop"):
        result = run(tiny_config(epochs=3, optimizer_impl=impl), out=tmp_path / impl, console=False)
        runs[impl] = [e["train_loss"] for e in result.points[0]["epochs"]]
    assert runs["fused"] == pytest.approx(runs["foreach"], rel=1e-5)
    assert runs["loop"] == pytest.approx(runs["foreach"], rel=1e-6)
    from mmfast.configs import ConfigError
    with pytest.raises(ConfigError, match="optimizer_impl"):
        tiny_config(optimizer_impl="sgd")


def test_cpu_allocator_keeps_freed_memory_on_glibc(tmp_path):
    import platform

    from mmfast.trainer.memory import keep_freed_memory

    tuned = keep_freed_memory()
    assert tuned == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() == tuned  # idempotent
    result = run(tiny_config(epochs=1, malloc_cache=False), out=tmp_path, console=False)
    assert result.points[0]["status"] == "finished"
