"""Model files for deployment: the slim PyTorch inference checkpoint, and ONNX (+ a JSON sidecar).

`facerec export --checkpoint C --out model.pt [--half]` writes `engine.checkpoint.export_inference`'s file;
`--out model.onnx` writes the embedding network FaceEmbedder as ONNX with a dynamic batch axis, plus
`model.onnx.json` (also stored inside the ONNX file as metadata `facerec`), which holds everything needed to use
the ONNX file without facerec's checkpoint: input normalisation, flip TTA, scoring, threshold, image size, classes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.engine.checkpoint import export_inference, load_checkpoint

SIDECAR_FORMAT = "facerec-onnx"
METADATA_KEY = "facerec"
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
DEFAULT_OPSET = 17
PT_SUFFIXES, ONNX_SUFFIXES = (".pt", ".pth"), (".onnx",)


def sidecar_path(onnx_path: str | Path) -> Path:
    """model.onnx -> model.onnx.json (next to it, never clobbering a model.json of something else)."""
    return Path(f"{onnx_path}.json")


def sidecar(state: dict[str, Any], opset: int) -> dict[str, Any]:
    """What a user of the ONNX file needs besides the graph, as plain JSON values."""
    from facerec.config import config_from_dict

    cfg = config_from_dict(state["config"])
    size = cfg.data.image_size
    model = {
        "backbone": cfg.model.backbone,
        "embedding_dim": cfg.model.embedding_dim,
        "neck": cfg.model.neck,
        "loss": cfg.loss.name,
        "epoch": state.get("epoch"),
    }
    if "ensemble" in state:  # facerec.inference.ensemble: the members' embeddings side by side
        members = [config_from_dict(m["config"]).model for m in state["ensemble"]]
        model.update(
            backbone="ensemble: " + " + ".join(m.backbone for m in members),
            embedding_dim=sum(m.embedding_dim for m in members),
            members=len(members),
        )
    return {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "model": model,
        "image_size": size,
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [-1.0, 1.0],
            "formula": "x = uint8_pixel / 127.5 - 1",
            "resize": f"aligned face crop resized to {size}x{size} (bilinear, antialiased; aspect ratio not kept)",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["N", model["embedding_dim"]], "normalised": False},
        "flip_tta": "embedding = f(x) + f(x flipped left-right, i.e. along the last axis)",
        "scoring": state.get("scoring", "cosine"),
        "score_rule": "cosine similarity (or negative Euclidean distance); same person when score >= threshold",
        "threshold": state.get("threshold"),
        "threshold_source": state.get("threshold_source"),
        "classes": list(state["classes"]),
        "metrics": {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, int | float | str)},
        "opset": opset,
        "config": state["config"],
    }


def _embedder(state: dict[str, Any]) -> torch.nn.Module:
    from facerec.config import config_from_dict
    from facerec.engine.build import build_model
    from facerec.inference.model import _float32

    if "ensemble" in state:
        from facerec.inference.ensemble import ensemble_embedder

        return ensemble_embedder(state["ensemble"])
    model = build_model(config_from_dict(state["config"]))
    model.load_state_dict(_float32(state["model"]))
    return model.eval()


def export_onnx(
    checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, dynamo: bool = False
) -> tuple[Path, Path]:
    """Export the checkpoint's FaceEmbedder to ONNX; returns (onnx path, sidecar path).

    The graph maps (N, 3, S, S) float32 in [-1, 1] to (N, D) embeddings, N dynamic. `dynamo=False` uses the
    TorchScript-based exporter (no onnxscript needed); `dynamo=True` the torch.export-based one.
    """
    state = load_checkpoint(checkpoint)
    model = _embedder(state)
    size = int(state["config"].get("data", {}).get("image_size", 64))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (dummy,),
                str(out),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: batch}},
            )
        else:
            torch.onnx.export(
                model,
                (dummy,),
                str(out),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    meta = sidecar(state, opset)
    _embed_metadata(out, meta)
    side = sidecar_path(out)
    side.write_text(json.dumps(meta, indent=1))
    return out, side


def _embed_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Store the sidecar inside the ONNX file too (metadata_props), when the `onnx` package is installed."""
    try:
        import onnx
    except ImportError:
        return
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "facerec"
    onnx.save(proto, str(path))


def compare_onnx(checkpoint: str | Path, onnx_path: str | Path, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same random inputs: max abs diff and max relative error (to the
    largest PyTorch output magnitude). Needs onnxruntime."""
    import onnxruntime as ort

    state = load_checkpoint(checkpoint)
    model = _embedder(state)
    size = int(state["config"].get("data", {}).get("image_size", 64))
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    return {"max_abs_diff": diff, "rel_err": diff / max(float(np.abs(ref).max()), 1e-12), "batch": batch}


def export_model(
    checkpoint: str | Path, out: str | Path, half: bool = False, opset: int = DEFAULT_OPSET, dynamo: bool = False
) -> list[Path]:
    """Dispatch on the output suffix: .pt/.pth -> slim inference checkpoint, .onnx -> ONNX + sidecar."""
    suffix = Path(out).suffix.lower()
    if suffix in PT_SUFFIXES:
        return [export_inference(checkpoint, out, half=half)]
    if suffix in ONNX_SUFFIXES:
        if half:
            raise ValueError("--half applies to .pt exports only; ONNX models are exported in fp32")
        return list(export_onnx(checkpoint, out, opset=opset, dynamo=dynamo))
    raise ValueError(
        f"cannot tell the export format from {str(out)!r}; end --out with one of "
        f"{list(PT_SUFFIXES + ONNX_SUFFIXES)}"
    )
