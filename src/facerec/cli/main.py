"""`facerec` command line: argument wiring only; the work happens in pipeline / inference / report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a face-embedding model",
        description="Train on an HW2P2 dataset (either layout), any folder of identity folders, a pack, or an "
        "insightface folder of train.rec, train.idx and property.",
    )
    p.add_argument("--data", help="dataset folder, pack or .rec folder (sets data.root)")
    p.add_argument("--out", help="run folder: checkpoints, metrics.jsonl, config.yaml (required to train)")
    p.add_argument("--config", help="YAML recipe file, or the name of a shipped recipe (facerec list recipes)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt (overrides still apply)")
    p.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint instead of RUN/last.pt")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (defaults, recipe, overrides) as YAML and exit",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: suggest optim.lr for a config and dataset",
        description="Train a fresh model of the config for --steps steps while the learning rate "
        "grows from --start to --end; write OUT/lr_find.csv and OUT/lr_find.png and "
        "print the suggested optim.lr.",
    )
    p.add_argument("--data", help="dataset folder or pack (sets data.root)")
    p.add_argument("--out", required=True, help="folder for lr_find.csv and lr_find.png")
    p.add_argument("--config", help="YAML recipe file, or the name of a shipped recipe")
    p.add_argument("--start", type=float, default=1e-5, help="first learning rate (default 1e-5)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=100, help="steps, one batch each (default 100)")
    p.add_argument(
        "--diverge",
        type=float,
        default=4.0,
        help="stop once the smoothed loss passes this multiple of its minimum (default 4)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.batch_size=128")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from facerec.cli.options import add_match_flag

    p = sub.add_parser("evaluate", aliases=["eval"], help="accuracy and verification metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="dataset folder: its val split and val pair file are evaluated")
    p.add_argument("--pairs", help="labelled pairs: `a b label` lines or LFW's pairs.txt")
    p.add_argument("--root", help="folder the pair file's paths are relative to")
    p.add_argument("--scoring", choices=["cosine", "euclidean"], help="override the loss's own scoring")
    p.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--ci", action="store_true", help="95%% bootstrap intervals of pair metrics")
    add_match_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from facerec.cli.options import add_match_flag

    p = sub.add_parser("predict", help="write both Kaggle submission files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-flip", action="store_true")
    add_match_flag(p)
    p.add_argument("--device", default="auto")


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="decode a dataset once into a memory-mapped pack (train with --data OUT)",
        description="Decode the training split of DIR (an HW2P2 root, a folder of identity "
        "folders, or an insightface folder of train.rec, train.idx and property) into OUT/images.npy "
        "(N, S, S, 3) uint8, labels.npy and meta.json.",
    )
    p.add_argument("dir", help="dataset folder")
    p.add_argument("out", help="new pack folder")
    p.add_argument("--image-size", type=int, default=64, help="side of the stored square images (default 64)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decoding threads")


def _add_misc(sub: argparse._SubParsersAction) -> None:
    from facerec.cli.options import add_align_switch

    p = sub.add_parser("report", help="write the one-page write-up of a run (Markdown + PNG plots)")
    p.add_argument("run_dir")
    p = sub.add_parser("verify", help="score two face images; same/different at the model's threshold")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--threshold", type=float)
    add_align_switch(p)
    p.add_argument("--json", action="store_true")


def _command_modules() -> tuple:
    """The modules that add subcommands (`add_parsers(sub)`, `COMMANDS`): photos, galleries, benchmarks, serve,
    distillation, listings."""
    from facerec.cli import benchmark, distill, gallery, listing, photos, serve

    return photos, gallery, benchmark, serve, distill, listing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facerec", description="Face classification and verification toolkit.")
    from facerec import __version__

    parser.add_argument("--version", action="version", version=f"facerec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_lr_find(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_pack(sub)
    _add_misc(sub)
    for module in _command_modules():
        module.add_parsers(sub)
    return parser


def _device(name: str) -> str:
    from facerec.engine.build import resolve_device

    return str(resolve_device(name))


def cmd_train(args: argparse.Namespace) -> int:
    from facerec.config import config_yaml, load_config, recipe_conflicts, recipe_path
    from facerec.engine.run import resume_config, train

    overrides = list(args.overrides)
    if args.data:
        overrides.insert(0, f"data.root={args.data}")
    resume = args.resume_from or args.resume
    if not args.out and (resume is True or not args.print_config):
        print("facerec train: give --out RUN_DIR (the run folder)", file=sys.stderr)
        return EXIT_USAGE
    if resume:  # the run's own config, overrides on top; a repeated --config must not change it silently
        cfg = resume_config(args.out or "", resume, overrides)
        conflicts = recipe_conflicts(recipe_path(args.config), cfg) if args.config else []
        if conflicts:
            print(
                f"warning: --config {args.config} sets {', '.join(conflicts)} other than the run being resumed; "
                "the run continues with its own config (RUN/config.yaml), key=value overrides applied",
                file=sys.stderr,
            )
    else:
        cfg = load_config(recipe_path(args.config) if args.config else None, overrides)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    train(cfg, args.out, resume=resume)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from facerec import find_lr

    result = find_lr(
        args.data, args.config, args.overrides, args.start, args.end, args.steps, args.diverge, out=args.out
    )
    print(f"wrote {Path(args.out) / 'lr_find.csv'} and {Path(args.out) / 'lr_find.png'}")
    if result.suggestion is None:
        print(
            "no suggestion: the loss never fell, or still fell at the end of the range; widen the range "
            "(--start, --end) or take more --steps"
        )
        return 0
    cautious = f"; steepest descent at {result.steepest:.3g}, a cautious choice" if result.steepest else ""
    print(
        f"suggested optim.lr={result.suggestion:.3g} (where the smoothed loss was lowest: the peak rate of a "
        f"warm-up + cosine schedule{cautious})"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from facerec.evaluation.datasets import evaluate_dataset, evaluate_pair_file
    from facerec.inference.load import load

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    fm = load(args.checkpoint, device=_device(args.device))
    flip, rounds = not args.no_flip, 1000 if args.ci else 0
    if args.pairs:
        root = args.root or str(Path(args.pairs).parent)
        result = evaluate_pair_file(fm, args.pairs, root, None, args.scoring, flip, rounds)
    elif args.data:
        result = evaluate_dataset(fm, args.data, args.scoring, flip, log, args.match, rounds)
    else:
        print("facerec evaluate: give --data DIR, or --pairs FILE [--root DIR]", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key.endswith("_ci"):  # a (low, high) interval
                value = f"{value[0]:.4f} - {value[1]:.4f}"
            print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from facerec.evaluation.datasets import write_submissions
    from facerec.inference.load import load

    fm = load(args.checkpoint, device=_device(args.device))
    write_submissions(fm, args.data, args.out, flip=not args.no_flip, match=args.match)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from facerec.data.pack import pack_dataset

    pack_dataset(args.dir, args.out, args.image_size, args.workers)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from facerec.outputs.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from facerec.cli.options import embed_each
    from facerec.inference.load import load
    from facerec.metrics.scoring import Scoring

    fm = load(args.checkpoint)
    thr = args.threshold if args.threshold is not None else fm.threshold
    e = embed_each(args, fm, [args.image_a, args.image_b])  # aligned unless --no-align (photos.embed.embed_photos)
    score = float(Scoring.of(fm.scoring).pairs(e[:1], e[1:])[0])
    same = None if thr is None else Scoring.accept(score, thr)
    if args.json:
        print(json.dumps({"score": score, "threshold": thr, "same": same, "scoring": fm.scoring}))
    else:
        print(f"score {score:.4f} ({fm.scoring})")
        if thr is None:
            print("no threshold stored with this model; pass --threshold for a decision")
        else:
            print(f"{'same person' if same else 'different people'} (threshold {thr:.4f})")
    return 0


COMMANDS = {
    "train": cmd_train,
    "lr-find": cmd_lr_find,
    "evaluate": cmd_evaluate,
    "eval": cmd_evaluate,
    "predict": cmd_predict,
    "pack": cmd_pack,
    "report": cmd_report,
    "verify": cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for module in _command_modules():
        COMMANDS.update(module.COMMANDS)
    from facerec.config import ConfigError
    from facerec.data.folder import DataError
    from facerec.engine.checkpoint import CheckpointError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, CheckpointError, OSError, ValueError) as err:
        print(f"facerec {args.command}: error: {err}", file=sys.stderr)
        if os.environ.get("FACEREC_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
