"""Subcommands for real photos: align, benchmark, enroll / identify / gallery, embed, cluster, calibrate (wiring
only).

`add_parsers(sub)` registers them on the `facerec` subparsers; `COMMANDS` maps each name to its function.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT = Path("models/facehw.pt")


def _aligner_args(p: argparse.ArgumentParser, flag: bool = True) -> None:
    if flag:
        p.add_argument(
            "--align",
            action="store_true",
            help="detect and align faces in raw photos first (MTCNN; needs facenet-pytorch)",
        )
    p.add_argument("--min-score", type=float, default=0.9, help="lowest MTCNN face probability kept (default 0.9)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--checkpoint",
        required=required,
        help="model checkpoint" + ("" if required else f" (default {DEFAULT_CHECKPOINT})"),
    )
    p.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="detect + align the faces of a folder of photos into a 64x64 dataset",
        description="Turn IN_DIR (identity folders, or flat) into OUT_DIR with the same structure, "
        "one aligned face crop per photo, framed like the training data.",
    )
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument(
        "--skip-several", action="store_true", help="skip photos with several faces (default: keep one)"
    )
    p.add_argument("--pick", choices=["largest", "score"], default="largest", help="face kept when several")
    p.add_argument("--size", type=int, default=64, help="side of the crops (default 64)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose output already exists")
    p.add_argument("--report", help="write the full list of problem photos to this JSON file")
    _aligner_args(p, flag=False)

    p = sub.add_parser(
        "benchmark",
        help="lfw: the LFW 10-fold verification protocol; folder: every pair and "
        "leave-one-out identification over your own identity folders",
    )
    p.add_argument("name", choices=["lfw", "folder"])
    p.add_argument(
        "--root",
        required=True,
        help="lfw: LFW folder of <name>/<name>_NNNN.jpg; folder: one folder of photos per person",
    )
    p.add_argument("--pairs", help="lfw: pairs.txt ('10 300' header) or pairsDevTest.txt ('500')")
    p.add_argument(
        "--max-pairs",
        type=int,
        default=2_000_000,
        help="folder: above this many pairs, keep every same-person pair and sample the others "
        "(default 2,000,000)",
    )
    _model_args(p, required=False)
    _aligner_args(p)

    p = sub.add_parser("enroll", help="add a person's photos to a gallery (FAISS index + metadata)")
    p.add_argument("name", nargs="?", help="the person's name")
    p.add_argument("photos", nargs="*", help="photos (or folders of photos) of that person")
    p.add_argument("--folder", help="enroll every identity folder of this root (name = folder name) instead")
    p.add_argument("--gallery", required=True, help="gallery folder (created on first enroll)")
    _model_args(p)
    _aligner_args(p)

    p = sub.add_parser("identify", help="who is in this photo? top-k gallery matches, or 'unknown'")
    p.add_argument("photos", nargs="+")
    p.add_argument("--gallery", required=True)
    p.add_argument("--k", type=int, default=5, help="matches to show (default 5)")
    p.add_argument("--threshold", type=float, help="'unknown' below this score (default: the model's)")
    _model_args(p)
    _aligner_args(p)

    p = sub.add_parser("gallery", help="list, remove or re-index the people of a gallery")
    p.add_argument("action", choices=["list", "remove", "reindex"])
    p.add_argument("name", nargs="?", help="person to remove")
    p.add_argument("--gallery", required=True)
    p.add_argument(
        "--index", choices=["flat", "ivf"], default="flat", help="reindex: exact search or IVF (large galleries)"
    )
    p.add_argument("--nlist", type=int, help="reindex --index ivf: number of lists (default ~4 sqrt(N))")
    p.add_argument("--nprobe", type=int, help="reindex --index ivf: lists searched per query (default 8)")

    p = sub.add_parser(
        "embed",
        help="embeddings of photos (files or folders) to a .npz or .csv file",
        description="Embed every photo of the inputs (image files, and every image below each "
        "folder) with the model; unreadable photos and, with --align, photos without "
        "a face are skipped and listed. The file keeps the model's scoring and "
        "threshold (.npz) for `facerec cluster` or your own tools.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output file: .npz (NumPy) or .csv (path,e0,e1,...)")
    _model_args(p, required=False)
    _aligner_args(p)

    p = sub.add_parser(
        "cluster",
        help="group unlabelled face photos by person (agglomerative clustering)",
        description="Cluster the photos of the inputs (files and folders, or one embedding file "
        "made by `facerec embed`) so that each cluster is one person: groups merge "
        "while their linkage similarity is above --threshold (default: the model's "
        "verification threshold). Writes path,cluster,cluster_size rows.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders, or one .npz/.csv from `facerec embed`")
    p.add_argument("--out", required=True, help="CSV file: path,cluster,cluster_size (largest cluster first)")
    p.add_argument("--threshold", type=float, help="merge above this score (default: the model's threshold)")
    p.add_argument(
        "--linkage",
        choices=["average", "complete", "single"],
        default="average",
        help="group similarity: mean, lowest or highest over cross pairs (default average)",
    )
    p.add_argument("--folders", help="also copy the photos into this new folder, one subfolder per cluster")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="the photos sit in identity folders: score the clusters against the folder names "
        "(pair precision / recall / F1, ARI, NMI), e.g. to choose --threshold",
    )
    _model_args(p, required=False)
    _aligner_args(p)

    p = sub.add_parser("calibrate", help="set the model's verification threshold for a target false-accept rate")
    p.add_argument("--pairs", required=True, help="labelled pairs: LFW format or `a b label` lines")
    p.add_argument("--root", required=True, help="folder the pair file's images are under")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    p.add_argument("--out", help="write a calibrated copy here instead of updating --checkpoint")
    _model_args(p)
    _aligner_args(p)


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    return (lambda m: print(m, file=sys.stderr)) if getattr(args, "json", False) else print


def _device(args: argparse.Namespace) -> str:
    from facerec.engine.build import resolve_device

    return str(resolve_device(args.device))


def _aligner(args: argparse.Namespace, size: int = 64) -> Any:
    from facerec.photos.align import FaceAligner

    return FaceAligner(size=size, min_score=args.min_score, device=_device(args))


def _model(args: argparse.Namespace) -> Any:
    from facerec.inference.model import FaceModel

    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --checkpoint")
    return FaceModel.load(path, device=_device(args))


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")


def cmd_align(args: argparse.Namespace) -> int:
    from facerec.photos.align import align_folder

    report = align_folder(
        args.in_dir, args.out_dir, _aligner(args, args.size), args.skip_several, args.pick, args.overwrite
    )
    print(report.summary(args.skip_several))
    for title, items in (
        ("no face", report.no_face),
        ("several faces", [f"{p} ({n})" for p, n in report.several]),
        ("unreadable", [f"{p}: {e}" for p, e in report.unreadable]),
    ):
        for item in items[:20]:
            print(f"  {title}: {item}")
        if len(items) > 20:
            print(f"  ... and {len(items) - 20} more ({title}); see --report")
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=1))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.name == "folder":
        return _benchmark_folder(args)
    from facerec.evaluation.lfw import benchmark_lfw

    if not args.pairs:
        raise ValueError("benchmark lfw needs --pairs (LFW's pairs.txt or pairsDevTest.txt)")
    aligner = _aligner(args) if args.align else None
    result = benchmark_lfw(_model(args), args.pairs, args.root, aligner, not args.no_flip, _log(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"LFW ({result['protocol']}): accuracy {result['accuracy']:.4f} +- {result['accuracy_std']:.4f}, "
        f"AUC {result['auc']:.4f}, EER {result['eer']:.4f} ({result['n_pairs']} pairs, {result['n_images']} "
        f"images, {'aligned' if result['aligned'] else 'not aligned'}, {result['scoring']} scoring)"
    )
    if result["no_face"]:
        print(f"no face found in {len(result['no_face'])} photos (used whole), e.g. {result['no_face'][0]}")
    return 0


def _benchmark_folder(args: argparse.Namespace) -> int:
    from facerec.evaluation.folder import benchmark_folder

    if args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be at least 1, got {args.max_pairs}")
    aligner = _aligner(args) if args.align else None
    r = benchmark_folder(_model(args), args.root, aligner, not args.no_flip, args.max_pairs, log=_log(args))
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['n_images']} photos of {r['n_people']} people ({'aligned' if r['aligned'] else 'not aligned'}, "
        f"{r['scoring']} scoring)"
    )
    print(
        f"verification, {r['n_pairs']:,} pairs ({r['n_pos']:,} same; {r['pairs']}): AUC {r['auc']:.4f}, "
        f"EER {r['eer']:.4f}, TAR@FAR=1e-2 {r['tar@far=1e-2']:.4f}, TAR@FAR=1e-3 {r['tar@far=1e-3']:.4f}, "
        f"best accuracy {r['best_acc']:.4f} at {r['best_threshold']:.4f} (tuned on these pairs)"
    )
    print(
        f"identification, leave one out ({r['n_probes']} photos of people with 2+ photos): rank-1 "
        f"{r['rank1']:.4f}, rank-5 {r['rank5']:.4f}"
    )
    if r["no_face"]:
        print(f"no face found in {len(r['no_face'])} photos (used whole), e.g. {r['no_face'][0]}")
    return 0


def _photo_list(items: list[str]) -> list[Path]:
    from facerec.photos.align import list_photos

    out: list[Path] = []
    for item in items:
        p = Path(item)
        out += list_photos(p) if p.is_dir() else [p]
    return out


def _embed(fm: Any, photos: list[Path], aligner: Any, flip: bool, log: Callable[[str], None]) -> tuple[Any, list]:
    """Embeddings of the photos that have a face (all of them without an aligner), and those photos."""
    from facerec.data.folder import DataError
    from facerec.photos.align import load_face

    crops, kept = [], []
    for p in photos:
        try:
            crops.append(load_face(p, aligner))
            kept.append(p)
        except DataError as err:
            log(f"skipped: {err}")
    return (fm.embed(crops, flip=flip) if crops else None), kept


def cmd_enroll(args: argparse.Namespace) -> int:
    from facerec.data.folder import DataError, scan_identity_folders
    from facerec.photos.gallery import open_for_model

    if args.folder:
        index = scan_identity_folders(args.folder)
        people = {c: [p for p, y in zip(index.paths, index.labels) if y == i] for i, c in enumerate(index.classes)}
    elif args.name and args.photos:
        people = {args.name: _photo_list(args.photos)}
    else:
        raise DataError("give NAME PHOTO... (one person), or --folder DIR (one identity folder per person)")
    fm, log = _model(args), _log(args)
    aligner = _aligner(args) if args.align else None
    gallery = open_for_model(args.gallery, fm, create=True)
    for name, photos in people.items():
        emb, kept = _embed(fm, photos, aligner, not args.no_flip, log)
        if emb is None:
            raise DataError(f"no usable photo of {name!r} among {len(photos)}; nothing enrolled")
        gallery.add(name, emb, [str(p) for p in kept])
        log(f"enrolled {name}: {len(kept)} photos ({gallery.people()[name]} stored)")
    gallery.save()
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from facerec.data.folder import DataError
    from facerec.photos.gallery import identify, open_for_model

    fm, log = _model(args), _log(args)
    gallery = open_for_model(args.gallery, fm)
    photos = _photo_list(args.photos)
    emb, kept = _embed(fm, photos, _aligner(args) if args.align else None, not args.no_flip, log)
    if emb is None:
        raise DataError("none of the photos could be used")
    threshold = args.threshold if args.threshold is not None else fm.threshold
    results = identify(gallery, emb, args.k, threshold)
    for p, r in zip(kept, results):
        r["photo"] = str(p)
        r["threshold"] = threshold
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
        return 0
    for r in results:
        note = "" if threshold is not None else " (no threshold: pass --threshold or calibrate the model)"
        print(f"{r['photo']}: {r['name']} ({r['score']:.4f}){note}")
        for name, score in r["matches"]:
            print(f"    {score:8.4f}  {name}")
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from facerec.data.folder import DataError
    from facerec.photos.gallery import Gallery

    gallery = Gallery.open(args.gallery)
    if args.action == "list":
        people = gallery.people()
        print(f"{len(people)} people, {len(gallery)} photos ({gallery.metric}, {gallery.meta['index']} index)")
        for name, count in people.items():
            print(f"{count:6d}  {name}")
        return 0
    if args.action == "remove":
        if not args.name:
            raise DataError("facerec gallery remove NAME --gallery DIR: give the NAME to remove")
        print(f"removed {args.name}: {gallery.remove(args.name)} photos")
    else:
        gallery.reindex(args.index, args.nlist, args.nprobe)
        print(f"rebuilt a {args.index} index over {len(gallery)} photos")
    gallery.save()
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from facerec.evaluation.calibrate import calibrate

    aligner = _aligner(args) if args.align else None
    result = calibrate(
        args.checkpoint, args.pairs, args.root, args.far, args.out, aligner, not args.no_flip, _log(args)
    )
    _print(result, args.json)
    return 0


def _any_model(args: argparse.Namespace) -> Any:
    """A .pt checkpoint or an ONNX export (facerec.load), default models/facehw.pt."""
    import facerec

    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --checkpoint")
    return facerec.load(path, device=_device(args))


def _embed_inputs(args: argparse.Namespace) -> Any:
    from facerec.photos.embed import embed_files

    fm = _any_model(args)
    aligner = _aligner(args, fm.image_size) if args.align else None
    return embed_files(fm, args.inputs, aligner, not args.no_flip, log=_log(args))


def _skipped(es: Any, log: Callable[[str], None]) -> None:
    for title, items in (("unreadable", es.unreadable), ("no face", es.no_face)):
        for item in items[:20]:
            log(f"  skipped ({title}): {item}")
        if len(items) > 20:
            log(f"  ... and {len(items) - 20} more ({title}); see --json")


def cmd_embed(args: argparse.Namespace) -> int:
    from facerec.photos.embed import save_embeddings

    es = _embed_inputs(args)
    out = save_embeddings(es, args.out)
    result = {**es.summary(), "out": str(out)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{len(es)} embeddings ({result['dim']}-d, {es.scoring} scoring) -> {out}; skipped "
        f"{len(es.unreadable)} unreadable, {len(es.no_face)} without a face"
    )
    _skipped(es, print)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from facerec.data.folder import DataError
    from facerec.photos.cluster import (
        cluster_embeddings,
        cluster_summary,
        clustering_scores,
        copy_into_folders,
        write_clusters_csv,
    )
    from facerec.photos.embed import is_embedding_file, load_embeddings

    log = _log(args)
    if len(args.inputs) == 1 and is_embedding_file(args.inputs[0]):
        es = load_embeddings(args.inputs[0])
        log(f"{len(es)} embeddings read from {args.inputs[0]} ({es.scoring} scoring)")
    else:
        es = _embed_inputs(args)
    threshold = args.threshold if args.threshold is not None else es.threshold
    if threshold is None:
        raise DataError(
            "no threshold: this model or embedding file stores none; pass --threshold "
            "(or set one with `facerec calibrate`)"
        )
    labels = cluster_embeddings(es.embeddings, es.scoring, threshold, args.linkage)
    write_clusters_csv(es.paths, labels, args.out)
    result: dict[str, Any] = {
        **cluster_summary(labels),
        "threshold": float(threshold),
        "linkage": args.linkage,
        "scoring": es.scoring,
        "out": str(args.out),
        "unreadable": es.unreadable,
        "no_face": es.no_face,
    }
    if args.folders:
        result["folders"] = str(copy_into_folders(es.paths, labels, args.folders))
    if args.evaluate:
        result.update(clustering_scores(labels, [Path(p).parent.name for p in es.paths]))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['photos']} photos -> {result['clusters_of_2_or_more']} clusters of 2 or more (largest "
        f"{result['largest']}) and {result['singletons']} single photos; {args.linkage} linkage above "
        f"{threshold:.4f} ({es.scoring}) -> {args.out}"
    )
    if args.evaluate:
        print(
            f"against the folder names ({result['identities']} identities): pair precision "
            f"{result['pair_precision']:.4f}, recall {result['pair_recall']:.4f}, F1 {result['pair_f1']:.4f}, "
            f"ARI {result['ari']:.4f}, NMI {result['nmi']:.4f}"
        )
    if args.folders:
        print(f"copies: {result['folders']}/cluster_*/ and singletons/")
    _skipped(es, print)
    return 0


Command = Callable[[argparse.Namespace], int]


def _missing_package_is_an_error(command: Command) -> Command:
    """A missing optional package (facenet-pytorch, faiss) becomes a ValueError, which `facerec` prints as
    `facerec <cmd>: error: ... pip install ...` instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ImportError as err:
            raise ValueError(str(err)) from err

    return run


COMMANDS: dict[str, Command] = {
    name: _missing_package_is_an_error(fn)
    for name, fn in {
        "align": cmd_align,
        "benchmark": cmd_benchmark,
        "enroll": cmd_enroll,
        "identify": cmd_identify,
        "gallery": cmd_gallery,
        "calibrate": cmd_calibrate,
        "embed": cmd_embed,
        "cluster": cmd_cluster,
    }.items()
}
