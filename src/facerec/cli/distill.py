"""`facerec distill`: argument wiring only (cli/main.py hooks in `add_parsers` and `COMMANDS`)."""

from __future__ import annotations

import argparse
import sys

from facerec.cli.options import commands


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `distill` subcommand to facerec's parser."""
    p = sub.add_parser(
        "distill",
        help="train a student model from a teacher's embeddings (a facerec model, an ONNX model or dlib)",
        description="Train a student (model.*, loss.* as for train) on the teacher's embeddings of the training "
        "images, cached once, plus its own loss where the images have identities. TEACHER: dlib (pip install "
        "'facerec[dlib]'), a facerec model file (.pt, ensemble .pt, .onnx) or another .onnx model (give its input "
        "with distill.onnx_size / onnx_channels / onnx_mean / onnx_std / onnx_inset). Only training images are "
        "used: verification, test, val and LFW folders are refused.",
    )
    p.add_argument("--teacher", help="dlib, or a model file (.pt / .onnx); required unless --resume")
    p.add_argument(
        "--data", help="HW2P2 folder (its train_data), identity folders, or face crops; required unless --resume"
    )
    p.add_argument("--out", help="run folder (required unless --print-config)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN/last.pt with the run's own config and teacher (key=value overrides still apply)",
    )
    p.add_argument("--config", help="YAML recipe file, or the name of a shipped recipe (facerec list recipes)")
    p.add_argument(
        "--extra", action="append", default=[], metavar="FOLDER", help="another training folder (repeatable)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="compute (or find) the teacher's cached embeddings of the training images, print the file, and exit",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. distill.weight_labels=0.5"
    )


def cmd_distill(args: argparse.Namespace) -> int:
    from facerec.config import config_yaml, load_config, recipe_path
    from facerec.distillation.run import cache_teacher, distill, resume_config

    if not args.out and (args.resume or not (args.print_config or args.cache_only)):
        print("facerec distill: give --out RUN_DIR (the run folder)", file=sys.stderr)
        return 2
    if args.resume:
        given = [f"--{k}" for k in ("teacher", "data", "config", "extra") if getattr(args, k)]
        if given:
            print(
                f"facerec distill --resume: the run keeps its teacher, data and config; drop {', '.join(given)}"
                " (key=value overrides apply)",
                file=sys.stderr,
            )
            return 2
        cfg = resume_config(args.out, list(args.overrides))
    else:
        missing = [f"--{k}" for k in ("teacher", "data") if not getattr(args, k)]
        if missing:
            print(f"facerec distill: give {' and '.join(missing)}", file=sys.stderr)
            return 2
        cfg = load_config(
            recipe_path(args.config) if args.config else None, [f"data.root={args.data}", *args.overrides]
        )
        cfg.distill.teacher = args.teacher  # set, not parsed: a path is not YAML
        cfg.distill.extra = [*cfg.distill.extra, *args.extra]
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    if args.cache_only:
        print(cache_teacher(cfg).path)
        return 0
    distill(cfg, args.out, resume=args.resume)
    return 0


COMMANDS = commands({"distill": cmd_distill})
