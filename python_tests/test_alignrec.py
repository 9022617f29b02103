"""ALIGNREC (AlignRec stage 2): shapes, training, both backends equal, every switch, the feature
sources and their record, the warm-up, bad input; and its defaults (grid, default point)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfast import models, train
from mmfast.data import load_dataset
from mmfast.ops import solosim_loss, use_backend
from mmfast.trainer import config as cfg
from mmfast.trainer import run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    TINY, build_model, one_batch, one_thread, private_cache, tiny_config, with_features,
)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("ALIGNREC", epochs=1))


def build(dataset, *sets, seed=0):
    return build_model("ALIGNREC", dataset, *sets, seed=seed)


def test_defaults_grid_and_default_point():
    config = models.get("ALIGNREC").default_config()
    assert config["learning_rate_scheduler"] == [0.96, 50] and config["stopping_step"] == 30
    full = tiny_config("ALIGNREC")
    assert len(cfg.grid_points(full)) == 7 * 5 * 5
    (point,) = cfg.grid_points(dict(full, no_grid=True))
    assert (point["learning_rate"], point["cl_loss"], point["sim_weight"]) == (1e-3, 0.01, 0.1)
    assert models.get("alignrec") is models.get("ALIGNREC")


def test_shapes_and_feature_record(tiny):
    model, _ = build(tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    info = model.run_info()["features"]
    width = sum(tiny.features[m].shape[1] for m in tiny.modalities)
    assert info["source"] == "concat" and info["modalities"] == tiny.modalities
    assert info["dim"] == width and model.features.shape == (tiny.n_items, width)
    assert "features: concat" in str(model)
    assert model.features.requires_grad  # fine-tuned, as the reference
    image, _ = build(tiny, "feature_source=image")
    assert image.features.shape[1] == tiny.features["image"].shape[1]


def test_loss_decreases(tiny):
    model, _ = build(tiny)
    opt = torch.optim.Adam(model.model_parameters(), lr=0.01)
    users, pos, neg = one_batch(tiny)
    losses = [float(model.train_step(users, pos, neg, opt)) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_both_backends_agree_at_one_step(tiny):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build(tiny, seed=3)
        model.double()
        with use_backend(backend):
            loss = model.calculate_loss(users, pos, neg)
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and {"features", "ids.user.weight", "project.weight",
                                       "purifier.gate.weight"} <= set(ga)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10, msg=n)


def test_loss_terms_as_the_reference(tiny):
    """The total is BPR + reg/B_config + cl_loss NCE + 0.1 UI + sim_weight sim, term by term."""
    model, point = build(tiny, "cl_loss=0.5", "sim_weight=0.3", "train_batch_size=1000")
    model.double()
    users, pos, neg = one_batch(tiny, size=64)
    with torch.no_grad():
        h_u, h_i, m_u, m_i = model.lines()
        z_u, z_i = h_u + m_u, h_i + m_i
        u, p, n = z_u[users], z_i[pos], z_i[neg]
        bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
        reg = 1e-4 * 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / 1000
        cl = solosim_loss(m_i[pos], h_i[pos], 0.2) + solosim_loss(m_u[users], h_u[users], 0.2)
        ui = 1 - torch.nn.functional.cosine_similarity(u, p).mean()
        f = torch.nn.functional.normalize(model.features[pos], dim=1)
        sim = torch.linalg.norm(m_i[pos] @ m_i[pos].T - f @ f.T) / 64
        want = bpr + reg + 0.5 * cl + 0.1 * ui + 0.3 * sim
        torch.testing.assert_close(model.calculate_loss(users, pos, neg), want)


SWITCHES = [
    ["sim_target=frozen"], ["side_emb_div=2"], ["use_ln=true"], ["freeze_features=true"],
    ["ui_cosine_loss=false"], ["warmup_ui=true"], ["feature_source=text"], ["n_layers=2"],
    ["cl_loss=0", "sim_weight=0"],
]


@pytest.mark.parametrize("sets", SWITCHES, ids=lambda s: ",".join(s))
def test_every_switch_trains(tiny, sets):
    model, _ = build(tiny, *sets)
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    before = model.ids.item.weight.detach().clone()
    loss = model.train_step(users, pos, neg, opt)
    assert torch.isfinite(loss) and not torch.equal(before, model.ids.item.weight)
    assert opt.param_groups[0]["lr"] == 1e-3  # the warm-up ramp never leaks into the schedule
    assert model.features.requires_grad == ("freeze_features=true" not in sets)


def test_sim_target_current_drifts_and_frozen_stays(tiny):
    users, pos, neg = one_batch(tiny)
    out = {}
    for target in ("current", "frozen"):
        model, _ = build(tiny, f"sim_target={target}", "learning_rate=0.05")
        opt = torch.optim.Adam(model.model_parameters(), lr=0.05)
        for _ in range(3):
            model.train_step(users, pos, neg, opt)
        out[target] = model
    assert not torch.equal(out["current"].features.detach(), out["current"].input_features)
    assert torch.equal(out["frozen"].input_features,
                       torch.from_numpy(np.concatenate([tiny.features[m] for m in tiny.modalities], 1)))


def test_warmup_drops_bpr_and_ramps_the_rate(tiny):
    model, _ = build(tiny, "warmup_ui=true", "warmup_epochs=4", "cl_loss=0", "sim_weight=0",
                     "reg_weight=0")
    users, pos, neg = one_batch(tiny)
    model.current_epoch = 0
    assert float(model.calculate_loss(users, pos, neg).detach()) == 0.0  # only BPR/UI would remain
    model.current_epoch = 4
    assert float(model.calculate_loss(users, pos, neg).detach()) > 0.0
    seen = []

    class Probe(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = Probe(model.model_parameters(), lr=1.0)
    for epoch in (0, 1, 3, 4):
        model.current_epoch = epoch
        model.train_step(users, pos, neg, opt)
    assert seen == pytest.approx([0.25, 0.5, 1.0, 1.0]) and opt.param_groups[0]["lr"] == 1.0


def test_fused_file_trains_and_is_recorded(tmp_path):
    config = tiny_config("ALIGNREC", epochs=1)
    ds = load_dataset(config)
    root = tmp_path / "data"
    from mmfast.data import write_mmrec

    write_mmrec(ds, root, "tinyset")
    fused = tmp_path / "fused.npy"
    np.save(fused, np.random.default_rng(0).standard_normal((ds.n_items, 24)).astype(np.float32))
    fused.with_suffix(".json").write_text(json.dumps({"made_by": "test", "modalities": ["x"]}))
    config = cfg.resolve("ALIGNREC", "tinyset", model_defaults=models.get("ALIGNREC").default_config(),
                         overrides=[*TINY[3:], "no_grid=true", f"fused_feature={fused}"],
                         cli={"device": "cpu", "epochs": 1, "data_path": str(root)})
    result = run(config, out=tmp_path / "runs", console=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    info = metrics["model_info"]["features"]
    assert info["source"] == "fused" and info["dim"] == 24 and info["file"] == str(fused)
    assert info["made_by"]["made_by"] == "test"
    log = next(result.run_dir.glob("*.log")).read_text()
    assert f"features: fused ['fused'] 24-d from {fused} (made by test" in log


def test_bad_input(tiny, tmp_path, capsys):
    image = tiny.features["image"]
    with pytest.raises(ValueError, match="needs item features"):
        build(with_features(tiny))
    bad = image.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="features hold NaN"):
        build(with_features(tiny, image=bad))
    with pytest.raises(ValueError, match="feature_source must be auto, fused, concat"):
        build(tiny, "feature_source=audio")
    with pytest.raises(ValueError, match="needs a fused feature file"):
        build(tiny, "feature_source=fused")
    with pytest.raises(ValueError, match="sim_target must be one of"):
        build(tiny, "sim_target=raw")
    model, _ = build(tiny)
    with pytest.raises(ValueError, match="masking 'audio' needs per-modality"):
        model.mask_modality("audio", torch.arange(3))
    # The command line: a fused file with the wrong row count, NaN rows, a missing file.
    root = tmp_path / "data"
    from mmfast.data import write_mmrec

    write_mmrec(tiny, root, "tinyset")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((tiny.n_items - 1, 8), dtype=np.float32))
    nan = tmp_path / "nan.npy"
    arr = np.ones((tiny.n_items, 8), dtype=np.float32)
    arr[7] = np.nan
    np.save(nan, arr)
    out = tmp_path / "runs"
    for path, message in ((wrong, f"({tiny.n_items} rows"), (nan, "row 7 (item 7) holds NaN"),
                          (tmp_path / "missing.npy", "feature file not found")):
        rc = train.main(["-m", "ALIGNREC", "-d", "tinyset", "--data-root", str(root), "--no-grid",
                         "--epochs", "1", "--device", "cpu", "--out", str(out),
                         "--set", f"fused_feature={path}"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_resumes_bit_identically_through_the_warmup(tmp_path):
    from mmfast.trainer import TrainingInterrupted
    from trainer_helpers import ctrl_c_at_epoch_call

    config = tiny_config("ALIGNREC", "no_grid=true", "warmup_ui=true", "warmup_epochs=2", epochs=2)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"] and a["model_info"] == b["model_info"]
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
