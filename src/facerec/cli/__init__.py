"""The `facerec` command line: one module per group of commands; `main` parses and dispatches."""

from facerec.cli.main import main

__all__ = ["main"]
