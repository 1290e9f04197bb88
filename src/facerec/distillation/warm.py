"""A warm restart's projection: `train.init_from` + `train.init_head` in a distillation run.

The embedding term compares the teacher's targets with the student's embedding through a learned projection (when
their widths differ). A restart that took the student's network and class centres but a fresh, random projection
would start that term near its maximum, and its gradient, through a random map, pulls the trained embedding apart
before the projection has learned anything. So the restart starts the projection too:
  * from the checkpoint's own, when it is a distillation checkpoint (RUN/best.pt, last.pt) of the same teacher;
  * else (an exported model file keeps no projection, or another teacher taught it) by least squares: the map
    that best takes the restarted student's unit embeddings of up to `sample` training images (clean, unflipped)
    to the teacher's targets of the same images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.distillation.losses import DistillLoss
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.evaluate import embed
from facerec.engine.log import Log


def warm_projection(
    loss: DistillLoss,
    path: str,
    fingerprint: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    log: Log,
    device: torch.device | str = "cpu",
    sample: int = 4096,
    seed: int = 0,
) -> None:
    """Start `loss.projection` for a restart from `path` (module notes): `images` (N, S, S, 3) uint8 are the
    training images and `targets` (N, Dt) their teacher targets, as the loss sees them; `model` is the student
    already initialised from `path`. Nothing to do when the widths match (no projection)."""
    projection = loss.projection
    if not isinstance(projection, nn.Linear):
        return
    saved = load_checkpoint(path).get("distill") or {}
    weight = (saved.get("state") or {}).get("projection.weight")
    if saved.get("fingerprint") == fingerprint and weight is not None and weight.shape == projection.weight.shape:
        with torch.no_grad():
            projection.weight.copy_(weight)
        log(f"initialised the distillation projection from {path} (the same teacher's)")
        return
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:sample]
    student = F.normalize(embed(model, images[pick], device, flip=False), dim=1).double()
    wanted = targets[pick].double()
    fitted = torch.linalg.lstsq(student, wanted).solution  # (Ds, Dt): student @ fitted ~ wanted
    with torch.no_grad():
        before = F.cosine_similarity(
            projection(student.float().to(projection.weight.device)).cpu(), wanted.float()
        )
        projection.weight.copy_(fitted.T.float())
    after = F.cosine_similarity((student @ fitted).float(), wanted.float())
    log(
        f"fitted the distillation projection by least squares on {len(pick)} training images: mean cosine to the "
        f"teacher's targets {after.mean():.3f} (a fresh projection's: {before.mean():.3f})"
    )
