"""On real faces (a slice of ../shared/data/facehw): every shipped recipe learns, and a short run beats chance on
the open-set val pairs. Skipped when the data is absent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from facerec.config import load_config, recipe_path
from facerec.engine.progress import read_metrics
from facerec.engine.run import train

RECIPES = sorted(p.stem for p in (Path(__file__).parents[1] / "src/facerec/recipes").glob("*.yaml"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_learns_on_a_real_slice(recipe, facehw, tmp_path, cache):
    """Each recipe's loss, sampler and optimiser settings, on 16 real identities x 8 images, with the tiny backbone
    so that CI can afford it: training accuracy (or, for losses without a classifier, the loss) must move well
    away from chance (3x chance accuracy, or a 10% lower loss). Margin warm-up is shortened so the full margin is
    in force for the last epochs."""
    cfg = load_config(
        recipe_path(recipe),
        [
            f"data.root={facehw / 'classification_data' / 'train_data'}",
            "data.max_classes=16",
            "data.max_per_class=8",
            "data.p=8",
            "data.k=4",
            "data.batch_size=32",
            "model.backbone=tiny_cnn",
            "train.epochs=8",
            "train.log_every=1000",
            "optim.warmup_epochs=0.5",
            "train.device=cpu",
            "train.compile=false",
        ],
    )
    if "margin_warmup_epochs" in cfg.loss.params:
        cfg.loss.params["margin_warmup_epochs"] = 2
    if cfg.train.init_head and not cfg.train.init_from:  # a warm restart's recipe: restart a first run of its own
        first = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_head=False, epochs=2))
        train(first, tmp_path / "first", log=lambda m: None)
        cfg.train.init_from = str(tmp_path / "first" / "best.pt")
    train(cfg, tmp_path / "run", log=lambda m: None)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch"]
    assert len(epochs) == 8
    if epochs[-1]["train_acc"] is not None:
        assert epochs[-1]["train_acc"] > 3 / 16, f"{recipe}: train accuracy {epochs[-1]['train_acc']:.3f}"
    else:
        assert epochs[-1]["train_loss"] < 0.9 * epochs[0]["train_loss"], recipe


@pytest.mark.slow
def test_short_cpu_run_beats_chance_on_val_pairs(facehw, tmp_path, cache):
    """The CPU recipe on 120 identities x 12 images for 3 epochs: val pair AUC well above 0.5 (open set: none of
    the verification identities is in training)."""
    cfg = load_config(
        recipe_path("cpu"),
        [
            f"data.root={facehw}",
            "data.max_classes=120",
            "data.max_per_class=12",
            "train.epochs=3",
            "train.eval_every=3",
            "train.log_every=1000",
            "train.device=cpu",
            "train.amp=off",  # the same fp32 run on every CPU (the recipe's bf16_if_fast depends on the CPU)
        ],
    )
    train(cfg, tmp_path / "run", log=lambda m: None)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch"]
    assert epochs[-1]["val_auc"] > 0.62  # evaluated once, after the last epoch
