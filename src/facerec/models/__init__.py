"""Backbones (registered CNN trunks) and the embedding network built on them.

Importing this package registers the built-in backbones in `BACKBONES` (facerec/registry.py), as importing
`facerec.losses` registers the losses: the 64x64 ResNets and small CPU networks (backbones.py), insightface's
IResNets (iresnet.py) and MobileFaceNet (mobilefacenet.py).
"""

from facerec.models import backbones, iresnet, mobilefacenet  # noqa: F401  (imported to @BACKBONES.register)
from facerec.registry import BACKBONES

__all__ = ["BACKBONES"]
