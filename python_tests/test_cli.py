"""``python -m mmfast.train`` / ``python -m mmfast.recommend`` end to end on a tiny synthetic set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import mmfast
from mmfast import models, recommend, train
from mmfast.eval import Evaluator
from mmfast.data import load_dataset
from trainer_helpers import TINY, one_thread, private_cache  # noqa: F401 (autouse fixtures)

ROOT = Path(mmfast.__file__).resolve().parent.parent


def _sets(*items: str) -> list[str]:
    return [a for s in (*TINY, *items) for a in ("--set", s)]


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _baselines(config) -> dict[str, float]:
    """Valid Recall@20 of popularity and of random scores on the run's dataset."""
    ds = load_dataset(config)
    ev = Evaluator(ds, ks=[20], metrics=["recall"])
    pop = ds.train.item_degrees().float()[:, None]
    gen = torch.Generator().manual_seed(0)
    return {
        "popularity": ev.evaluate("valid", torch.ones(ds.n_users, 1), pop)["recall@20"],
        "random": ev.evaluate("valid", torch.randn(ds.n_users, 16, generator=gen),
                              torch.randn(ds.n_items, 16, generator=gen))["recall@20"],
    }


# After 8 epochs on the tiny set: FREEDOM must beat popularity, LightGCN random scores by 20%.
# (Popularity is a strong 8-epoch baseline since the generator's popularity skew grew to 1.0.)
@pytest.mark.parametrize("model, params, beats, margin", [
    ("FREEDOM", ["dropout=0.8", "reg_weight=1e-3"], "popularity", 1.0),
    ("LightGCN", ["n_layers=2", "reg_weight=1e-4"], "random", 1.2),
])
def test_train_end_to_end(tmp_path, capsys, model, params, beats, margin):
    out = tmp_path / "runs"
    rc = train.main(["--model", model, "--epochs", "8", "--device", "cpu", "--out", str(out),
                     "--progress", "lines", *_sets(*params)])
    assert rc == 0
    run_dir = _run_dir(out)
    names = {p.name for p in run_dir.iterdir()}
    log_name = f"{run_dir.name}.log"
    assert {log_name, "config.yaml", "metrics.json", "best.pt", "last.pt", "curves.png"} <= names

    # The log has MMRec's layout.
    log = (run_dir / log_name).read_text()
    for needle in ["Configuration (merged", "The number of users:", "====Training====",
                   "Trainable parameters:", "epoch 0 training [time:", "train loss:",
                   "epoch 0 evaluating [time:", "valid_score:", "valid result: \nrecall@5:",
                   "test result: \nrecall@5:", "best valid result:", "All Over", "BEST"]:
        assert needle in log, needle
    assert log.index("epoch 0 training") < log.index("epoch 7 training") < log.index("All Over")

    # config.yaml is the resolved config; metrics.json has the public shape.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == model and config["epochs"] == 8 and config["synthetic"]["n_users"] == 400
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["best"]) == {"valid", "test", "epoch"}
    assert {"recall@20", "ndcg@10", "precision@5", "map@50"} <= set(metrics["best"]["valid"])
    assert len(metrics["epochs"]) == 8 and metrics["status"] == "finished"
    best = metrics["epochs"][metrics["best"]["epoch"]]
    assert best["valid"] == metrics["best"]["valid"] and best["test"] == metrics["best"]["test"]
    assert max(e["valid"]["recall@20"] for e in metrics["epochs"]) == metrics["best"]["valid"]["recall@20"]

    baseline = _baselines(config)[beats]
    assert metrics["best"]["valid"]["recall@20"] > baseline * margin, (metrics["best"], baseline)

    # recommend: top-k from the saved model, never a training item.
    capsys.readouterr()
    assert recommend.main(["--run", str(run_dir), "--user", "3", "--k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "userID\trank\titemID\tscore" and len(lines) == 6
    items = [int(line.split("\t")[2]) for line in lines[1:]]
    ds = load_dataset(config)
    assert not set(items) & set(ds.train.history(3).tolist()) and len(set(items)) == 5
    users_file = tmp_path / "users.txt"
    users_file.write_text("0\n# comment\n5\n")
    assert recommend.main(["--run", str(run_dir), "--users", str(users_file), "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2 * 3


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=kwargs.pop("cwd", ROOT), env=env, timeout=120, **kwargs)


def test_help_lists_every_option_with_its_default():
    res = _cli("mmfast.train", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for option, default in [("--model", "LightGCN"), ("--dataset", "synthetic"),
                            ("--data-root", "None"), ("--config", "None"), ("--set", "[]"),
                            ("--device", "None"), ("--backend", "None"), ("--seed", "None"),
                            ("--epochs", "None"), ("--out", "None"), ("--resume", "None"),
                            ("--selection", "None"), ("--progress", "auto")]:
        assert option in text and f"(default: {default})" in text, option
    assert "stopping_step = 20" in text and "train_batch_size = 2048" in text
    text = recommend.build_parser().format_help()
    assert "--k" in text and "(default: 10)" in text and "--users" in text


@pytest.mark.parametrize("args, message", [
    (["--model", "LightGCM"], "unknown model 'LightGCM'; did you mean LightGCN"),
    (["--set", "n_layer=2"], "unknown config key 'n_layer'"),
    (["--set", "learning_rate=abc"], "expects a number"),
    (["--dataset", "nowhere", "--data-root", "."], "unknown dataset 'nowhere'"),
    (["--dataset", "baby"], "needs a data folder"),
])
def test_bad_options_are_clear_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("MMFAST_DATA", raising=False)
    assert train.main([*args, "--out", str(tmp_path / "runs"), "--epochs", "1"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no run folder for a run that cannot start


@pytest.mark.parametrize("args, message", [
    (["-m", "MGCN", "--set", "modalities=[image]"], "MGCN needs two modalities"),
    (["-m", "LightGCN", "--set", "use_neg_sampling=false"], "it needs use_neg_sampling: true"),
    (["-m", "LightGCN+SEA"], "LightGCN cannot take +SEA"),
])
def test_a_model_that_refuses_its_data_says_so_in_one_line(tmp_path, capsys, args, message):
    argv = [*args, *[a for s in TINY for a in ("--set", s)], "--no-grid", "--epochs", "1",
            "--out", str(tmp_path / "runs")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_argparse_level_errors(tmp_path, capsys):
    for args in (["--backend", "cuda"], ["--epochs", "many"], ["--resume", str(tmp_path),
                                                               "--model", "FREEDOM"]):
        with pytest.raises(SystemExit) as info:
            train.main(args)
        assert info.value.code == 2
    assert "takes no model, dataset or config options" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert recommend.main(["--run", str(tmp_path), "--user", "1"]) == 2


def test_show_config_and_list_models(capsys):
    assert train.main(["--model", "FREEDOM", "--show-config", "--set", "dropout=0.9"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["dropout"] == 0.9 and shown["knn_k"] == 10 and shown["model"] == "FREEDOM"
    assert train.main(["--list-models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert {"FREEDOM", "LightGCN"} <= set(listed) and "DREPMREC  (also: DREAM)" in listed
    assert "DREAM" not in models.available() and models.aliases("DREPMREC") == ["DREAM"]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfast.train", "--epochs", "500", "--device", "cpu",
         "--out", str(out), "--progress", "lines", *_sets("n_layers=1", "reg_weight=0.0",
                                                          "stopping_step=500")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell running this suite in the background ignores SIGINT, and a child inherits
        # that (Python then installs no KeyboardInterrupt handler): restore the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 90
    while time.time() < deadline and not list(out.glob("*/last.pt")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run_dir = _run_dir(out)
    assert "--resume" in err and str(run_dir) in err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    saved = torch.load(run_dir / "last.pt", weights_only=False)
    assert saved["epoch"] >= 0 and len(saved["history"]) == saved["epoch"] + 1
    assert not list(run_dir.glob(".*.tmp"))  # no half-written files left behind


def test_import_registers_an_outside_model(tmp_path, monkeypatch, capsys):
    """A model from another package: registered by name, trained without touching the trainer."""
    (tmp_path / "my_models.py").write_text(
        "from mmfast.models import LightGCN, register\n"
        "@register('TinyMF')\n"
        "class TinyMF(LightGCN):\n"
        "    defaults = {'embedding_size': 16, 'n_layers': 0, 'reg_weight': 0.0}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    rc = train.main(["--import", "my_models", "-m", "TinyMF", "--epochs", "1", "--device", "cpu",
                     "--out", str(out), "--progress", "lines", *_sets()])
    assert rc == 0
    config = yaml.safe_load((_run_dir(out) / "config.yaml").read_text())
    assert config["model"] == "TinyMF" and config["embedding_size"] == 16
    with pytest.raises(SystemExit):
        train.main(["--import", "no_such_module_xyz", "--list-models"])
    # A fresh process reloads the run with the same --import.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    shown = subprocess.run([sys.executable, "-m", "mmfast.recommend", "--import", "my_models",
                            "--run", str(_run_dir(out)), "--user", "0", "--k", "3"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.strip().splitlines()) == 4  # header + 3 items
