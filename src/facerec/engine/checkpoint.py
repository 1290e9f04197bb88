"""Checkpoints: one dict of tensors and plain Python values, written atomically, read without unpickling code.

Layout: {"format": "facerec", "version": 1, "config": dict, "classes": [str], "epoch": int, "model": state_dict,
"loss": state_dict, and optionally "optimizer", "schedule", "rng", "metrics", "best", "prototypes", "threshold",
"train_embeddings" + "train_labels"}. "prototypes" (C, D) are the class means of the training embeddings and
"train_embeddings" (M, D, unit length, fp16) the embeddings themselves: what closed-set matching by "mean" and
"knn" needs (inference/matching.py).
`torch.load(..., weights_only=True)` accepts exactly such content and refuses pickled code objects.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from facerec.errors import CheckpointError  # noqa: F401 (re-exported)

FORMAT = "facerec"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then os.replace.

    A crash (or a full disk) mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    payload = {"format": FORMAT, "version": 1, **state}
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {err}; free disk space or choose another --out"
            ) from err
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain values only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix.lower() == ".onnx":  # facerec.load runs it; training, export and ensembles need the weights
        raise CheckpointError(
            f"{path} is an ONNX export: it runs (facerec.load, --checkpoint of verify, evaluate, predict, ...) "
            "but cannot be trained, resumed, re-exported or put in an ensemble; give the .pt checkpoint or model "
            "file it was exported from"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain values ({err}). "
            "Only load checkpoints written by facerec from sources you trust."
        ) from None
    except Exception as err:  # torch's reader and its restricted unpickler fail in many ways on a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a facerec checkpoint (no 'format': 'facerec' entry)")
    return state


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


INFERENCE_KEYS = (
    "config",
    "classes",
    "model",
    "loss",
    "scoring",
    "threshold",
    "threshold_source",
    "threshold_far",
    "prototypes",
    "train_embeddings",
    "train_labels",
    "metrics",
    "epoch",
)


def export_inference(
    src: str | Path, dst: str | Path, half: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Write the inference part of a training checkpoint (no optimiser or RNG state) to `dst`.

    `half` stores floating-point tensors as fp16 (about half the size; `FaceModel.load` casts them back).
    `extra` adds or replaces entries (inference.matching.train_set_state: the class means and training
    embeddings); the network and loss weights are copied as they are (unless `half`).
    """
    state = load_checkpoint(src)
    if "ensemble" in state:  # facerec.inference.ensemble: the members are inference states already
        if extra:
            raise CheckpointError(
                f"{src} is an ensemble: add the training embeddings to each member model (facerec export "
                "--train-data) and build the ensemble from them again"
            )
        slim = dict(state, ensemble=[_halved(m) if half else m for m in state["ensemble"]])
        return save_checkpoint(slim, dst)
    slim = {**{k: state[k] for k in INFERENCE_KEYS if k in state}, **(extra or {})}
    return save_checkpoint(_halved(slim) if half else slim, dst)


def _halved(state: dict[str, Any]) -> dict[str, Any]:
    """Floating-point weights (and prototypes) as fp16."""
    out = dict(state)
    for part in ("model", "loss"):
        out[part] = {k: v.half() if v.is_floating_point() else v for k, v in state[part].items()}
    if "prototypes" in out:
        out["prototypes"] = out["prototypes"].half()
    return out
