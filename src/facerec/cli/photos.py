"""`facerec align`, `facerec embed` and `facerec cluster`: photos to aligned crops, to embeddings, to groups of one
person (wiring only). Galleries are in cli/gallery.py, benchmarks and calibration in cli/benchmark.py.

`add_parsers(sub)` registers them on the `facerec` subparsers; `COMMANDS` maps each name to its function.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from facerec.cli.options import (
    add_align_flags,
    add_model_flags,
    aligner_for,
    commands,
    embed_for,
    load_model,
    log_for,
    report_skipped,
)


def _add_align(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="detect + align the faces of a folder of photos into a dataset of --size crops (default 64x64)",
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
    add_align_flags(p, switch=False)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embeddings of photos (files or folders) to a .npz or .csv file",
        description="Embed every photo of the inputs (image files, and every image below each "
        "folder) with the model, each photo's face aligned first (unless --no-align); "
        "unreadable photos and photos without a face are skipped and listed. The file "
        "keeps the model's scoring and threshold (.npz) for `facerec cluster` or your own tools.",
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output file: .npz (NumPy) or .csv (path,e0,e1,...)")
    add_model_flags(p, required=False)
    add_align_flags(p)


def _add_cluster(sub: argparse._SubParsersAction) -> None:
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
    add_model_flags(p, required=False)
    add_align_flags(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `align`, `embed` and `cluster` subcommands to facerec's parser."""
    _add_align(sub)
    _add_embed(sub)
    _add_cluster(sub)


def cmd_align(args: argparse.Namespace) -> int:
    from facerec.photos.align import align_folder

    report = align_folder(
        args.in_dir, args.out_dir, aligner_for(args, args.size), args.skip_several, args.pick, args.overwrite
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


def _embed_inputs(args: argparse.Namespace) -> Any:
    from facerec.photos.embed import list_inputs

    return embed_for(args, load_model(args), list_inputs(args.inputs))


def cmd_embed(args: argparse.Namespace) -> int:
    from facerec.photos.embed import save_embeddings

    es = _embed_inputs(args)
    out = save_embeddings(es, args.out)
    result = {**es.summary(), "out": str(out), "aligned": args.align}
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{len(es)} embeddings ({result['dim']}-d, {es.scoring} scoring{', aligned' if args.align else ''}) -> "
        f"{out}; skipped {len(es.unreadable)} unreadable, {len(es.no_face)} without a face"
    )
    report_skipped(es, print)
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

    log = log_for(args)
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
    _print_clusters(result, args, es.scoring)
    report_skipped(es, print)
    return 0


def _print_clusters(result: dict[str, Any], args: argparse.Namespace, scoring: str) -> None:
    print(
        f"{result['photos']} photos -> {result['clusters_of_2_or_more']} clusters of 2 or more (largest "
        f"{result['largest']}) and {result['singletons']} single photos; {args.linkage} linkage above "
        f"{result['threshold']:.4f} ({scoring}) -> {args.out}"
    )
    if args.evaluate:
        print(
            f"against the folder names ({result['identities']} identities): pair precision "
            f"{result['pair_precision']:.4f}, recall {result['pair_recall']:.4f}, F1 {result['pair_f1']:.4f}, "
            f"ARI {result['ari']:.4f}, NMI {result['nmi']:.4f}"
        )
    if args.folders:
        print(f"copies: {result['folders']}/cluster_*/ and singletons/")


COMMANDS = commands({"align": cmd_align, "embed": cmd_embed, "cluster": cmd_cluster})
