"""`facerec enroll`, `facerec identify` and `facerec gallery`: a gallery of known people (photos.gallery: SQLite +
FAISS; several commands and a server may use one at once) fed and searched with photos, aligned by default
(wiring only)."""

from __future__ import annotations

import argparse
import json

from facerec.cli.options import (
    add_align_flags,
    add_model_flags,
    commands,
    embed_for,
    load_model,
    log_for,
    report_skipped,
)
from facerec.data.folder import DataError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `enroll`, `identify` and `gallery` subcommands to facerec's parser."""
    p = sub.add_parser("enroll", help="add a person's photos to a gallery (a database + a FAISS index)")
    p.add_argument("name", nargs="?", help="the person's name")
    p.add_argument("photos", nargs="*", help="photos (or folders of photos) of that person")
    p.add_argument("--folder", help="enroll every identity folder of this root (name = folder name) instead")
    p.add_argument(
        "--gallery", required=True, help="gallery folder (created on first enroll; other processes may share it)"
    )
    add_model_flags(p)
    add_align_flags(p)

    p = sub.add_parser("identify", help="who is in this photo? top-k gallery matches, or 'unknown'")
    p.add_argument("photos", nargs="+", help="photos (or folders of photos) to identify")
    p.add_argument("--gallery", required=True)
    p.add_argument("--k", type=int, default=5, help="matches to show (default 5)")
    p.add_argument("--threshold", type=float, help="'unknown' below this score (default: the model's)")
    add_model_flags(p)
    add_align_flags(p)

    p = sub.add_parser("gallery", help="list, remove, rename or re-index the people of a gallery")
    p.add_argument("action", choices=["list", "remove", "rename", "reindex"])
    p.add_argument("name", nargs="?", help="remove / rename: the person")
    p.add_argument("new_name", nargs="?", help="rename: the new name")
    p.add_argument("--gallery", required=True)
    p.add_argument(
        "--index",
        choices=["flat", "ivf", "hnsw", "lsh"],
        default="flat",
        help="reindex: exact search, or IVF, HNSW or LSH (approximate, for large galleries); every process then "
        "uses it",
    )
    p.add_argument("--nlist", type=int, help="reindex --index ivf: number of lists (default ~4 sqrt(N))")
    p.add_argument("--nprobe", type=int, help="reindex --index ivf: lists searched per query (default nlist/4)")
    p.add_argument("--hnsw-m", type=int, help="reindex --index hnsw: links per vector (default 32)")
    p.add_argument("--lsh-bits", type=int, help="reindex --index lsh: sign bits per vector (default: its dim)")
    p.add_argument(
        "--refine", type=int, help="reindex --index lsh: candidates scored exactly per match (default 16)"
    )
    p.add_argument(
        "--ef-search",
        type=int,
        help="reindex --index hnsw: candidates per search (default ~0.8 sqrt(N), 64..1024)",
    )


def cmd_enroll(args: argparse.Namespace) -> int:
    from facerec.data.folder import scan_identity_folders
    from facerec.photos.embed import list_inputs
    from facerec.photos.gallery import open_for_model

    if args.folder:
        index = scan_identity_folders(args.folder)
        people = {c: [p for p, y in zip(index.paths, index.labels) if y == i] for i, c in enumerate(index.classes)}
    elif args.name and args.photos:
        people = {args.name: list_inputs(args.photos)}
    else:
        raise DataError("give NAME PHOTO... (one person), or --folder DIR (one identity folder per person)")
    fm, log = load_model(args), log_for(args)
    with open_for_model(args.gallery, fm, create=True) as gallery:
        for name, photos in people.items():
            try:
                es = embed_for(args, fm, photos, progress=False)
            except DataError as err:
                raise DataError(f"no usable photo of {name!r}: {err}; nothing enrolled") from None
            report_skipped(es, log)
            gallery.add(name, es.embeddings, es.paths)  # one transaction: committed when it returns
            log(f"enrolled {name}: {len(es)} photos ({gallery.people().get(name, 0)} stored)")
        gallery.save()  # the index cache, for the next command
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from facerec.photos.embed import list_inputs
    from facerec.photos.gallery import identify, open_for_model

    fm, log = load_model(args), log_for(args)
    with open_for_model(args.gallery, fm) as gallery:
        es = embed_for(args, fm, list_inputs(args.photos), progress=False)
        report_skipped(es, log)
        threshold = args.threshold if args.threshold is not None else fm.threshold
        results = identify(gallery, es.embeddings, args.k, threshold)
    for p, r in zip(es.paths, results):
        r["photo"] = p
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
    from facerec.photos.gallery import Gallery

    with Gallery.open(args.gallery) as gallery:
        if args.action == "list":
            people = gallery.people()
            kind = gallery.meta["index"]
            print(f"{len(people)} people, {sum(people.values())} photos ({gallery.metric}, {kind} index)")
            for name, count in people.items():
                print(f"{count:6d}  {name}")
            return 0
        if args.action == "remove":
            if not args.name:
                raise DataError("facerec gallery remove NAME --gallery DIR: give the NAME to remove")
            print(f"removed {args.name}: {gallery.remove(args.name)} photos")
        elif args.action == "rename":
            if not (args.name and args.new_name):
                raise DataError("facerec gallery rename NAME NEW_NAME --gallery DIR: give both names")
            print(f"renamed {args.name} to {args.new_name}: {gallery.rename(args.name, args.new_name)} photos")
        else:
            gallery.reindex(
                args.index,
                args.nlist,
                args.nprobe,
                hnsw_m=args.hnsw_m,
                ef_search=args.ef_search,
                lsh_bits=args.lsh_bits,
                refine=args.refine,
            )
            m = gallery.meta
            how = {"ivf": f" (nlist {m['nlist']}, nprobe {m['nprobe']})"}
            how["hnsw"] = f" (M {m['hnsw_m']}, efSearch {m['ef_search']})"
            how["lsh"] = f" ({m['lsh_bits']} bits, refine {m['refine']})"
            print(f"rebuilt a {args.index} index over {len(gallery)} photos{how.get(args.index, '')}")
        gallery.save()
    return 0


COMMANDS = commands({"enroll": cmd_enroll, "identify": cmd_identify, "gallery": cmd_gallery})
