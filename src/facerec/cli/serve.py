"""`facerec export`, `facerec ensemble` and `facerec serve`: argument wiring only (cli.py hooks in `add_parsers`
and `COMMANDS`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from facerec.data.folder import MAX_PIXELS

MiB = 1 << 20


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a deployable model file: slim .pt checkpoint or ONNX + JSON sidecar",
        description="--out model.pt: the inference part of a checkpoint (no optimiser state), "
        "loadable with facerec.load. --out model.onnx: the embedding network as ONNX "
        "(dynamic batch) with its closed-set class head, plus model.onnx.json with "
        "preprocessing, scoring, threshold and classes; every --checkpoint takes it.",
    )
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (RUN/best.pt) or model file")
    p.add_argument("--out", required=True, help="output file: *.pt / *.pth or *.onnx")
    p.add_argument("--half", action="store_true", help="(.pt) store weights as fp16, about half the size")
    p.add_argument("--opset", type=int, default=17, help="(.onnx) ONNX opset version (default 17)")
    p.add_argument(
        "--dynamo",
        action="store_true",
        help="(.onnx) use the torch.export-based exporter (needs onnxscript) instead of the TorchScript one",
    )
    p.add_argument("--no-check", action="store_true", help="(.onnx) skip comparing ONNX Runtime with PyTorch")
    p.add_argument(
        "--train-data",
        metavar="DATA",
        help="(.pt) also store the class means of the model's training images in DATA (the dataset folder or pack "
        "it trained on): closed-set matching by 'mean', then the default (docs/benchmarks.md)",
    )
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="(with --train-data) also store every training image's embedding, fp16, for --match knn",
    )


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine several trained models into one model file",
        description="Write one model file that embeds with every model given (their cosines "
        "averaged) and classifies by their mean probabilities; use it wherever a "
        "checkpoint goes (evaluate, predict, verify, serve, galleries). With --data, "
        "score each model and the ensemble on its val split and pairs, and store the "
        "ensemble's best-accuracy threshold on the val pairs.",
    )
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoints or model files of one dataset")
    p.add_argument("--out", required=True, help="the ensemble's model file (.pt)")
    p.add_argument("--data", help="dataset with a labelled val split and/or val pairs (e.g. the HW2P2 root)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from facerec.cli.options import add_align_switch

    p = sub.add_parser(
        "serve",
        help="web service + page: verify two photos, identify / enroll with a gallery",
        description="Serve a model over HTTP (FastAPI + uvicorn; pip install 'facerec[serve]'). "
        "Open http://HOST:PORT/ for the page; the API is under /api (docs at /docs).",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint, an exported .pt, or an exported .onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8000)
    add_align_switch(p)  # uploads: the face aligned (default), or --no-align: the whole photo resized
    p.add_argument(
        "--gallery",
        metavar="DIR",
        help="gallery folder (facerec.photos.gallery; created if new): enables "
        "identify / enroll / delete, saved after each change",
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image file (default 10)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"largest accepted width x height (default {MAX_PIXELS})",
    )
    p.add_argument("--device", default="cpu", help="torch device for .pt models (default cpu)")


def _train_set(args: argparse.Namespace) -> dict:
    """--train-data: the model file entries closed-set matching needs (evaluation.datasets.train_set_entries)."""
    from facerec.evaluation.datasets import train_set_entries
    from facerec.inference.model import load_model_file

    return train_set_entries(load_model_file(args.checkpoint), args.train_data, args.train_embeddings)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `export`, `ensemble` and `serve` subcommands to facerec's parser."""
    _add_export(sub)
    _add_ensemble(sub)
    _add_serve(sub)


def cmd_export(args: argparse.Namespace) -> int:
    from facerec.inference.export import compare_onnx, export_model

    if args.train_embeddings and not args.train_data:
        print("facerec export: --train-embeddings needs --train-data DATA", file=sys.stderr)
        return 2
    extra = _train_set(args) if args.train_data else None
    try:
        paths = export_model(args.checkpoint, args.out, args.half, args.opset, args.dynamo, extra)
    except ImportError as err:  # --dynamo without onnxscript, or a torch build without ONNX export
        hint = "pip install onnxscript, or drop --dynamo" if args.dynamo else "pip install 'facerec[onnx]'"
        print(f"facerec export: {err}; {hint}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / MiB:.2f} MiB)")
    if paths[0].suffix.lower() == ".onnx" and not args.no_check:
        try:
            check = compare_onnx(args.checkpoint, paths[0])
        except ImportError:
            print("onnxruntime is not installed: not compared with PyTorch (pip install 'facerec[onnx]')")
        else:
            classes = f", class scores {check['class_rel_err']:.2e}" if "class_rel_err" in check else ""
            print(
                f"ONNX Runtime vs PyTorch on {check['batch']} random images: embeddings max abs diff "
                f"{check['max_abs_diff']:.2e}, relative error {check['rel_err']:.2e}{classes}"
            )
            if max(check["rel_err"], check.get("class_rel_err", 0.0)) > 1e-3:
                print("warning: ONNX Runtime and PyTorch disagree; do not deploy this file", file=sys.stderr)
                return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from facerec.serve.app import create_app
    except ImportError as err:
        print(f"facerec serve needs FastAPI and uvicorn ({err}); pip install 'facerec[serve]'", file=sys.stderr)
        return 1
    from facerec.inference.load import load
    from facerec.serve.ports import Unavailable, load_aligner, load_gallery
    from facerec.serve.uploads import Limits

    try:
        model = load(args.checkpoint, device=args.device)
    except ImportError as err:  # an .onnx model without onnxruntime: the message says what to install
        print(f"facerec serve: {err}", file=sys.stderr)
        return 1
    aligner = None
    if args.align:  # the default: refuse to start rather than serve photos the model cannot read
        aligner = load_aligner(model.image_size, args.align_template or model.config.data.align_template)
        if isinstance(aligner, Unavailable):
            print(f"facerec serve: {aligner.reason}", file=sys.stderr)
            return 1
    gallery = load_gallery(model, args.gallery)
    if isinstance(gallery, Unavailable):
        print(f"facerec serve: identify/enroll/delete answer 501: {gallery.reason}", file=sys.stderr)
    limits = Limits(max_bytes=int(args.max_upload_mb * MiB), max_pixels=args.max_pixels)
    app = create_app(model, gallery=gallery, aligner=aligner, limits=limits)
    mode = "faces aligned" if aligner else "photos resized whole (--no-align)"
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port}/ ({mode}; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    import json

    from facerec.evaluation.ensemble import build_ensemble

    if Path(args.out).suffix.lower() not in (".pt", ".pth"):
        raise ValueError(f"an ensemble is written as a .pt model file; end --out with .pt, not {args.out!r}")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = build_ensemble(args.checkpoints, args.out, args.data, log)
    if args.json:
        print(json.dumps(result))
        return 0
    keys = [k for k in ("auc", "eer", "accuracy", "top5") if k in result["ensemble"]]
    if keys:
        print(f"{'model':<40} " + " ".join(f"{k:>9}" for k in keys))
        rows = [(m["checkpoint"], m) for m in result["members"]] + [("ensemble", result["ensemble"])]
        for name, m in rows:
            print(f"{name[-40:]:<40} " + " ".join(f"{m[k]:>9.4f}" for k in keys))
    thr = result["threshold"]
    print(
        f"wrote {result['out']}: {len(args.checkpoints)} models; threshold "
        f"{'none' if thr is None else f'{thr:.4f}'} ({result['threshold_source']})"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "export": cmd_export,
    "serve": cmd_serve,
    "ensemble": cmd_ensemble,
}
