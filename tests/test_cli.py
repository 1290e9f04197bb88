"""End to end: train -> evaluate -> predict -> report -> verify on a generated HW2P2 dataset, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import facerec
from conftest import tiny_overrides
from facerec.cli.main import main
from facerec.engine.progress import read_metrics

TINY = tiny_overrides("optim.lr=0.05", "train.log_every=2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def trained(hw2p2_dir: Path, tmp_path: Path, cache) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--data", str(hw2p2_dir), "--out", str(run), "train.epochs=4", *TINY]) == 0
    return run


def test_train_writes_run_folder(trained: Path, capsys):
    assert {"best.pt", "last.pt", "config.yaml", "metrics.jsonl", "val_pair_scores.npz"} <= {
        p.name for p in trained.iterdir()
    }
    records = read_metrics(trained)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert {"train_loss", "val_acc", "val_auc", "images_per_s", "lr"} <= set(epochs[0])
    assert records[-1]["event"] == "end"
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert "batch_size: 16" in (trained / "config.yaml").read_text()


def test_evaluate_json_and_predict_submissions(trained: Path, hw2p2_dir: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(trained / "best.pt"), "--data", str(hw2p2_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"auc", "accuracy", "eer", "tar@far=1e-3", "best_acc"} <= set(result)
    assert result["accuracy"] > 0.5  # 12 identities: chance is 1/12
    assert result["auc"] > 0.75
    assert "auc_ci" not in result
    evaluate = ["evaluate", "--checkpoint", str(trained / "best.pt"), "--data", str(hw2p2_dir), "--ci"]
    assert main([*evaluate, "--json"]) == 0
    with_ci = json.loads(capsys.readouterr().out)
    assert with_ci["auc"] == result["auc"]  # the same scores, with intervals beside them
    for key in ("auc", "eer", "tar@far=1e-3"):
        low, high = with_ci[f"{key}_ci"]
        assert 0.0 <= low <= high <= 1.0
    assert with_ci["auc_ci"][0] <= result["auc"] <= with_ci["auc_ci"][1]
    assert main(evaluate) == 0
    low, high = with_ci["auc_ci"]
    assert f"auc_ci: {low:.4f} - {high:.4f}" in capsys.readouterr().out

    out = tmp_path / "sub"
    assert (
        main(["predict", "--checkpoint", str(trained / "best.pt"), "--data", str(hw2p2_dir), "--out", str(out)])
        == 0
    )
    rows = list(csv.reader((out / "classification_submission.csv").open()))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == [f"{n}.jpg" for n in range(12)]  # the sample's (numeric) order
    folder_names = {p.name for p in (hw2p2_dir / "classification_data" / "train_data").iterdir()}
    predicted = [r[1] for r in rows[1:]]
    assert set(predicted) <= folder_names  # folder names, never class indices
    truth = (hw2p2_dir / "test_truth.txt").read_text().split()
    assert sum(p == t for p, t in zip(predicted, truth)) / len(truth) > 0.5
    vrows = list(csv.reader((out / "verification_submission.csv").open()))
    sample = list(csv.reader((hw2p2_dir / "verification_sample_submission.csv").open()))
    assert vrows[0] == ["Id", "Category"] and [r[0] for r in vrows] == [r[0] for r in sample]
    assert all(-1.0001 <= float(r[1]) <= 1.0001 for r in vrows[1:])  # cosine scores


def test_report_verify_and_api_agree(trained: Path, hw2p2_dir: Path, capsys):
    assert main(["report", str(trained)]) == 0
    page = (trained / "report" / "report.md").read_text()
    assert "tiny_cnn" in page and (trained / "report" / "roc.png").stat().st_size > 1000
    ver = sorted((hw2p2_dir / "verification_data").iterdir())
    capsys.readouterr()
    assert main(["verify", "--checkpoint", str(trained / "best.pt"), str(ver[0]), str(ver[1]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = facerec.load(str(trained / "best.pt"))
    assert out["score"] == pytest.approx(model.score(ver[0], ver[1]), abs=1e-5)
    assert model.verify(ver[0], ver[1]).same == out["same"]
    emb = model.embed([ver[0], ver[1]])
    assert emb.shape == (2, 32)
    top = model.classify([ver[0]], k=3)[0]
    assert len(top) == 3 and top[0][1] >= top[1][1] and top[0][0] in model.classes


def test_resume_reproduces_uninterrupted_run(hw2p2_dir: Path, tmp_path: Path, cache, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--data", str(hw2p2_dir), "train.epochs=3", *TINY]
    assert main(["train", "--out", str(full), *args]) == 0
    assert main(["train", "--out", str(cut), *args, "train.time_limit_min=0.000001"]) == 0  # stops after epoch 1
    assert [r["epoch"] for r in read_metrics(cut) if r["event"] == "epoch"] == [1]
    # a recipe other than the run's does not replace its config half-way: a warning, and the run's own config
    assert main(["train", "--out", str(cut), "--resume", "--config", "cpu", "train.time_limit_min=0"]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: --config cpu sets model.backbone, model.neck, model.embedding_dim, loss.name, loss.params, "
        "optim.lr, optim.warmup_epochs, train.epochs, train.amp other than the run being resumed" in err
    )
    a = [r for r in read_metrics(full) if r["event"] == "epoch"]
    b = [r for r in read_metrics(cut) if r["event"] == "epoch"]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["val_auc"] == pytest.approx(ra["val_auc"], abs=1e-4)
    wa = torch.load(full / "last.pt", weights_only=True)["model"]
    wb = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-4) for k in wa)


def test_bad_input_gives_clear_errors(hw2p2_dir: Path, tmp_path: Path, cache, capsys):
    assert main(["train", "--data", str(hw2p2_dir), "--out", str(tmp_path / "x"), "data.batchsize=3"]) == 1
    assert "unknown config key 'data.batchsize'" in capsys.readouterr().err
    bad = hw2p2_dir / "verification_pairs_val.txt"
    lines = bad.read_text().splitlines()
    lines[4] = "verification_data/missing.jpg " + lines[4].split(" ", 1)[1]
    bad.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(hw2p2_dir), "--out", str(tmp_path / "y"), *TINY]) == 1
    err = capsys.readouterr().err
    assert ":5:" in err and "missing.jpg" in err  # file:line
    assert not (tmp_path / "y" / "last.pt").exists()  # stopped before training


def test_list_commands(capsys):
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax", "center", "arcface", "cosface", "sphereface", "contrastive", "triplet", "bway"):
        assert name in out
    assert main(["list", "backbones"]) == 0
    assert "resnet34" in capsys.readouterr().out
    assert main(["list", "recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from facerec.config import describe_recipes

    described = describe_recipes()
    assert [line.split()[0] for line in lines] == list(described)
    # one column of names however long the longest: every description starts at the same place
    starts = {line.index(text) for line, text in zip(lines, described.values(), strict=True)}
    assert len(starts) == 1 and starts.pop() > max(map(len, described))


def test_compiled_training_matches_eager(hw2p2_dir: Path, tmp_path: Path, cache, monkeypatch):
    """train.compile=true wraps the model in torch.compile's module (which refuses bool() and len()); the run must
    train and save the plain model's weights. The "eager" backend keeps the test free of a C++ compiler, and so
    computes what eager mode computes."""
    import functools

    import torch._dynamo as dynamo

    import facerec.engine.run as pipeline

    monkeypatch.setattr(pipeline.torch, "compile", functools.partial(torch.compile, backend="eager"))
    args = ["--data", str(hw2p2_dir), "train.epochs=2", *TINY]
    assert main(["train", "--out", str(tmp_path / "eager"), *args]) == 0
    with dynamo.config.patch(suppress_errors=False):  # train() sets it; the patch restores it afterwards
        assert main(["train", "--out", str(tmp_path / "compiled"), *args, "train.compile=true"]) == 0
    a, b = ([r for r in read_metrics(tmp_path / run) if r["event"] == "epoch"] for run in ("eager", "compiled"))
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-4)
    saved = torch.load(tmp_path / "compiled" / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in saved)  # the plain model's names


def test_a_backend_that_cannot_compile_falls_back_to_eager(hw2p2_dir: Path, tmp_path: Path, cache, monkeypatch):
    """train.compile=true on a machine where compiling fails (no Triton, no C++ compiler): the run trains eagerly
    instead of stopping at its first step."""
    import functools

    import torch._dynamo as dynamo

    import facerec.engine.run as pipeline

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(pipeline.torch, "compile", functools.partial(torch.compile, backend=broken))
    args = ["--data", str(hw2p2_dir), "train.epochs=1", *TINY]
    assert main(["train", "--out", str(tmp_path / "eager"), *args]) == 0
    with dynamo.config.patch(suppress_errors=False):  # as in a fresh process; restored afterwards
        assert main(["train", "--out", str(tmp_path / "fallback"), *args, "train.compile=true"]) == 0
    a, b = ([r for r in read_metrics(tmp_path / run) if r["event"] == "epoch"] for run in ("eager", "fallback"))
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=1e-4)


def test_python_train_api_applies_overrides_and_resumes(hw2p2_dir: Path, tmp_path: Path, cache):
    from facerec.config import ConfigError, load_config

    run = tmp_path / "api_run"
    tiny = {k: v for k, v in (item.split("=") for item in TINY)}
    tiny = {k: (v if k == "model.backbone" else float(v) if "." in v else int(v)) for k, v in tiny.items()}
    best = facerec.train(hw2p2_dir, run, overrides={**tiny, "train.epochs": 1, "train.flip_tta": False})
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == 1 and cfg.train.flip_tta is False and cfg.model.embedding_dim == 32
    assert cfg.data.root == str(hw2p2_dir) and best == run / "best.pt"
    model = facerec.load(best)
    assert model.embed(torch.zeros(2, 16, 16, 3, dtype=torch.uint8)).shape == (2, 32)
    assert facerec.train(None, run, overrides=["train.epochs=2"], resume=True) == best
    assert [r["epoch"] for r in read_metrics(run) if r["event"] == "epoch"] == [1, 2]
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        facerec.train(hw2p2_dir, tmp_path / "bad", overrides={"train.epoch": 3})


def test_print_config_shows_the_resolved_config_without_training(tmp_path: Path, capsys):
    import yaml

    from facerec.config import config_to_dict, load_config, recipe_path

    assert main(["train", "--config", "cpu", "--print-config", "optim.lr=0.05", "train.ema=0.99"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == config_to_dict(load_config(recipe_path("cpu"), ["optim.lr=0.05", "train.ema=0.99"]))
    assert shown["optim"]["lr"] == 0.05 and shown["loss"]["name"] == "cosface"  # override, recipe
    assert main(["train", "--config", "cpu"]) == 2  # training needs a run folder
    assert "give --out RUN_DIR" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_resume_with_the_same_recipe_repeated_is_quiet(hw2p2_dir: Path, tmp_path: Path, cache, capsys):
    """Re-running the original command with --resume added (recipe included) continues without a warning."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: {backbone: tiny_cnn, embedding_dim: 32}\ndata: {image_size: 16, batch_size: 16}\n")
    run = tmp_path / "run"
    command = ["train", "--data", str(hw2p2_dir), "--out", str(run), "--config", str(recipe), "train.epochs=2"]
    assert main([*command, "train.time_limit_min=0.000001"]) == 0  # stops after epoch 1
    capsys.readouterr()
    assert main([*command, "--resume"]) == 0
    assert "warning: --config" not in capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(run) if r["event"] == "epoch"] == [1, 2]
