"""`facerec list losses | backbones | recipes`: what can be chosen by name (cli/main.py hooks in `add_parsers`
and `COMMANDS`)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `list` subcommand to facerec's parser."""
    p = sub.add_parser("list", help="list registered losses, backbones or shipped recipes")
    p.add_argument("what", choices=["losses", "backbones", "recipes"])


def cmd_list(args: argparse.Namespace) -> int:
    from facerec.config import describe_recipes
    from facerec.losses import LOSSES
    from facerec.models import BACKBONES

    if args.what == "recipes":
        described = describe_recipes()
    else:
        described = (LOSSES if args.what == "losses" else BACKBONES).describe()
    width = max(map(len, described), default=0) + 1  # one column of names, as wide as the longest
    for name, text in described.items():
        print(f"{name:<{width}} {text}")
    return 0


COMMANDS = {"list": cmd_list}
