"""Plug-ins that compose (``-m Base+SEA``, ``-m Base+BMA``): the registry builds each pair once,
pickle and checkpoints find it by name, one YAML layer per plug-in (plus a logged pair layer), a
model that cannot take a plug-in says so in one line, a model registered from outside takes
them, resume is bit-identical and ``recommend`` rebuilds a composed run."""
from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from mmfast import models, recommend, train
from mmfast.configs import ConfigError, load_yaml, merge, model_config_path
from mmfast.data import load_dataset
from mmfast.models import PluginViews, Recommender, register
from mmfast.models import registry
from mmfast.nn import BehaviorModalAlignment, LightGCNEmbeddings, ModalityProjection, bpr_loss
from mmfast.nn.lift import UserLift
from mmfast.trainer import TrainingInterrupted, run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_same_run,
    TINY, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
)
from trainer_helpers import build_model as build

pytestmark = pytest.mark.filterwarnings("ignore:SeparateLearning. negative-L2")


class _ToyBase(Recommender):
    """A small protocol model from outside the package: LightGCN IDs plus projected features."""

    defaults = {"embedding_size": 16}

    def __init__(self, config, dataset, device):
        super().__init__(config, dataset, device)
        d = int(config["embedding_size"])
        self.ids = LightGCNEmbeddings(self.n_users, self.n_items, d)
        raw = {m: dataset.feature(m).float() for m in dataset.modalities}
        self.proj = ModalityProjection(raw, d)
        self.adj = dataset.norm_adj()
        self.lift = UserLift(dataset.user_item_lift())

    def lines(self):
        u, i = self.ids(self.adj, 1)
        m_i = sum(self.proj(m) for m in self.proj.modalities)
        return u, i, self.lift(m_i), m_i

    def loss_and_views(self, users, positives, negatives):
        u, i, m_u, m_i = self.lines()
        z_u, z_i = u + m_u, i + m_i
        loss = bpr_loss(z_u[users], z_i[positives], z_i[negatives])
        return loss, self.views(u, i, m_u, m_i)

    def views(self, u, i, m_u, m_i):
        return PluginViews(behavior=(u, i), modal=(m_u, m_i), modal_features=lambda rows: {
            m: self.proj(m, rows) for m in self.proj.modalities})

    def modal_feature_dims(self):
        return {m: 16 for m in self.proj.modalities}

    @torch.no_grad()
    def embeddings(self):
        u, i, m_u, m_i = self.lines()
        return u + m_u, i + m_i


@register("ToyViews")
class ToyViews(_ToyBase):
    plugin_views = ("behavior", "modal", "modal_features")


@register("ToyUndeclared")
class ToyUndeclared(_ToyBase):
    """Implements loss_and_views, declares nothing, gives no modal view."""

    def views(self, u, i, m_u, m_i):
        return PluginViews(behavior=(u, i))


@register("ToyBehaviorOnly")
class ToyBehaviorOnly(_ToyBase):
    plugin_views = ("behavior",)


@register("ToyClash")
class ToyClash(ToyViews):
    defaults = {"embedding_size": 16, "temperature": 0.5}


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("FREEDOM", epochs=1))


# ----------------------------------------------------------------------------- composition
def test_composition_is_cached_named_and_picklable():
    cls = models.get("freedom+sea")
    assert cls is models.get("FREEDOM+SEA") is models.get("Freedom+Sea")
    assert models.canonical("freedom+sea") == "FREEDOM+SEA" == cls.__name__
    assert models.canonical("vbpr+bma") == "VBPR+BMA"
    assert issubclass(cls, models.get("FREEDOM")) and cls.plugins == ("SEA",)
    assert cls.plugin_needs == {"modal_features"}
    assert pickle.loads(pickle.dumps(cls)) is cls
    chained = models.get("freedom+sea+bma")
    assert chained.__name__ == "FREEDOM+SEA+BMA" and chained.plugins == ("SEA", "BMA")
    assert chained.plugin_needs == {"modal_features", "behavior", "modal"}
    # A fresh process (empty cache) rebuilds the class from its pickled name.
    blob = pickle.dumps(chained)
    registry._COMPOSED.clear()
    again = pickle.loads(blob)
    assert again is models.get("FREEDOM+SEA+BMA") and again is not chained
    assert "FREEDOM+SEA" not in models.available()  # combinations are listed on their own


def test_chained_plugins_train_and_skip_unread_views(tiny):
    model, _ = build("FREEDOM+SEA+BMA", tiny, "club_steps=2")
    assert hasattr(model, "separate") and hasattr(model, "bma") and model.lift is not None
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    model.pre_epoch_processing()
    users, pos, neg = one_batch(tiny)
    assert torch.isfinite(model.train_step(users, pos, neg, opt))
    assert build("FREEDOM+SEA", tiny)[0].lift is None  # SEA reads no modal view: no R̂ built


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_model_that_cannot_take_a_plugin_says_so_in_one_line(tiny, capsys):
    with pytest.raises(registry.PluginRefusedError) as info:
        models.get("LightGCN+SEA")
    assert "does not implement loss_and_views" in _one_line(info) and "modal_features" in str(
        info.value)
    with pytest.raises(registry.PluginRefusedError) as info:
        models.get("ToyBehaviorOnly+BMA")
    assert "its PluginViews has no modal" in _one_line(info)
    with pytest.raises(registry.PluginRefusedError, match="has the SEA plug-in already"):
        models.get("FREEDOM+SEA+SEA")
    with pytest.raises(models.UnknownModelError, match="unknown plug-in 'XYZ'.*BMA, SEA"):
        models.get("FREEDOM+XYZ")
    # An undeclared model composes, and its first step names the missing view.
    model, _ = build("ToyUndeclared+BMA", tiny)
    with pytest.raises(ValueError) as info:
        model.calculate_loss(*one_batch(tiny))
    assert "gives no modal view, which the BMA plug-in needs" in _one_line(info)
    # The command line: one line on stderr, exit 2.
    assert train.main(["-m", "LightGCN+BMA", "--show-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: LightGCN cannot take +BMA") and "\n" not in err


# ----------------------------------------------------------------------------- configuration
def test_config_layers(tmp_path, monkeypatch):
    freedom = models.get("FREEDOM").default_config("synthetic")
    bma = load_yaml(registry.plugin_config_path("BMA"))
    sea = load_yaml(registry.plugin_config_path("SEA"))
    assert models.get("FREEDOM+BMA").default_config("synthetic") == merge(freedom, bma)
    pair = load_yaml(model_config_path("FREEDOM+SEA"))
    assert models.get("FREEDOM+SEA").default_config("synthetic") == merge(merge(freedom, sea), pair)
    assert not model_config_path("FREEDOM+BMA").exists()  # no logged pair setting: no layer
    got = models.get("FREEDOM+SEA").default_config()
    assert (got["hidden_dim"], got["out_dim"], got["dropout"], got["learning_rate"]) == (
        33, 63, 0.8, 1e-3)
    assert models.get("VBPR+SEA").default_config()["hidden_dim"] == sea["hidden_dim"] == 64
    # A plug-in's per-dataset layer, as a model's.
    (tmp_path / "BMA").mkdir()
    (tmp_path / "BMA.yaml").write_text("temperature: 0.2\ninter_weight: 0.01\n")
    (tmp_path / "BMA" / "synthetic.yaml").write_text("inter_weight: 0.5\n")
    monkeypatch.setattr(registry, "plugin_config_path", lambda p: tmp_path / f"{p}.yaml")
    assert models.get("FREEDOM+BMA").default_config("synthetic")["inter_weight"] == 0.5
    assert models.get("FREEDOM+BMA").default_config("tiktok")["inter_weight"] == 0.01
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"BMA plug-in's keys \['temperature'\] are also keys"):
        models.get("ToyClash+BMA").default_config()


def test_list_models_shows_the_combinations(capsys):
    assert train.main(["--list-models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for name in ("FREEDOM+SEA", "FREEDOM+BMA", "VBPR+SEA", "VBPR+BMA", "ToyViews+SEA",
                 "ToyViews+BMA"):
        assert name in listed
    assert "ToyUndeclared+BMA  (views checked when training)" in listed
    assert not any(x.startswith(("LightGCN+", "SEA+", "ToyBehaviorOnly+")) for x in listed)


# ----------------------------------------------------------------------------- outside models
@pytest.mark.parametrize("name", ["ToyViews+SEA", "ToyViews+BMA", "ToyViews+BMA+SEA"])
def test_a_model_registered_from_outside_takes_plugins(tiny, name):
    model, _ = build(name, tiny, *(["club_steps=2"] if "SEA" in name else []))
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-2)
    users, pos, neg = one_batch(tiny)
    losses = [float(model.train_step(users, pos, neg, opt)) for _ in range(4)]
    assert losses[-1] < losses[0]
    bare = models.get("ToyViews")(model.config, tiny, "cpu")
    assert not hasattr(bare, "bma") and not hasattr(bare, "separate")


def test_import_then_compose_on_the_command_line(tmp_path, monkeypatch):
    (tmp_path / "my_protocol_models.py").write_text(
        "from mmfast.models import register\n"
        "from mmfast.models.vbpr import VBPR\n"
        "@register('MyVBPR')\n"
        "class MyVBPR(VBPR):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    sets = [a for s in TINY for a in ("--set", s)]
    rc = train.main(["--import", "my_protocol_models", "-m", "myvbpr+bma", "--epochs", "1",
                     "--device", "cpu", "--no-grid", "--out", str(out), "--progress", "lines",
                     *sets])
    assert rc == 0
    (run_dir,) = list(out.iterdir())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == "MyVBPR+BMA" and config["default_point"] == {"reg_weight": 2.0}
    assert config["inter_weight"] == 1e-2


# ----------------------------------------------------------------------------- runs
def test_composed_model_resumes_bit_identically(tmp_path):
    config = tiny_config("VBPR+SEA", "no_grid=true", "club_steps=5", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    registry._COMPOSED.clear()  # as in a new process: the saved name rebuilds the class
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert yaml.safe_load((info.value.folder / "config.yaml").read_text())["model"] == "VBPR+SEA"
    assert set(saved["auxiliary_optimizers"]) == {"club_q_shared"}
    resumed = run(resume=info.value.folder, console=False)
    assert_same_run(full, resumed)


def test_recommend_rebuilds_a_composed_run(tmp_path, capsys):
    result = run(tiny_config("FREEDOM+BMA", "no_grid=true", epochs=1), out=tmp_path,
                 console=False)
    trained = torch.load(result.run_dir / "best.pt", weights_only=False)
    registry._COMPOSED.clear()
    model, _ = recommend.load_run(result.run_dir)
    assert type(model).__name__ == "FREEDOM+BMA" and hasattr(model, "bma")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained["model"].items())
    assert recommend.main(["--run", str(result.run_dir), "--user", "3", "--k", "5"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "userID\trank\titemID\tscore" and len(rows) == 6


# ----------------------------------------------------------------------------- BMA
@pytest.mark.parametrize("detach_cross", [False, True])
def test_bma_normalizes_once_and_equals_the_per_term_sum(detach_cross):
    torch.manual_seed(0)
    xs = [torch.randn(64, 8, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    bma = BehaviorModalAlignment(inter_weight=0.3, intra_weight=0.7, detach_cross=detach_cross)
    fused = bma(*xs)
    per_term = 0.3 * bma.inter(*xs) + 0.7 * bma.intra(*xs)
    torch.testing.assert_close(fused, per_term, rtol=1e-13, atol=0)
    for g, h in zip(torch.autograd.grad(fused, xs), torch.autograd.grad(per_term, xs)):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-14)
