"""`facerec benchmark lfw|folder|bin` and `facerec calibrate`: how well a model verifies on labelled photos or on
insightface's .bin packs, and its threshold for a target false-accept rate (wiring only). Photos are aligned by
default; every pair needs a score, so a photo without a detected face is embedded whole
(evaluation.lfw.embed_every_photo). Packs hold aligned crops, decoded at the model's size (evaluation/bins.py)."""

from __future__ import annotations

import argparse
import json

from facerec.cli.options import (
    add_align_flags,
    add_model_flags,
    aligner_for,
    commands,
    load_model,
    log_for,
    print_result,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `benchmark` and `calibrate` subcommands to facerec's parser."""
    p = sub.add_parser(
        "benchmark",
        help="lfw: the LFW 10-fold verification protocol; folder: every pair and "
        "leave-one-out identification over your own identity folders; bin: insightface's protocol on .bin packs",
    )
    p.add_argument("name", choices=["lfw", "folder", "bin"])
    p.add_argument(
        "packs", nargs="*", metavar="PACK.bin", help="bin: insightface verification packs (lfw.bin ...)"
    )
    p.add_argument(
        "--root",
        help="lfw: LFW folder of <name>/<name>_NNNN.jpg; folder: one folder of photos per person (required)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="bin: images decoded and embedded at a time")
    p.add_argument("--pairs", help="lfw: pairs.txt ('10 300' header) or pairsDevTest.txt ('500')")
    p.add_argument(
        "--max-pairs",
        type=int,
        default=2_000_000,
        help="folder: above this many pairs, keep every same-person pair and sample the others "
        "(default 2,000,000)",
    )
    add_model_flags(p, required=False)
    add_align_flags(p)

    p = sub.add_parser("calibrate", help="set the model's verification threshold for a target false-accept rate")
    p.add_argument("--pairs", required=True, help="labelled pairs: LFW format or `a b label` lines")
    p.add_argument("--root", required=True, help="folder the pair file's images are under")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    p.add_argument("--out", help="write a calibrated copy here instead of updating --checkpoint")
    add_model_flags(p)
    add_align_flags(p)


def _no_face_line(no_face: list[str]) -> None:
    if no_face:
        print(f"no face found in {len(no_face)} photos (used whole), e.g. {no_face[0]}")


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.name == "bin":
        return _benchmark_bin(args)
    if args.packs:
        raise ValueError(f"benchmark {args.name} takes no positional files (got {args.packs[0]}); use --root")
    if not args.root:
        raise ValueError(f"benchmark {args.name} needs --root (the folder of photos)")
    if args.name == "folder":
        return _benchmark_folder(args)
    from facerec.evaluation.lfw import benchmark_lfw

    if not args.pairs:
        raise ValueError("benchmark lfw needs --pairs (LFW's pairs.txt or pairsDevTest.txt)")
    fm = load_model(args)
    aligner = aligner_for(args, fm.image_size)
    result = benchmark_lfw(fm, args.pairs, args.root, aligner, not args.no_flip, log_for(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"LFW ({result['protocol']}): accuracy {result['accuracy']:.4f} +- {result['accuracy_std']:.4f}, "
        f"AUC {result['auc']:.4f}, EER {result['eer']:.4f} ({result['n_pairs']} pairs, {result['n_images']} "
        f"images, {'aligned' if result['aligned'] else 'not aligned'}, {result['scoring']} scoring)"
    )
    _no_face_line(result["no_face"])
    return 0


def _benchmark_folder(args: argparse.Namespace) -> int:
    from facerec.evaluation.folder import benchmark_folder

    if args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be at least 1, got {args.max_pairs}")
    fm = load_model(args)
    aligner = aligner_for(args, fm.image_size)
    r = benchmark_folder(fm, args.root, aligner, not args.no_flip, args.max_pairs, log=log_for(args))
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
    _no_face_line(r["no_face"])
    return 0


def _benchmark_bin(args: argparse.Namespace) -> int:
    from facerec.evaluation.bins import benchmark_bins, bins_table

    if not args.packs:
        raise ValueError("benchmark bin needs one or more packs: facerec benchmark bin lfw.bin cfp_fp.bin ...")
    if args.root or args.pairs:
        raise ValueError("benchmark bin reads its images and pairs from the packs; drop --root / --pairs")
    if args.no_flip:
        raise ValueError(
            "benchmark bin follows insightface's protocol, which always adds the mirror image's embedding"
        )
    fm = load_model(args)
    results = benchmark_bins(fm, args.packs, args.batch_size, log_for(args))
    if args.json:
        print(json.dumps(results))
        return 0
    print(bins_table(results))
    print(
        "insightface protocol: flip-summed, L2-normalised embeddings; 10 folds, each with the threshold best on "
        "the other 9; AUC, EER and TAR@FAR over all pairs"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from facerec.evaluation.calibrate import calibrate

    aligner = aligner_for(args)  # its crops are cut at the model's input size (photos.embed.embed_photos)
    result = calibrate(
        args.checkpoint, args.pairs, args.root, args.far, args.out, aligner, not args.no_flip, log_for(args)
    )
    print_result(result, args.json)
    return 0


COMMANDS = commands({"benchmark": cmd_benchmark, "calibrate": cmd_calibrate})
