from __future__ import annotations

import pytest
import yaml

from facerec.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    known_keys,
    load_config,
    save_config,
)


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("optim:\n  lr: 0.05\nloss:\n  name: arcface\n  params: {scale: 16}\n")
    cfg = load_config(f, ["optim.lr=0.01", "loss.params.margin=0.3", "data.augment=flip", "train.compile=true"])
    assert cfg.optim.lr == 0.01  # override beats file
    assert cfg.loss.name == "arcface"
    assert cfg.loss.params == {"scale": 16, "margin": 0.3}
    assert cfg.data.augment == "flip" and cfg.train.compile is True
    assert cfg.optim.momentum == Config().optim.momentum  # untouched default


def test_unknown_key_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'data.batchsize'.*data.batch_size"):
        load_config(None, ["data.batchsize=3"])
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(f)


def test_type_errors_are_reported():
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_is_parsed_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("optim: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid UTF-8 YAML"):
        load_config(f)


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(None, ["loss.name=cosface", "model.embedding_dim=64"])
    cfg.loss.extra = config_from_dict({"loss": {"extra": [{"name": "center", "weight": 0.01}]}}).loss.extra
    save_config(cfg, tmp_path / "c.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.loss.extra[0].name == "center" and again.loss.extra[0].weight == 0.01


def test_known_keys_cover_every_section():
    keys = known_keys()
    assert {"data.root", "model.backbone", "loss.name", "optim.lr", "train.epochs"} <= set(keys)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", r"data.batch_size=0 is out of range: must be >= 1"),
        ("optim.lr=-0.1", r"optim.lr=-0.1 is out of range: must be > 0.0"),
        ("optim.lr=0", r"optim.lr=0.0 is out of range: must be > 0.0"),
        ("data.holdout=1.5", r"data.holdout=1.5 is out of range: must lie in \[0.0, 1.0\)"),
        ("data.holdout=1", r"data.holdout=1.0 is out of range: must lie in \[0.0, 1.0\)"),
        ("train.ema=-0.5", r"train.ema=-0.5 is out of range"),
        ("train.epochs=0", r"train.epochs=0 is out of range: must be >= 1"),
        ("optim.schedule=linear", r"optim.schedule='linear' is not a valid choice; choose one of \['cosine'"),
        ("train.amp=fp8", r"train.amp='fp8' is not a valid choice"),
    ],
)
def test_values_out_of_range_name_the_key_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_range_edges_are_accepted(tmp_path):
    cfg = load_config(None, ["data.holdout=0.0", "data.batch_size=1", "train.ema=0.0", "optim.gamma=1.0"])
    assert (cfg.data.holdout, cfg.data.batch_size, cfg.train.ema, cfg.optim.gamma) == (0.0, 1, 0.0, 1.0)
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  batch_size: -4\n")
    with pytest.raises(ConfigError, match="data.batch_size=-4"):
        load_config(f)  # values from a recipe file are checked too


def test_every_shipped_recipe_passes_the_checks():
    from facerec.config import describe_recipes, recipe_path

    for name in describe_recipes():
        load_config(recipe_path(name))


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("optim.learning_rate", "optim.lr"),
        ("data.batchsize", "data.batch_size"),
        ("train.epoch", "train.epochs"),
        ("model.embeding_dim", "model.embedding_dim"),
        ("optim.wd", "optim.weight_decay"),
    ],
)
def test_unknown_key_suggests_the_closest(typo, meant):
    from facerec.config import closest_key

    assert closest_key(typo) == meant
    with pytest.raises(ConfigError, match=rf"unknown config key '{typo}'; did you mean '{meant}'\?"):
        load_config(None, [f"{typo}=1"])


def test_unknown_key_without_a_close_one_lists_all():
    from facerec.config import closest_key

    assert closest_key("zzz.qqqqqq") is None
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz.qqqqqq' Known keys: data.root"):
        load_config(None, ["zzz.qqqqqq=1"])


def test_recipe_descriptions_are_whole_sentences():
    from facerec.config import describe_recipes

    described = describe_recipes()
    assert described["cpu_robust"].endswith("about an hour on 2 cores for facehw.")
    assert "`robust` augmentation" in described["cpu_robust"]  # runs over two comment lines
    assert all(text.endswith(".") for text in described.values())


def test_cli_reports_a_bad_value_without_a_traceback(tmp_path, capsys):
    from facerec.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "data.batch_size=0"]) == 1
    err = capsys.readouterr().err
    assert "data.batch_size=0 is out of range: must be >= 1" in err and "Traceback" not in err
    assert not out.exists()  # stopped before the run folder was made


def test_recipe_study_candidates_resolve_to_valid_configs(monkeypatch):
    """Every candidate of bench/recipe_study.py names a shipped recipe, known keys and registered parts."""
    import importlib
    from pathlib import Path

    from facerec.config.recipes import recipe_path
    from facerec.registry import BACKBONES, LOSSES

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    study = importlib.import_module("recipe_study")
    assert {"cpu_robust", "cpu_robust_m", "cpu_robust_drop_wd"} <= set(study.CANDIDATES)
    for name, (recipe, overrides) in study.CANDIDATES.items():
        cfg = load_config(recipe_path(recipe), overrides)
        assert cfg.model.backbone in BACKBONES.describe(), name
        assert cfg.loss.name in LOSSES.describe(), name
    with pytest.raises(ConfigError):
        load_config(recipe_path("cpu_robust"), ["model.dropuot=0.4"])  # a misspelt key fails the candidate
