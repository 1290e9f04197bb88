"""Model files for deployment: the slim PyTorch inference checkpoint, and ONNX (+ a JSON sidecar).

`facerec export --checkpoint C --out model.pt [--half]` writes `engine.checkpoint.export_inference`'s file;
`--out model.onnx` writes the embedding network as ONNX with a dynamic batch axis (input "input" (N, 3, S, S) ->
output "embedding" (N, D); an ensemble also outputs "member_embeddings", its members' raw embeddings side by side),
plus the sidecar (inference/sidecar.py) and the closed-set class head: a second graph, "features" (N, F) ->
"class_scores" (N, C), stored in the ONNX file's metadata "facerec.class_head". Its features are the flip-summed
"embedding" (or "member_embeddings"), so ONNX Runtime gives the checkpoint's `class_scores`: evaluate's top-1
and predict's classification submission work from the .onnx file alone.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.engine.checkpoint import export_inference, load_checkpoint
from facerec.inference.model import EnsembleFaceModel, FaceModel, checked_model, load_model_file
from facerec.inference.network import EnsembleHead
from facerec.inference.onnx import OnnxFaceModel
from facerec.inference.sidecar import (  # noqa: F401 (SIDECAR_FORMAT, METADATA_KEY: re-exported)
    CLASS_HEAD_KEY,
    HEAD_INPUT,
    HEAD_OUTPUT,
    INPUT_NAME,
    MEMBERS_OUTPUT,
    METADATA_KEY,
    ONNX_SUFFIXES,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    sidecar,
    sidecar_path,
    write_metadata,
)

DEFAULT_OPSET = 17
PT_SUFFIXES = (".pt", ".pth")


def _to_onnx(
    module: nn.Module, example: torch.Tensor, f: Any, inputs: str, outputs: list[str], opset: int
) -> None:
    """TorchScript-based export with a dynamic batch axis on every input and output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its retirement; tracer notes
        torch.onnx.export(
            module,
            (example,),
            f,
            input_names=[inputs],
            output_names=outputs,
            opset_version=opset,
            dynamo=False,
            dynamic_axes={name: {0: "batch"} for name in [inputs, *outputs]},
        )


def _export_network(fm: FaceModel, out: Path, opset: int, dynamo: bool) -> None:
    network, size = fm.export_network(), fm.image_size
    outputs = [OUTPUT_NAME, MEMBERS_OUTPUT] if isinstance(fm, EnsembleFaceModel) else [OUTPUT_NAME]
    dummy = torch.zeros(2, 3, size, size)
    if not dynamo:
        _to_onnx(network, dummy, str(out), INPUT_NAME, outputs, opset)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            (dummy,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=outputs,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
        )


def _class_head(fm: FaceModel, opset: int, can_store: bool) -> tuple[bytes | None, dict[str, Any]]:
    """The class head as ONNX bytes, and the sidecar's "class_scores" entry (with "missing" when there is none)."""
    head = fm.class_head().eval()
    if not head.available:
        return None, {"missing": "this model's loss has no classifier and the checkpoint no class prototypes"}
    if not can_store:
        return None, {"missing": "exported without the `onnx` package; pip install onnx and export again"}
    ensemble = isinstance(head, EnsembleHead)
    width = sum(head.dims) if ensemble else int(fm.config.model.embedding_dim)
    buf = io.BytesIO()
    example = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    _to_onnx(head, example, buf, HEAD_INPUT, [HEAD_OUTPUT], opset)
    spec = {
        "metadata_key": CLASS_HEAD_KEY,
        "encoding": "base64 of an ONNX model",
        "features": MEMBERS_OUTPUT if ensemble else OUTPUT_NAME,
        "input": {"name": HEAD_INPUT, "shape": ["N", width]},
        "output": {"name": HEAD_OUTPUT, "shape": ["N", len(fm.classes)]},
        "rule": "class_scores = head(features of x + features of x flipped); argmax indexes classes",
        "match": str(fm.match) if fm.match is not None else "each member's default",
    }
    return buf.getvalue(), spec


def export_onnx(
    checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, dynamo: bool = False
) -> tuple[Path, Path]:
    """Export the checkpoint's network to ONNX, with its class head and sidecar; returns (onnx path, sidecar).

    The graph maps (N, 3, S, S) float32 in [-1, 1] to (N, D) embeddings, N dynamic. `dynamo=False` uses the
    TorchScript-based exporter (no onnxscript needed); `dynamo=True` the torch.export-based one.
    """
    state = load_checkpoint(checkpoint)
    fm = checked_model(state, checkpoint)
    fingerprint = fm.fingerprint  # of the weights as loaded, before anything runs them
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _export_network(fm, out, opset, dynamo)
    can_store = importlib.util.find_spec("onnx") is not None  # metadata inside the ONNX file needs the package
    head, spec = _class_head(fm, opset, can_store)
    meta = sidecar(state, opset, fingerprint, spec)
    entries = {METADATA_KEY: json.dumps(meta)}
    if head is not None:
        entries[CLASS_HEAD_KEY] = base64.b64encode(head).decode("ascii")
    write_metadata(out, entries)
    side = sidecar_path(out)
    side.write_text(json.dumps(meta, indent=1))
    return out, side


def compare_onnx(checkpoint: str | Path, onnx_path: str | Path, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same random inputs: max abs diff and max relative error (to the
    largest PyTorch output magnitude) of the embeddings, and of the class scores when the file has its head.
    Needs onnxruntime."""
    fm = load_model_file(checkpoint)
    om = OnnxFaceModel(onnx_path)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, fm.image_size, fm.image_size, 3), generator=g, dtype=torch.uint8)
    ref, got = fm.embed(x), om.embed(x)
    diff = float((got - ref).abs().max())
    result = {"max_abs_diff": diff, "rel_err": diff / max(float(ref.abs().max()), 1e-12), "batch": batch}
    if om.has_class_scores:
        ref, got = fm.class_scores(x), om.class_scores(x)
        result["class_rel_err"] = float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
    return result


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Dispatch on the output suffix: .pt/.pth -> slim inference checkpoint (plus `extra` entries: the training
    embeddings of inference.matching.train_set_state), .onnx -> ONNX + sidecar."""
    suffix = Path(out).suffix.lower()
    if suffix in PT_SUFFIXES:
        load_model_file(checkpoint)  # a damaged file is a CheckpointError here, not copied into a model file
        return [export_inference(checkpoint, out, half=half, extra=extra)]
    if suffix in ONNX_SUFFIXES:
        if extra:
            raise ValueError(
                "--train-data writes a .pt model file; export that file to ONNX afterwards (its class head then "
                "matches by the class means)"
            )
        if half:
            raise ValueError("--half applies to .pt exports only; ONNX models are exported in fp32")
        return list(export_onnx(checkpoint, out, opset=opset, dynamo=dynamo))
    raise ValueError(
        f"cannot tell the export format from {str(out)!r}; end --out with one of "
        f"{list(PT_SUFFIXES + ONNX_SUFFIXES)}"
    )
