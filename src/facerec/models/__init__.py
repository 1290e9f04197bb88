"""Backbones (registered CNN trunks) and the embedding network built on them.

Importing this package registers the built-in backbones in `BACKBONES` (facerec/registry.py), as importing
`facerec.losses` registers the losses.
"""

from facerec.models import backbones  # noqa: F401  (imported for its @BACKBONES.register side effect)
from facerec.registry import BACKBONES

__all__ = ["BACKBONES"]
