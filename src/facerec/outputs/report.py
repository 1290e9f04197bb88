"""One-page Markdown write-up of a finished (or running) training run, built only from the run folder's files.

Reads RUN_DIR/config.yaml, metrics.jsonl (required), val_pair_scores.npz and model_summary.txt (optional) and
writes RUN_DIR/report/{report.md, curves.png, roc.png, score_hist.png} (figures drawn by `facerec.outputs.plots`).
Verification numbers come from `facerec.metrics.verification.verification_report`, the function validation uses,
so the page agrees with the training log. Missing config keys and null metrics show as "?" and "—".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from facerec.metrics.verification import verification_report
from facerec.outputs.plots import plot_curves, plot_roc, plot_score_hist
from facerec.outputs.sections import (
    architecture,
    best_of,
    epoch_table,
    figures,
    hyperparameters,
    loss_section,
    results,
    scoring_name,
    title,
)

_MAX_TABLE_ROWS = 30
_MAX_SUMMARY_LINES = 80


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report/report.md and its PNG plots; return the path of report.md."""
    run = Path(run_dir)
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(
            f"no metrics.jsonl in {run}: write_report needs the run's metrics log "
            f"(written by `facerec train`); is {run} a run directory?"
        )
    cfg = _read_config(run / "config.yaml")
    start, epochs, end = _read_log(log)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(epochs, out / "curves.png")
    pairs, ver, pair_note = _read_pairs(run / "val_pair_scores.npz")
    if pairs is not None and ver is not None:
        plot_roc(*pairs, ver, out / "roc.png")
        plot_score_hist(*pairs, ver, out / "score_hist.png", scoring_name(cfg))
    else:
        for stale in ("roc.png", "score_hist.png"):  # left by an earlier call; the page no longer shows them
            (out / stale).unlink(missing_ok=True)
    best = _best_epoch(epochs, end)
    parts = [
        title(run, cfg, epochs, best, ver),
        architecture(run, cfg, start),
        loss_section(cfg),
        hyperparameters(cfg, start, epochs),
        results(epochs, best, end, start, ver, bool((cfg.get("data") or {}).get("holdout"))),
        figures(ver, pair_note),
        epoch_table(epochs, best),
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ reading


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    return cfg if isinstance(cfg, dict) else {}


def _read_log(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(start event, epoch events sorted by epoch (a re-logged epoch keeps its last line), end event)."""
    start: dict[str, Any] = {}
    end: dict[str, Any] = {}
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
        event = row.get("event") if isinstance(row, dict) else None
        if event == "start":
            start = row
        elif event == "end":
            end = row
        elif event == "epoch" and isinstance(row.get("epoch"), int):
            by_epoch[row["epoch"]] = row
    return start, [by_epoch[e] for e in sorted(by_epoch)], end


def _read_pairs(path: Path) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, float] | None, str]:
    """((scores (N,), labels (N,)), their verification report, "") or (None, None, why there are no ROC plots)."""
    if not path.is_file():
        return None, None, f"No `{path.name}` in the run folder, so there is no ROC curve or score histogram."
    with np.load(path) as data:
        if "scores" not in data or "labels" not in data:
            return None, None, f"`{path.name}` lacks `scores`/`labels` arrays; ROC and histogram skipped."
        scores, labels = np.asarray(data["scores"], float).ravel(), np.asarray(data["labels"]).ravel()
    try:
        return (scores, labels), verification_report(scores, labels), ""
    except ValueError as err:
        return None, None, f"Validation pair scores unusable ({err}); ROC and histogram skipped."


def _best_epoch(epochs: list[dict[str, Any]], end: dict[str, Any]) -> dict[str, Any]:
    """The checkpointed epoch named by the end event, else the one with the best val AUC / val acc / loss."""
    named = [r for r in epochs if r["epoch"] == end.get("best_epoch")]
    guesses = (best_of(epochs, "val_auc"), best_of(epochs, "val_acc"), best_of(epochs, "train_loss", False))
    return next((r for r in (*named, *guesses) if r), epochs[-1] if epochs else {})
