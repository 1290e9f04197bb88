"""`facerec ensemble A.pt B.pt ... --out ens.pt [--data DIR]`: write an ensemble file, scored on a dataset.

The ensemble itself (its network, rules and checks) is inference/ensemble.py, run by inference.model's
EnsembleFaceModel. Here: the file is written, and with `--data` every member and the ensemble are evaluated
(evaluation.datasets.evaluate_dataset) and the ensemble's best-accuracy threshold on the val pairs is stored (as
training stores one); without data, the threshold is derived from the members' thresholds (the mean for cosine)
and marked as such. This module also holds the names of the former `facerec.ensemble` module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from facerec.engine.checkpoint import INFERENCE_KEYS, load_checkpoint, save_checkpoint
from facerec.errors import EnsembleError
from facerec.evaluation.datasets import evaluate_dataset
from facerec.inference.ensemble import (  # noqa: F401 (the names of the former facerec.ensemble module)
    EnsembleEmbedder,
    check_compatible,
    ensemble_embedder,
    member_thresholds_combined,
)
from facerec.inference.model import EnsembleFaceModel, checked_model

__all__ = [
    "EnsembleEmbedder",
    "EnsembleError",
    "EnsembleFaceModel",
    "build_ensemble",
    "check_compatible",
    "ensemble_embedder",
    "member_thresholds_combined",
]


def _member_states(checkpoints: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The inference part of each member's checkpoint (.pt only: an ensemble combines PyTorch weights)."""
    states = []
    for c in checkpoints:
        state = load_checkpoint(c)  # an .onnx member is a CheckpointError that says to give its .pt
        if "ensemble" in state:
            raise EnsembleError(f"{c} is an ensemble already; list its member models instead")
        states.append({k: state[k] for k in INFERENCE_KEYS if k in state})
    return states


def build_ensemble(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    data: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the ensemble of `checkpoints` to `out`. With `data` (a dataset with labelled val pairs and/or a val
    split), score every member and the ensemble there and store the ensemble's best-accuracy threshold on the val
    pairs. Returns {"members": [metrics...], "ensemble": metrics, "threshold", "threshold_source"}."""
    states = _member_states(checkpoints)
    members = [checked_model(s, c) for s, c in zip(states, checkpoints)]
    check_compatible(members)
    result: dict[str, Any] = {"members": [], "ensemble": {}}
    threshold, source = member_thresholds_combined(members), "derived from the members' thresholds (not tuned)"
    if data is not None:
        for c, m in zip(checkpoints, members):
            result["members"].append({"checkpoint": str(c), **evaluate_dataset(m, data, log=log)})
        result["ensemble"] = evaluate_dataset(EnsembleFaceModel(members), data, log=log)
        if "best_threshold" in result["ensemble"]:
            threshold = float(result["ensemble"]["best_threshold"])
            source = "best-accuracy threshold on the val pairs"
    combined = {
        "config": states[0]["config"],
        "classes": states[0]["classes"],
        "scoring": members[0].scoring,
        "ensemble": states,
        "threshold": threshold,
        "threshold_source": source,
    }
    if result["ensemble"]:  # the ensemble's own val metrics, as a run's best.pt carries its epoch's
        combined["metrics"] = {k: v for k, v in result["ensemble"].items() if isinstance(v, int | float)}
    save_checkpoint(combined, out)
    result.update(threshold=threshold, threshold_source=source, out=str(out))
    return result
