"""Config layers, checks and the grid (MODELS.md §1.5)."""
from __future__ import annotations

import pytest
import yaml

from mmfast.trainer import config as cfg


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A private package config tree where each layer sets `lr` (and `tag`) differently."""
    root = tmp_path / "configs"
    (root / "dataset").mkdir(parents=True)
    (root / "model").mkdir()
    overall = yaml.safe_load((cfg.CONFIG_DIR / "overall.yaml").read_text())
    overall.update(learning_rate=0.1, weight_decay=0.0, tag="overall", only_overall=1)
    (root / "overall.yaml").write_text(yaml.safe_dump(overall))
    (root / "dataset" / "toy.yaml").write_text(yaml.safe_dump(
        {"learning_rate": 0.2, "tag": "dataset", "only_dataset": 2}))
    (root / "model" / "Toy.yaml").write_text(yaml.safe_dump(
        {"learning_rate": 0.3, "tag": "model", "reg": [1, 2], "hyper_parameters": ["reg"]}))
    monkeypatch.setattr(cfg, "CONFIG_DIR", root)
    monkeypatch.setattr("mmfast.configs.CONFIG_DIR", root)  # where the YAML paths are made
    return root


def test_merge_order_overall_dataset_model_file_cli(config_dir, tmp_path):
    c = cfg.resolve("Toy", "toy")
    assert (c["learning_rate"], c["tag"], c["only_overall"], c["only_dataset"]) == (0.3, "model", 1, 2)
    f = tmp_path / "mine.yaml"
    f.write_text("learning_rate: 0.4\ntag: file\n")
    c = cfg.resolve("Toy", "toy", config_file=f)
    assert (c["learning_rate"], c["tag"]) == (0.4, "file")
    c = cfg.resolve("Toy", "toy", config_file=f, overrides=["learning_rate=5e-4"])
    assert (c["learning_rate"], c["tag"]) == (5e-4, "file")
    c = cfg.resolve("Toy", "toy", config_file=f, overrides=["tag=set"], cli={"tag": "flag"})
    assert c["tag"] == "flag"
    assert (c["model"], c["dataset"]) == ("Toy", "toy")


def test_dataset_without_yaml_and_model_defaults_from_class(config_dir):
    c = cfg.resolve("Other", "mydata", model_defaults={"embedding_size": 32})
    assert c["embedding_size"] == 32 and c["learning_rate"] == 0.1 and "only_dataset" not in c


def test_unknown_keys_are_errors_with_suggestions(config_dir, tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"unknown config key 'learning_rat'.*learning_rate"):
        cfg.resolve("Toy", "toy", overrides=["learning_rat=0.1"])
    f = tmp_path / "bad.yaml"
    f.write_text("no_such_key: 1\n")
    with pytest.raises(cfg.ConfigError, match=r"unknown config key 'no_such_key' \(from .*bad.yaml\)"):
        cfg.resolve("Toy", "toy", config_file=f)
    with pytest.raises(cfg.ConfigError, match="synthetic.n_user"):
        cfg.resolve("LightGCN", "synthetic", overrides=["synthetic.n_user=3"])


@pytest.mark.parametrize("override, message", [
    ("learning_rate=fast", "expects a number"),
    ("epochs=0", "epochs must be a positive integer"),
    ("stopping_step=-1", "stopping_step must be"),
    ("selection=best", "selection must be"),
    ("valid_metric=recall@7", "valid_metric"),
    ("hyper_parameters=[nope]", "names 'nope'"),
    ("learning_rate_scheduler=[0.9]", "learning_rate_scheduler"),
    ("noequals", "key=value"),
    ("learning_rate=[1, 2", "not valid YAML"),
])
def test_bad_values(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.resolve("LightGCN", "synthetic", overrides=[override])


def test_config_file_must_be_a_mapping_and_agree_on_model(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(cfg.ConfigError, match="must hold a mapping"):
        cfg.resolve("LightGCN", "synthetic", config_file=f)
    f.write_text("model: FREEDOM\n")
    with pytest.raises(cfg.ConfigError, match="choose it with --model"):
        cfg.resolve("LightGCN", "synthetic", config_file=f)
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.resolve("LightGCN", "synthetic", config_file=tmp_path / "missing.yaml")


def test_grid_is_mmrec_product_with_seed_first():
    c = cfg.resolve("LightGCN", "synthetic")  # MMRec's grid: 4 layers x 5 reg weights
    points = cfg.grid_points(c)
    assert len(points) == 20
    assert cfg.grid_keys(c) == ["seed", "n_layers", "reg_weight"]
    assert [(p["n_layers"], p["reg_weight"]) for p in points[:6]] == [
        (1, 1e-2), (1, 1e-3), (1, 1e-4), (1, 1e-5), (1, 1e-6), (2, 1e-2)]
    one = cfg.resolve("LightGCN", "synthetic", overrides=["n_layers=3", "reg_weight=1e-3",
                                                          "seed=[1, 2]"])
    assert [(p["seed"], p["n_layers"]) for p in cfg.grid_points(one)] == [(1, 3), (2, 3)]
    # A list under a key not named in hyper_parameters is a value, not an axis.
    assert cfg.grid_points(c)[0]["learning_rate_scheduler"] == [1.0, 50]


def test_yaml_1_2_floats():
    assert cfg.parse_override("x=1e-4") == ("x", 1e-4)
    assert cfg.parse_override("x=[1e-3, 2, abc]") == ("x", [1e-3, 2, "abc"])
    assert cfg.parse_override("a.b=null") == ("a.b", None)
