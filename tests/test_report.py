"""write_report on a fake run folder: the page names what the run used and shows its numbers; plots are PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from facerec.metrics.verification import verification_report
from facerec.outputs.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = [  # epoch 2 has no verification numbers (eval skipped), epoch 3 is best by AUC
    {"epoch": 1, "train_loss": 4.2, "train_acc": 0.05, "val_acc": 0.10, "val_top5": 0.30, "val_auc": 0.7512,
     "val_eer": 0.31, "lr": 0.1, "images_per_s": 900.0, "epoch_time_s": 61.0, "elapsed_s": 61.0},
    {"epoch": 2, "train_loss": 3.1, "train_acc": None, "val_acc": 0.25, "val_top5": 0.55, "val_auc": None,
     "val_eer": None, "lr": 0.05, "images_per_s": 1100.0, "epoch_time_s": 55.0, "elapsed_s": 116.0},
    {"epoch": 3, "train_loss": 2.4, "train_acc": 0.41, "val_acc": 0.38, "val_top5": 0.71, "val_auc": 0.8765,
     "val_eer": 0.2, "lr": 0.0, "images_per_s": 1000.0, "epoch_time_s": 54.0, "elapsed_s": 170.0},
]  # fmt: skip


def make_run(root: Path, with_pairs: bool = True, with_end: bool = True) -> Path:
    """A run folder shaped like `facerec train` output: config, metrics log, (pair scores), model summary."""
    root.mkdir(parents=True)
    config = {
        "data": {"root": "/data/hw2p2", "image_size": 112, "batch_size": 256, "sampler": "random",
                 "augment": "strong"},
        "model": {"backbone": "resnet34", "embedding_dim": 512, "dropout": 0.1},
        "loss": {"name": "arcface", "params": {"scale": 64, "margin": 0.5}, "scoring": "auto",
                 "extra": [{"name": "center", "weight": 0.01, "params": {}}]},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "schedule": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 3, "seed": 0, "device": "auto", "amp": "auto"},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"event": "start", "device": "cuda", "num_params": 21_300_000, "num_classes": 7001,
              "num_train_images": 140_020, "torch": "2.4.0"}]  # fmt: skip
    lines += [{"event": "epoch", **e} for e in EPOCHS] + [{"event": "step", "step": 10, "loss": 4.0}]
    if with_end:
        lines.append({"event": "end", "best_epoch": 3, "best_metric": "val_auc", "best_value": 0.8765,
                      "total_time_s": 171.5})  # fmt: skip
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "model_summary.txt").write_text("FaceEmbedder(\n  (backbone): ResNet34\n  (neck): BN-Linear-BN\n)\n")
    if with_pairs:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 400)
        np.savez(root / "val_pair_scores.npz", scores=rng.normal(labels * 1.2, 1.0) / 4, labels=labels)
    return root


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG"


def test_report_from_full_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    md_path = write_report(run)
    assert md_path == run / "report" / "report.md"
    md = md_path.read_text()
    for needle in ("resnet34", "arcface", "scale=64", "0.01 × `center`", "512-d", "21.30 M parameters", "cuda"):
        assert needle in md, needle
    assert f"{0.8765:.4f}" in md  # best val AUC (epoch 3) from the log
    assert "epoch 3 of 3" in md and "2 min 52 s" in md  # best checkpoint; total_time_s 171.5
    for section in ("## Architecture", "## Loss", "## Hyperparameters", "## Results", "## Per epoch"):
        assert section in md
    assert "ResNet34" in md  # the model summary is included
    assert "global average pooling" in md  # the neck (make_run's config leaves it at the default, pool)
    ver = verification_report(**np.load(run / "val_pair_scores.npz"))
    assert f"{100 * ver['tar@far=1e-2']:.2f} %" in md and f"{ver['best_threshold']:.3f}" in md
    for name in ("curves.png", "roc.png", "score_hist.png"):
        assert_png(run / "report" / name)
        assert f"]({name})" in md  # linked with a path relative to the page


def test_null_metrics_show_as_dash_and_best_epoch_is_inferred(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path / "run", with_end=False)).read_text()
    epoch2 = next(line for line in md.splitlines() if line.startswith("| 2 |"))
    assert "—" in epoch2  # null val_auc
    assert "epoch 3 of 3" in md  # best by val AUC without an end event


def test_missing_pair_scores_still_writes_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", with_pairs=False)
    md = write_report(run).read_text()
    assert "val_pair_scores.npz" in md and "roc.png" not in md
    assert_png(run / "report" / "curves.png")
    assert not (run / "report" / "roc.png").exists()


def test_missing_metrics_log_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        write_report(tmp_path)


def test_long_runs_get_a_short_table(tmp_path: Path) -> None:
    run = tmp_path / "long"
    run.mkdir()
    rows = [{"event": "epoch", "epoch": e, "train_loss": 1.0 / e, "val_auc": 0.5 + e / 400} for e in range(1, 101)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = write_report(run).read_text()  # no config, no start/end events: tolerated
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table_rows) <= 30 and table_rows[-1].startswith("| 100 *")


def test_a_distillation_run_names_its_teacher_and_the_weights_of_its_terms(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["distill"] = {"teacher": "dlib", "weight_embedding": 4.0, "weight_relational": 20.0,
                         "weight_labels": 1.0, "teacher_view": "clean", "center": True}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    md = write_report(run).read_text()
    assert "Distilled from dlib's ResNet descriptor" in md and "outside the course's rules" in md
    assert "4.0 · (1 − cos(P·s, t)) + 20.0 · MSE" in md and "+ 1.0 · L" in md
    assert "training mean subtracted" in md
    plain = write_report(make_run(tmp_path / "plain")).read_text()
    assert "Distilled" not in plain  # a `facerec train` run has no teacher
