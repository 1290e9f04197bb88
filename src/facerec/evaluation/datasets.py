"""Evaluation of a trained model on labelled data, and the two Kaggle submission files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facerec.config import config_from_dict, config_to_dict
from facerec.data.folder import DataError
from facerec.data.holdout import split_validation
from facerec.data.hw2p2 import detect_layout
from facerec.data.memory import ImageSet, load_flat_images, load_identity_folders
from facerec.data.pack import image_root, is_pack, read_meta
from facerec.data.pairset import PairSet, load_pairset
from facerec.engine.data import load_train_images, train_image_root
from facerec.engine.evaluate import evaluate_closed_set, evaluate_pairs
from facerec.errors import CheckpointError
from facerec.inference.matching import train_set_state
from facerec.inference.model import EnsembleFaceModel, FaceModel
from facerec.metrics.bootstrap import bootstrap_intervals
from facerec.metrics.scoring import Scoring
from facerec.outputs.submission import classification_test_ids, write_classification_csv, write_verification_csv


def pair_scores_for(fm: FaceModel, pairs: PairSet, scoring: str | None = None, flip: bool = True) -> torch.Tensor:
    """(N,) scores of a PairSet's pairs: each unique image embedded once, scored with `scoring` (default: the
    model's own)."""
    e = fm.embed(pairs.images, flip=flip)
    return Scoring.of(scoring or fm.scoring).indexed_pairs(e, pairs.idx_a, pairs.idx_b)


def evaluate_split(
    fm: FaceModel, split_dir: str | Path, flip: bool = True, log=print, match: str | None = None
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy on a labelled identity-folder split, labels matched to the model by folder name;
    `match`: the closed-set matching method (inference/matching.py; default the model's own)."""
    data = load_identity_folders(split_dir, fm.image_size, fm.classes, cache=False, log=log)
    return _accuracy(fm, data.images, data.labels, flip, match)


def _accuracy(
    fm: FaceModel, images: torch.Tensor, labels: torch.Tensor, flip: bool, match: str | None = None
) -> dict[str, Any]:
    m = evaluate_closed_set(fm.class_scores(images, flip=flip, match=match), labels)
    out: dict[str, Any] = {"accuracy": m["acc"], "top5": m["top5"], "n_images": len(labels)}
    used = match or getattr(fm, "match", None)  # the matching method behind the accuracy, when the model says
    return {**out, "match": str(used)} if used else out


def evaluate_held_out(
    fm: FaceModel,
    root: str | Path,
    scoring: str | None = None,
    flip: bool = True,
    log=print,
    match: str | None = None,
) -> dict[str, Any]:
    """What a run with `data.holdout` / `data.val_per_class` validated on, rebuilt from its config and its
    training data (`root`: the identity folders, or the pack, it trained on): accuracy on the val images,
    verification metrics on the held-out people's pairs."""
    cfg = fm.config
    d, seed = cfg.data, cfg.train.seed
    images = load_train_images(cfg, Path(root), log)
    train, val, pairs = split_validation(
        images, d.holdout, d.holdout_pairs, d.val_per_class, seed, train_image_root(cfg, Path(root))
    )
    if train.classes != fm.classes:
        raise DataError(
            f"{root} no longer holds the identities this model trained on ({len(train.classes)} after the "
            f"hold-out, the model has {len(fm.classes)}), so its held-out split cannot be rebuilt; score the "
            f"pairs saved with the run instead: --pairs RUN/holdout_pairs.txt --root {root}"
        )
    parts = [f"{len(val)} val images ({d.val_per_class} per identity)"] if val is not None else []
    if pairs is not None:
        parts.append(f"{len(pairs)} pairs of {len(images.classes) - len(fm.classes)} held-out identities")
    log(
        f"{root} is this model's training folder: scoring what its run held out (seed {seed}): "
        + " and ".join(parts)
    )
    out: dict[str, Any] = {}
    if val is not None:
        out.update(_accuracy(fm, val.images, val.labels, flip, match))
    if pairs is not None and pairs.labels is not None:
        out.update(
            evaluate_pairs(pair_scores_for(fm, pairs, scoring, flip), pairs.labels), scoring=scoring or fm.scoring
        )
    return out


def evaluate_pair_file(
    fm: FaceModel,
    pairs_file: str | Path,
    root: str | Path,
    verification_dir: Path | None = None,
    scoring: str | None = None,
    flip: bool = True,
    intervals: int = 0,
) -> dict[str, Any]:
    """Verification metrics on a labelled pair file, HW2P2 `a b label` lines or LFW's pairs.txt / pairsDevTest.txt
    (`data.pairs.read_pairs`), image paths relative to `root`; the images are used as they are (no alignment).

    intervals: that many bootstrap resamples of the pairs give each metric a 95% interval (`auc_ci` = [low,
    high], ...; metrics/bootstrap.py); 0, none.
    """
    pairs = load_pairset(pairs_file, root, verification_dir, fm.image_size)
    if pairs.labels is None:
        raise DataError(
            f"{pairs_file} has no labels (lines `a b`); evaluation needs `a b label` lines or an LFW pair file"
        )
    scores = pair_scores_for(fm, pairs, scoring, flip)
    m: dict[str, Any] = {**evaluate_pairs(scores, pairs.labels), "scoring": scoring or fm.scoring}
    if intervals:
        ci = bootstrap_intervals(scores.numpy(), pairs.labels.numpy(), rounds=intervals)
        m.update({f"{k}_ci": list(v) for k, v in ci.items()})
    return m


def evaluate_dataset(
    fm: FaceModel,
    data: str | Path,
    scoring: str | None = None,
    flip: bool = True,
    log=print,
    match: str | None = None,
    intervals: int = 0,
) -> dict[str, Any]:
    """Everything labelled that a dataset folder holds: the val split (accuracy) and val pairs (AUC, ...). On the
    model's own training folder (or pack), what its run held out of it, when it held something out. `intervals`:
    as for `evaluate_pair_file` (the val pairs only)."""
    held_out = fm.config.data.holdout or fm.config.data.val_per_class
    if is_pack(data):
        if _trained_on(fm, Path(data)) and held_out:
            return evaluate_held_out(fm, data, scoring, flip, log, match)
        raise DataError(
            f"{data} is a pack: training images only, without a val split or pair file. Evaluate on "
            f"the dataset it was made from ({read_meta(data).get('source', 'its source folder')}), or "
            "give --pairs FILE --root DIR"
        )
    layout = detect_layout(data)
    out: dict[str, Any] = {}
    split = layout.val if layout.kind != "folder" else layout.train
    if layout.kind == "folder" and _trained_on(fm, layout.train):
        if held_out:
            return evaluate_held_out(fm, layout.train, scoring, flip, log, match)
        log(
            f"warning: {layout.train} is the folder this model trained on, so its accuracy is on training images. "
            "Train with data.holdout=0.1 and/or data.val_per_class=2 to keep validation out of it"
        )
    if split is not None:
        out.update(evaluate_split(fm, split, flip, log, match))
    if layout.pairs_val is not None:
        pair_file = layout.pairs_val
        out.update(evaluate_pair_file(fm, pair_file, layout.root, layout.verification, scoring, flip, intervals))
    if not out:
        raise DataError(f"{data} holds neither a labelled split nor a labelled pair file to evaluate on")
    return out


def _trained_on(fm: FaceModel, folder: Path) -> bool:
    """Whether `folder` is the model's training data: its config's data.root (read from the current folder) or,
    when that is a pack still on disk, the folder the pack was made from."""
    root = fm.config.data.root
    if not root:
        return False
    here = Path(folder).resolve()
    return Path(root).resolve() == here or (is_pack(root) and image_root(root).resolve() == here)


def write_submissions(
    fm: FaceModel, data: str | Path, out_dir: str | Path, flip: bool = True, log=print, match: str | None = None
) -> list[Path]:
    """classification_submission.csv and verification_submission.csv, in the sample submissions' row order;
    `match`: the closed-set matching method of the classification file (default the model's own)."""
    layout = detect_layout(data)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the output folder {out_dir} ({err}); choose another --out") from None
    written = []
    if layout.test is not None:
        ids, paths = classification_test_ids(layout)  # the sample's order, checked against test_data/
        scores = fm.class_scores(load_flat_images(paths, fm.image_size), flip=flip, match=match)
        labels = [fm.classes[i] for i in scores.argmax(1).tolist()]
        path = out_dir / "classification_submission.csv"
        write_classification_csv(path, ids, labels, layout.class_sample)
        log(f"wrote {path} ({len(ids)} rows)")
        written.append(path)
    if layout.pairs_test is not None:
        pairs = load_pairset(layout.pairs_test, layout.root, layout.verification, fm.image_size)
        scores = pair_scores_for(fm, pairs, flip=flip)
        path = out_dir / "verification_submission.csv"
        write_verification_csv(path, pairs.pairs, scores.tolist(), layout.verif_sample)
        log(f"wrote {path} ({len(pairs)} rows)")
        written.append(path)
    if not written:
        raise DataError(f"{data} has no test_data/ and no test pair file: nothing to predict")
    return written


def training_images(fm: FaceModel, data: str | Path, log=print) -> ImageSet:
    """The images `fm` trained on, labelled by its classes: the training split of `data` (the dataset folder or
    pack it trained on) as its run read it (data.max_per_class, data.max_classes), less what the run held out
    (data.holdout / data.val_per_class, rebuilt from its seed). DataError when they are not the model's people."""
    cfg = config_from_dict(config_to_dict(fm.config))
    cfg.data.root = str(data)
    train_dir = Path(data) if is_pack(data) else detect_layout(data).train
    train = load_train_images(cfg, train_dir, log)
    d = cfg.data
    if d.holdout or d.val_per_class:
        train = split_validation(train, d.holdout, d.holdout_pairs, d.val_per_class, cfg.train.seed, None)[0]
    if train.classes != fm.classes:
        raise DataError(
            f"{data} is not the data this model trained on: its training split holds {len(train.classes)} "
            f"identities, the model {len(fm.classes)} (or they differ by name); give the dataset folder or pack "
            f"it trained on ({fm.config.data.root or 'its config data.root'})"
        )
    return train


def train_set_entries(
    fm: FaceModel, data: str | Path, keep_embeddings: bool = False, log=print
) -> dict[str, torch.Tensor]:
    """The model-file entries closed-set matching by "mean" (and, with `keep_embeddings`, "knn") needs:
    inference.matching.train_set_state of the flip-TTA embeddings of `training_images(fm, data)`."""
    if isinstance(fm, EnsembleFaceModel):
        raise CheckpointError(
            "an ensemble file: add the training embeddings to each member model (facerec export --train-data) "
            "and build the ensemble from them again"
        )
    train = training_images(fm, data, log)
    log(f"embedding {len(train)} training images of {len(train.classes)} identities (flip TTA)")
    return train_set_state(fm.embed(train.images, flip=True), train.labels, len(fm.classes), keep_embeddings)
