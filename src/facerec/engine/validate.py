"""Validation during training: closed-set accuracy on the val images, verification metrics on the val pairs and
insightface's protocol on the data.val_bins packs, through the one scoring path of engine/evaluate.py, of the
weight average when the run keeps one."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from facerec.engine.evaluate import (
    class_prototypes,
    class_scores,
    embed,
    evaluate_closed_set,
    evaluate_pairs,
    score_pairs,
)
from facerec.engine.parts import FitParts
from facerec.metrics.insightface import protocol_report


def prototypes_for(parts: FitParts, per_class: int = 8, with_classifier: bool = False) -> torch.Tensor | None:
    """Class prototypes (C, D): the mean flip-TTA embedding of up to `per_class` training images per class. None
    for a loss with a classifier unless `with_classifier` (the class means closed-set matching by "mean" uses,
    inference/matching.py)."""
    if parts.loss_fn.has_logits and not with_classifier:
        return None
    labels = parts.train.labels
    order = torch.argsort(labels, stable=True)
    first = torch.searchsorted(labels[order], labels[order], side="left")
    rank = torch.arange(len(order)) - first
    pick = order[rank < per_class]
    opts = parts.step.opts
    e = embed(
        parts.model, parts.train.images[pick], opts.device, flip=parts.flip_tta, channels_last=opts.channels_last
    )
    return class_prototypes(e, labels[pick], len(parts.train.classes))


def validate(parts: FitParts) -> tuple[dict[str, float], np.ndarray | None]:
    """Closed-set accuracy on the val split, verification metrics on the val pairs (whichever exist) and each
    val pack's 10-fold accuracy and AUC (bin_<name>_acc, bin_<name>_auc) and their mean AUC (bins_auc), of the
    weight average when the run keeps one."""
    with parts.step.ema.applied() if parts.step.ema is not None else contextlib.nullcontext():
        return _validate(parts)


def _validate(parts: FitParts) -> tuple[dict[str, float], np.ndarray | None]:
    out: dict[str, float] = {}
    pair_scores = None
    dev, cl = parts.step.opts.device, parts.step.opts.channels_last
    if parts.val is not None and len(parts.val):
        e = embed(parts.model, parts.val.images, dev, flip=parts.flip_tta, channels_last=cl)
        scores = class_scores(e, parts.loss_fn, prototypes_for(parts))
        m = evaluate_closed_set(scores, parts.val.labels)
        out.update(val_acc=m["acc"], val_top5=m["top5"])
    if parts.pairs is not None and parts.pairs.labels is not None:
        e = embed(parts.model, parts.pairs.images, dev, flip=parts.flip_tta, channels_last=cl)
        s = score_pairs(e, parts.pairs.idx_a, parts.pairs.idx_b, parts.scoring)
        m = evaluate_pairs(s, parts.pairs.labels)
        out.update(
            val_auc=m["auc"],
            val_eer=m["eer"],
            val_tar_far1e2=m["tar@far=1e-2"],
            val_best_acc=m["best_acc"],
            val_threshold=m["best_threshold"],
        )
        pair_scores = s.numpy()
    for pack in parts.bins:  # data.val_bins: insightface's protocol, which always adds the mirror image
        r = protocol_report(embed(parts.model, pack.images, dev, flip=True, channels_last=cl), pack.issame)
        out.update({f"bin_{pack.name}_acc": r["accuracy"], f"bin_{pack.name}_auc": r["auc"]})
    if parts.bins:  # one number for train.best_metric=bins_auc: the packs' mean AUC
        out["bins_auc"] = float(np.mean([out[f"bin_{pack.name}_auc"] for pack in parts.bins]))
    return out, pair_scores
