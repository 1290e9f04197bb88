"""Fuzz targets for model files: PyTorch checkpoints and model files (.pt) and ONNX exports, through facerec.load.

Mutations reach past the container: a .pt file is a zip archive (its members are mutated and the archive
rebuilt), and its content a tree of dicts, lists and tensors (`state_op` changes one node of it, so
`facerec.load` gets a well-formed checkpoint holding something unexpected). ONNX files are edited as protobuf
(`onnx_op`: the facerec metadata, the stored class head, initializers, nodes, graph inputs).
"""

from __future__ import annotations

import base64
import io
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

import facerec
from facerec.config import config_from_dict, config_to_dict
from facerec.engine.build import build_loss_fn, build_model
from facerec.engine.checkpoint import export_inference, save_checkpoint
from facerec.evaluation.ensemble import build_ensemble
from facerec.inference.export import export_onnx
from facerec.inference.sidecar import sidecar_path
from fuzzing.base import Seed, Target, payloads
from fuzzing.mutate import INTERESTING, JSON_VALUES, byte_mutation, json_op, mutate_tree, text_op, zip_member_op

STATE_VALUES = (
    *JSON_VALUES,
    torch.zeros(0),
    torch.zeros(3, 3),
    torch.full((2,), float("nan")),
    torch.zeros(16, dtype=torch.int64),
    "tiny_cnn",
    "resnet18",
    "facerec",
)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny_cnn checkpoint (32x32 input, 16-d embeddings, 3 classes) with random weights, as training saves."""
    torch.manual_seed(seed)
    cfg = config_from_dict({"model": {"backbone": "tiny_cnn", "embedding_dim": 16}, "data": {"image_size": 32}})
    model, loss_fn = build_model(cfg), build_loss_fn(cfg, 3)
    state = {
        "config": config_to_dict(cfg),
        "classes": ["1", "4", "7"],
        "epoch": 1,
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "scoring": "cosine",
        "threshold": 0.3,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
    }
    return save_checkpoint(state, path)


def state_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Load the checkpoint (weights_only), change one node of its tree (`mutate_tree`), save it again. Zip
    checkpoints only: in the legacy format storage sizes come from the (mutated) file, and this runs in the
    parent process, which has no memory cap."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return byte_mutation(data, rng)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a pickle protocol torch.load does not expect
            state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # already broken by an earlier step: a byte edit instead
        return byte_mutation(data, rng)
    state, what = mutate_tree(state, rng, STATE_VALUES)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), what


def legacy_format(state: dict[str, Any]) -> bytes:
    """`state` in PyTorch's legacy (pre-zip) format, the same bytes in every run: the format names storages by
    memory address and writes them sorted by it, so every tensor of "model" and "loss" is made a float32 view of
    one shared storage (load_state_dict casts back), and that storage's key renumbered."""
    tensors = [(part, k, t) for part in ("model", "loss") for k, t in state[part].items()]
    flat = torch.cat([t.float().flatten() for _, _, t in tensors])
    start = 0
    for part, k, t in tensors:
        state[part][k] = flat[start : start + t.numel()].view(t.shape)
        start += t.numel()
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    (key,) = {
        m[0] for m in re.finditer(rb"X(.)\x00\x00\x00([0-9]{12,19})", buf.getvalue()) if m[1][0] == len(m[2])
    }
    return buf.getvalue().replace(key, b"X\x0e\x00\x00\x00" + b"1" * 14)  # the storage's address, as a string


def pt_corpus(folder: Path) -> list[Seed]:
    """A training checkpoint, its slim fp16 model file, a 2-model ensemble, the checkpoint in PyTorch's legacy
    (pre-zip) format; and malicious files: pickled payloads in a zip checkpoint, a legacy one and a bare
    pickle. Also writes tiny.pt, the model the service target serves."""
    ckpt = tiny_checkpoint(folder / "tiny.pt")
    export_inference(ckpt, folder / "half.pt", half=True)
    build_ensemble(
        [tiny_checkpoint(folder / f"m{i}.pt", seed=i + 1) for i in range(2)], folder / "ens.pt", log=lambda m: None
    )
    files = {name: (folder / name).read_bytes() for name in ("tiny.pt", "half.pt", "ens.pt")}
    files["legacy.pt"] = legacy_format(torch.load(ckpt, weights_only=True))
    ops = (zip_member_op(), state_op)
    seeds = [Seed(name, {"model.pt": data}, "model.pt", ops) for name, data in files.items()]
    for (kind, payload), form in zip(payloads().items(), ("zip", "legacy", "pickle")):
        evil = {"format": "facerec", "config": payload, "model": {}, "classes": ["1"]}
        buf = io.BytesIO()
        if form == "pickle":
            buf.write(pickle.dumps(evil))
        else:
            torch.save(evil, buf, _use_new_zipfile_serialization=form == "zip")
        seeds.append(Seed(f"{kind} payload ({form})", {"model.pt": buf.getvalue()}, "model.pt", ops, "clear"))
    return seeds


def run_model(case: Path, context: Any) -> tuple[str, str]:
    """facerec.load, then info, embed, verify (with a stored threshold) and class_scores of a 20x24 image
    (resized to the model's input size)."""
    (path,) = [p for p in case.iterdir() if p.suffix in (".pt", ".onnx")]
    model = facerec.load(path)
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    info = model.info()
    emb = model.embed([image])
    assert emb.shape == (1, int(info["embedding_dim"])), (emb.shape, info)
    if model.threshold is not None:
        model.verify(image, image[::-1])
    scores = model.class_scores([image])
    assert scores.shape == (1, len(model.classes)), (scores.shape, len(model.classes))
    return "ok", f"{info['backbone']} {tuple(emb.shape)}"


def _edit_metadata(proto: onnx.ModelProto, rng: random.Random) -> str:
    if not proto.metadata_props:
        return "no metadata"
    prop = rng.choice(list(proto.metadata_props))
    if prop.key.endswith("class_head"):
        raw = base64.b64decode(prop.value)
        raw, what = onnx_op(raw, rng) if rng.random() < 0.5 else byte_mutation(raw, rng)
        prop.value = base64.b64encode(raw).decode()
    else:
        value, what = json_op(prop.value.encode(), rng)
        prop.value = value.decode("utf-8", "replace")
    return f"metadata {prop.key}: {what}"


def _edit_graph(proto: onnx.ModelProto, rng: random.Random) -> str:
    graph = proto.graph
    kind = rng.choice(("initializer", "node", "input"))
    if kind == "initializer" and graph.initializer:
        init = rng.choice(list(graph.initializer))
        if init.dims and rng.random() < 0.5:
            i = rng.randrange(len(init.dims))
            init.dims[i] = rng.choice((0, 1, 7, -1, *INTERESTING[:10]))
            return f"initializer {init.name} dims {list(init.dims)}"
        init.raw_data, what = byte_mutation(init.raw_data, rng)
        return f"initializer {init.name} data: {what}"
    if kind == "node" and graph.node:
        node = rng.choice(list(graph.node))
        if rng.random() < 0.5:
            node.op_type = rng.choice(list(graph.node)).op_type
            return f"node {node.name} is now a {node.op_type}"
        if node.input:
            del node.input[rng.randrange(len(node.input))]
        return f"node {node.name}: an input dropped"
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    if not dims:
        return "no input shape"
    dim = dims[rng.randrange(len(dims))]
    dim.dim_value = rng.choice((0, 1, 3, 64, 65535))
    return f"input dim set to {dim.dim_value}"


def onnx_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Parse the ONNX protobuf, change its metadata or its graph, serialise it again."""
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # not a parseable model (any more): a byte edit instead
        return byte_mutation(data, rng)
    what = _edit_metadata(proto, rng) if rng.random() < 0.5 else _edit_graph(proto, rng)
    return proto.SerializeToString(), what


def onnx_corpus(folder: Path) -> list[Seed]:
    """The ONNX export of the tiny model: alone (its metadata inside), and with its JSON sidecar (mutated)."""
    onnx_path, _ = export_onnx(tiny_checkpoint(folder / "for_onnx.pt"), folder / "model.onnx")
    data, side = onnx_path.read_bytes(), sidecar_path(onnx_path).read_bytes()
    return [
        Seed("model.onnx", {"model.onnx": data}, "model.onnx", (onnx_op,)),
        Seed(
            "model.onnx + sidecar",
            {"model.onnx": data, "model.onnx.json": side},
            "model.onnx.json",
            (json_op, text_op),
        ),
    ]


def quiet_onnxruntime(folder: Path) -> None:
    """The worker's ONNX Runtime logs only fatal errors (each damaged file would print one otherwise)."""
    onnxruntime.set_default_logger_severity(4)


MODEL_TARGETS = [
    Target("pt", "checkpoints, model files, ensembles (.pt) -> facerec.load + embed", pt_corpus, run_model),
    Target("onnx", "ONNX exports (+ sidecar) -> facerec.load + embed", onnx_corpus, run_model, quiet_onnxruntime),
]
