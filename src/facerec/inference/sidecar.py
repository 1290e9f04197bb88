"""What an ONNX export carries besides its graph: `model.onnx.json` (the sidecar), also stored in the ONNX file.

The sidecar holds everything needed to use the ONNX file without facerec's checkpoint: input normalisation, flip
TTA, scoring, threshold, image size, classes, the training config and the network's fingerprint. The same JSON is
stored inside the ONNX file as metadata "facerec", so the .onnx file alone is enough; when both exist, the
sidecar wins (`facerec calibrate` updates both). The closed-set class head, a second small ONNX graph
(features -> class scores), is stored base64-encoded in the ONNX file's metadata "facerec.class_head"; the
sidecar's "class_scores" entry says how to feed it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from facerec.config import config_from_dict
from facerec.errors import CheckpointError

SIDECAR_FORMAT = "facerec-onnx"
METADATA_KEY, CLASS_HEAD_KEY = "facerec", "facerec.class_head"
INPUT_NAME, OUTPUT_NAME, MEMBERS_OUTPUT = "input", "embedding", "member_embeddings"
HEAD_INPUT, HEAD_OUTPUT = "features", "class_scores"
ONNX_SUFFIXES = (".onnx",)


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() in ONNX_SUFFIXES


def sidecar_path(onnx_path: str | Path) -> Path:
    """model.onnx -> model.onnx.json (next to it, never clobbering a model.json of something else)."""
    return Path(f"{onnx_path}.json")


def _model_facts(state: dict[str, Any]) -> dict[str, Any]:
    cfg = config_from_dict(state["config"])
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
    return model


def sidecar(
    state: dict[str, Any], opset: int, fingerprint: str | None = None, class_scores: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a user of the ONNX file needs besides the graph, as plain JSON values."""
    size = config_from_dict(state["config"]).data.image_size
    model = _model_facts(state)
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
        "class_scores": class_scores,
        "fingerprint": fingerprint,
        "metrics": {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, int | float | str)},
        "opset": opset,
        "config": state["config"],
    }


def read_metadata(onnx_path: str | Path, props: dict[str, str] | None = None) -> dict[str, Any]:
    """The sidecar `model.onnx.json` if present, else the copy stored in the ONNX file's metadata (`props`: its
    metadata_props when the caller has them already)."""
    side = sidecar_path(onnx_path)
    source = side if side.is_file() else f"the facerec metadata of {onnx_path}"
    try:
        if side.is_file():
            meta = json.loads(side.read_text(encoding="utf-8"))
        else:
            props = metadata_props(onnx_path) if props is None else props
            if METADATA_KEY not in props:
                raise CheckpointError(
                    f"{onnx_path} has no facerec metadata and no sidecar {side.name}; "
                    "export it with `facerec export --out model.onnx`"
                )
            meta = json.loads(props[METADATA_KEY])
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested too deep
        raise CheckpointError(f"{source} is damaged ({err}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        kind = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{source} is not a facerec ONNX sidecar (format {kind!r})")
    return meta


def metadata_props(onnx_path: str | Path) -> dict[str, str]:
    """The ONNX file's metadata_props (read by ONNX Runtime: the `onnx` package is not needed)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def write_metadata(onnx_path: str | Path, entries: dict[str, str]) -> bool:
    """Set these metadata_props entries in the ONNX file (others are kept). Needs the `onnx` package; returns
    False, changing nothing, without it."""
    try:
        import onnx
    except ImportError:
        return False
    proto = onnx.load(str(onnx_path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "facerec"
    onnx.save(proto, str(onnx_path))
    return True


def update_sidecar(onnx_path: str | Path, changes: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write `changes` (e.g. a calibrated threshold) into the sidecar and the metadata of the ONNX file, or of a
    copy at `out` (an .onnx path). Returns the ONNX file written."""
    meta = {**read_metadata(onnx_path), **changes}
    dst = Path(out) if out is not None else Path(onnx_path)
    if not is_onnx(dst):
        raise ValueError(f"{onnx_path} is an ONNX model: its copy must be an .onnx file too, not {str(dst)!r}")
    if dst.resolve() != Path(onnx_path).resolve():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, dst)
    write_metadata(dst, {METADATA_KEY: json.dumps(meta)})
    sidecar_path(dst).write_text(json.dumps(meta, indent=1))
    return dst
