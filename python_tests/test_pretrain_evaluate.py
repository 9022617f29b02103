"""``python -m mmfast.pretrain`` (AlignRec stage 1) and ``python -m mmfast.evaluate`` (the
intermediate metrics, run re-evaluation, masking) on the tiny synthetic set; stage 1 -> stage 2."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmfast import evaluate, pretrain, train
from mmfast.data.synthetic import generate_with_latents
from mmfast.nn import ContentAligner
from trainer_helpers import TINY, one_thread, private_cache  # noqa: F401 (autouse fixtures)

SETS = [a for s in TINY[:3] for a in ("--set", s)]  # the tiny synthetic set's sizes


@pytest.fixture(scope="module")
def tiny_latents():
    return generate_with_latents(400, 200, 6000)


def _pretrain(out, *extra):
    return pretrain.main([*SETS, "--out", str(out), "--epochs", "3", "--batch-size", "64",
                          "--progress", "lines", *extra])


def test_pretrain_writes_features_and_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    full = tmp_path / "full.npy"
    assert _pretrain(full) == 0
    feats = np.load(full)
    meta = json.loads(full.with_suffix(".json").read_text())
    assert feats.shape == (meta["shape"][0], 128) and np.isfinite(feats).all()
    assert meta["made_by"] == "mmfast.pretrain" and meta["modalities"] == {"image": 256, "text": 64}
    assert meta["epochs"] == 3 and meta["settings"]["seed"] == 999
    losses = [e["loss"] for e in meta["history"]]
    assert losses[-1] < losses[0]

    part = tmp_path / "part.npy"
    original, calls = ContentAligner.loss, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # inside epoch 1 (4 batches an epoch)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ContentAligner, "loss", interrupted)
    assert _pretrain(part) == 130
    assert "--resume" in capsys.readouterr().err and not part.exists()
    monkeypatch.setattr(ContentAligner, "loss", original)
    assert pretrain.main(["--out", str(part), "--resume", "--progress", "lines"]) == 0
    assert np.array_equal(np.load(part), feats)
    resumed = json.loads(part.with_suffix(".json").read_text())
    assert [e["loss"] for e in resumed["history"]] == losses


def test_pretrain_bad_input(tmp_path, capsys):
    out = tmp_path / "x.npy"
    for args, message in ((["--modalities", "image"], "two or more modalities"),
                          (["--modalities", "image", "audio"], "no ['audio'] features"),
                          (["--epochs", "0"], "must be positive"),
                          (["--resume"], "no dataset or training options")):
        assert _pretrain(out, *args) == 2
        assert message in capsys.readouterr().err
    assert pretrain.main(["--out", str(out), "--resume"]) == 2
    assert "no " in capsys.readouterr().err
    assert pretrain.main(["--out", str(tmp_path / "x.txt")]) == 2
    assert not list(tmp_path.iterdir())


def test_stage1_then_stage2_end_to_end(tmp_path):
    stage1 = tmp_path / "stage1.npy"
    assert _pretrain(stage1, "--dim", "32") == 0
    out = tmp_path / "runs"
    assert train.main(["-m", "ALIGNREC", "--no-grid", "--epochs", "2", "--device", "cpu",
                       "--out", str(out), "--progress", "lines", *SETS,
                       "--set", f"fused_feature={stage1}"]) == 0
    (run_dir,) = out.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = metrics["model_info"]["features"]
    assert info["source"] == "fused" and info["dim"] == 32
    assert info["made_by"]["made_by"] == "mmfast.pretrain"
    assert "made by mmfast.pretrain" in next(run_dir.glob("*.log")).read_text()
    assert metrics["best"]["valid"]["recall@20"] > 0


def test_feature_metrics_see_the_preference_signal(tmp_path, tiny_latents, capsys):
    ds, latents = tiny_latents
    good, noise = tmp_path / "latent.npy", tmp_path / "noise.npy"
    np.save(good, latents["item_factors"])
    np.save(noise, np.random.default_rng(0).standard_normal((ds.n_items, 16)).astype(np.float32))
    report = tmp_path / "out.json"
    assert evaluate.main(["-d", "synthetic", *SETS, "--features", str(good), "--features",
                          str(noise), "--features", "concat", "--topk", "10", "20",
                          "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "latent zero_shot  valid" in table and "recall@20" in table
    res = json.loads(report.read_text())["features"]
    for method in ("zero_shot", "item_cf"):
        latent = res["latent"][method]["valid"]["recall@20"]
        rand = res["noise"][method]["valid"]["recall@20"]
        assert latent > 3 * rand and latent > 0.2, (method, latent, rand)
        assert res["concat(image+text)"][method]["test"]["recall@20"] > 2 * rand


def test_evaluate_a_run_and_mask_a_modality(tmp_path, capsys, tiny_latents):
    out = tmp_path / "runs"
    assert train.main(["-m", "ALIGNREC", "--no-grid", "--epochs", "2", "--device", "cpu",
                       "--out", str(out), "--progress", "lines", *SETS]) == 0
    (run_dir,) = out.iterdir()
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    capsys.readouterr()
    plain = tmp_path / "plain.json"
    assert evaluate.main(["--run", str(run_dir), "--json", str(plain)]) == 0
    again = json.loads(plain.read_text())
    assert again["valid"] == best["valid"] and again["test"] == best["test"]
    masked = tmp_path / "masked.json"
    assert evaluate.main(["--run", str(run_dir), "--mask-modality", "image", "--ratio", "1.0",
                          "--json", str(masked)]) == 0
    res = json.loads(masked.read_text())
    n_items = tiny_latents[0].n_items
    assert res["mask"] == {"modality": "image", "ratio": 1.0, "seed": 999, "items": n_items}
    assert res["valid"] != best["valid"]
    assert "masked image 1" in capsys.readouterr().out
    # bad input: another dataset, an unknown modality, masking a fused-feature run
    for args, message in ((["-d", "tiktok"], "was trained on dataset 'synthetic', not 'tiktok'"),
                          (["--mask-modality", "audio"], "the run's dataset has ['image', 'text']"),
                          (["--ratio", "0.5"], "--ratio needs --mask-modality")):
        assert evaluate.main(["--run", str(run_dir), *args, "--json", str(tmp_path / "no.json")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    fused = tmp_path / "fused.npy"
    np.save(fused, np.random.default_rng(1).standard_normal((n_items, 4)).astype(np.float32))
    out2 = tmp_path / "runs2"
    assert train.main(["-m", "ALIGNREC", "--no-grid", "--epochs", "1", "--device", "cpu",
                       "--out", str(out2), "--progress", "lines", *SETS,
                       "--set", f"fused_feature={fused}"]) == 0
    (fused_run,) = out2.iterdir()
    capsys.readouterr()
    assert evaluate.main(["--run", str(fused_run), "--mask-modality", "image"]) == 2
    assert "masking needs per-modality features" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()


def test_evaluate_bad_features(tmp_path, capsys, tiny_latents):
    ds, _ = tiny_latents
    wrong, nan = tmp_path / "wrong.npy", tmp_path / "nan.npy"
    np.save(wrong, np.zeros((ds.n_items + 1, 4), dtype=np.float32))
    arr = np.ones((ds.n_items, 4), dtype=np.float32)
    arr[3, 0] = np.nan
    np.save(nan, arr)
    report = tmp_path / "r.json"
    for spec, message in ((wrong, f"({ds.n_items} rows"), (nan, "row 3 (item 3) holds NaN"),
                          (tmp_path / "missing.npy", "feature file not found"),
                          ("audio", "not a file, 'concat' or one of the dataset's modalities")):
        assert evaluate.main(["-d", "synthetic", *SETS, "--features", "image", "--features",
                              str(spec), "--json", str(report)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert evaluate.main(["--features", "image", "--json", str(report)]) == 2
    assert "needs -d DATASET" in capsys.readouterr().err
    assert not report.exists()
    run_dir = tmp_path / "not-a-run"
    run_dir.mkdir()
    assert evaluate.main(["--run", str(run_dir)]) == 2
    assert "no best.pt" in capsys.readouterr().err
