"""What the photo commands (cli/photos.py, cli/gallery.py, cli/benchmark.py, `facerec verify`) share, wiring only:
the model and alignment flags, the model and the aligner they choose, the one call that embeds photos
(photos.embed.embed_photos), and how results and skipped photos are printed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facerec.errors import DataError
from facerec.photos.warp import TEMPLATES

if TYPE_CHECKING:
    import torch

DEFAULT_CHECKPOINT = Path("models/facehw.pt")
Command = Callable[[argparse.Namespace], int]


def add_align_switch(p: argparse.ArgumentParser) -> None:
    """--align (the default, kept so that older command lines still work) / --no-align."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--align",
        dest="align",
        action="store_true",
        default=True,
        help="detect and align the face of each photo (the default; MTCNN, from the photos extra); a photo "
        "whose size already is the model's input size is taken as an aligned crop",
    )
    group.add_argument(
        "--no-align",
        dest="align",
        action="store_false",
        help="resize each photo whole to the model's input instead (photos that are face crops already)",
    )
    add_template_flag(p)


def add_template_flag(p: argparse.ArgumentParser) -> None:
    """--align-template: the framing aligned faces are warped to (photos/warp.py TEMPLATES)."""
    p.add_argument(
        "--align-template",
        choices=list(TEMPLATES),
        help="framing of the aligned faces, scaled to the crop size: facehw (HW2P2's 64x64 crops) or arcface "
        "(insightface's 112x112 five-point template); default: the model's data.align_template (facehw for "
        "`facerec align`)",
    )


def add_align_flags(p: argparse.ArgumentParser, switch: bool = True) -> None:
    """The alignment switch (unless `switch` is False: `facerec align` always aligns), --align-template,
    --min-score, --device."""
    if switch:
        add_align_switch(p)
    else:
        add_template_flag(p)
    p.add_argument("--min-score", type=float, default=0.9, help="lowest MTCNN face probability kept (default 0.9)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")


def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--checkpoint",
        required=required,
        help="model checkpoint" + ("" if required else f" (default {DEFAULT_CHECKPOINT})"),
    )
    p.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _match(value: str) -> str:
    """--match: a matching method's name (inference.matching.Match), checked while parsing (torch loads only
    when the option is given)."""
    from facerec.inference.matching import Match

    try:
        return str(Match.of(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_match_flag(p: argparse.ArgumentParser) -> None:
    """--match: how `evaluate` / `predict` match a face to a training identity (inference/matching.py)."""
    p.add_argument(
        "--match",
        type=_match,
        metavar="METHOD",
        help="closed-set matching: centres (classifier logits), mean (class means of the training embeddings) or "
        "knn[:K]; default mean when the model file holds class means, else centres",
    )


def log_for(args: argparse.Namespace) -> Callable[[str], None]:
    """print, or print to stderr under --json (stdout then holds only the JSON object)."""
    return (lambda m: print(m, file=sys.stderr)) if getattr(args, "json", False) else print


def _device(args: argparse.Namespace) -> str:
    from facerec.engine.build import resolve_device

    return str(resolve_device(getattr(args, "device", "cpu")))


def aligner_for(args: argparse.Namespace, size: int = 64) -> Any:
    """A FaceAligner for `size` x `size` crops (the model's input size), or None under --no-align. MTCNN loads on
    the first photo that needs it, so crops of the model's size embed without the photos extra. Its template is
    --align-template, else the model's (photos.embed.embed_photos passes it to FaceAligner.crop)."""
    if not getattr(args, "align", True):
        return None
    from facerec.photos.align import FaceAligner

    min_score, template = getattr(args, "min_score", 0.9), getattr(args, "align_template", None)
    return FaceAligner(size=size, min_score=min_score, device=_device(args), template=template)


def load_model(args: argparse.Namespace) -> Any:
    """The model of --checkpoint (default models/facehw.pt): a run checkpoint, an exported .pt or .onnx file, or
    an ensemble (facerec.load), on --device."""
    import facerec

    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --checkpoint")
    return facerec.load(path, device=_device(args))


def embed_for(
    args: argparse.Namespace,
    fm: Any,
    photos: Sequence[str | Path],
    no_face: Literal["skip", "whole"] = "skip",
    progress: bool = True,
) -> Any:
    """photos.embed.embed_photos with the command's flags (alignment, --no-flip); an EmbeddingSet. Progress
    lines go to the command's log when `progress`."""
    from facerec.photos.embed import embed_photos

    log = log_for(args) if progress else (lambda m: None)
    flip = not getattr(args, "no_flip", False)
    try:
        return embed_photos(fm, photos, aligner_for(args, fm.image_size), flip, no_face, log=log)
    except ImportError as err:  # facenet-pytorch missing: its message says how to install it, or --no-align
        raise ValueError(str(err)) from err


def embed_each(args: argparse.Namespace, fm: Any, photos: Sequence[str | Path]) -> torch.Tensor:
    """(N, D) embeddings of every photo, in order (`facerec verify`); DataError naming a photo that cannot be read
    or shows no face."""
    import torch

    es = embed_for(args, fm, photos, progress=False)
    if es.unreadable:
        raise DataError(f"cannot read photo {es.unreadable[0]}: not an image, or corrupt")
    if es.no_face:
        raise DataError(
            f"no face found in {es.no_face[0]}; use a photo with a visible face, or pass --no-align if it "
            "already is a face crop"
        )
    return torch.from_numpy(es.embeddings)


def report_skipped(es: Any, log: Callable[[str], None], used_whole: bool = False) -> None:
    """The photos an EmbeddingSet left out (at most 20 of each kind); `used_whole`: no-face photos were embedded
    whole (no_face="whole")."""
    what = "used whole" if used_whole else "skipped"
    for title, items, verb in (("unreadable", es.unreadable, "skipped"), ("no face", es.no_face, what)):
        for item in items[:20]:
            log(f"  {verb} ({title}): {item}")
        if len(items) > 20:
            log(f"  ... and {len(items) - 20} more ({title}); see --json")


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")


def missing_package_is_an_error(command: Command) -> Command:
    """A missing optional package (facenet-pytorch, faiss) becomes a ValueError, which `facerec` prints as
    `facerec <cmd>: error: ... pip install ...` instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ImportError as err:
            raise ValueError(str(err)) from err

    return run


def commands(table: dict[str, Command]) -> dict[str, Command]:
    """A module's COMMANDS: each function wrapped by `missing_package_is_an_error`."""
    return {name: missing_package_is_an_error(fn) for name, fn in table.items()}
