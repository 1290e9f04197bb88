"""The sections of the one-page write-up (outputs/report.py): title, architecture, loss, hyperparameters, results,
figures and the per-epoch table, each a Markdown string built from the run's config and metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from facerec.metrics.verification import DEFAULT_FARS, far_key

_MAX_TABLE_ROWS = 30
_MAX_SUMMARY_LINES = 80
_LOSS_NOTES = {  # one line of context per known loss; unknown names are simply listed
    "softmax": "cross-entropy over a linear classifier",
    "normface": "cross-entropy over scaled cosines to class centres (NormFace)",
    "sphereface": "multiplicative angular margin, cos(m*theta) (SphereFace, Liu et al. 2017)",
    "cosface": "additive cosine margin, cos(theta) - m (CosFace, Wang et al. 2018)",
    "arcface": "additive angular margin, cos(theta + m) (ArcFace, Deng et al. 2019)",
    "adaface": "margin adapted to image quality through the feature norm (AdaFace, Kim et al. 2022)",
    "subcenter_arcface": "ArcFace over K sub-centres per class, the best one counts (Deng et al. 2020)",
    "curricularface": "ArcFace positive, hard negatives re-weighted over training (Huang et al. 2020)",
    "center": "pulls embeddings towards learned class centres (Wen et al. 2016)",
    "contrastive": "pulls same pairs together, pushes different pairs beyond a margin",
    "triplet": "anchor-positive closer than anchor-negative by a margin (FaceNet)",
    "prototypical": "softmax over distances to per-episode class prototypes (Snell et al. 2017)",
}


def as_float(value: Any) -> float:
    """A logged number as float; NaN for null, missing or non-numeric values."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def metric(row: dict[str, Any], key: str) -> float:
    return as_float(row.get(key))


def best_of(epochs: list[dict[str, Any]], key: str, higher: bool = True) -> dict[str, Any]:
    """The epoch with the best logged value of `key` ({} if never logged); ties go to the earliest."""
    logged = [r for r in epochs if not math.isnan(metric(r, key))]
    return max(logged, key=lambda r: metric(r, key) if higher else -metric(r, key), default={})


def scoring_name(cfg: dict[str, Any]) -> str:
    scoring = (cfg.get("loss") or {}).get("scoring", "cosine")
    return "cosine" if scoring in (None, "auto") else str(scoring)


# ------------------------------------------------------------------------------------------ formatting


def _fmt(x: float, kind: str) -> str:
    """Page format by kind: pct 12.34 %, dec 0.1234, sci 1.00e-03, int 1,234, time 3 min 05 s; NaN -> "—"."""
    if math.isnan(x):
        return "—"
    if kind == "time":
        m, sec = divmod(int(round(x)), 60)
        return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min {sec:02d} s" if m else f"{sec} s"
    return {"pct": f"{100 * x:.2f} %", "dec": f"{x:.4f}", "sci": f"{x:.2e}", "int": f"{x:,.0f}"}[kind]


def _term(name: Any, params: Any, weight: Any = None) -> str:
    """`arcface` (scale=64, margin=0.5), optionally prefixed by its weight."""
    args = ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params or "")
    return ("" if weight is None else f"{weight} × ") + f"`{name}`" + (f" ({args})" if args else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ------------------------------------------------------------------------------------------ sections


def title(run: Path, cfg: dict, epochs: list[dict], best: dict, ver: dict | None) -> str:
    name = f"{(cfg.get('model') or {}).get('backbone', '?')} + {(cfg.get('loss') or {}).get('name', '?')}"
    if not best:
        return f"# {run.name}: {name}\n\nNo epoch has finished yet."
    auc = metric(best, "val_auc") if not math.isnan(metric(best, "val_auc")) else (ver or {}).get("auc", math.nan)
    return (
        f"# {run.name}: {name}\n\n**Best checkpoint, epoch {best['epoch']} of {len(epochs)}:** "
        f"classification accuracy {_fmt(metric(best, 'val_acc'), 'pct')} "
        f"(top-5 {_fmt(metric(best, 'val_top5'), 'pct')}), verification AUC {_fmt(auc, 'dec')}, "
        f"EER {_fmt(metric(best, 'val_eer'), 'pct')}."
    )


def architecture(run: Path, cfg: dict, start: dict) -> str:
    model, n = cfg.get("model") or {}, as_float(start.get("num_params"))
    px = (cfg.get("data") or {}).get("image_size", "?")
    size = "parameter count not logged" if math.isnan(n) else f"{n / 1e6:.2f} M parameters"
    neck = {
        "pool": "global average pooling of the last feature map",
        "flatten": "the last feature map flattened (keeps where each feature is)",
        "gdc": "a global depthwise convolution of the last feature map (a learned weighting of its positions)",
    }.get(model.get("neck", "pool"), f"neck {model.get('neck')!r}")
    text = (
        f"## Architecture\n\nBackbone `{model.get('backbone', '?')}`; BatchNorm and dropout "
        f"({model.get('dropout', 0)}) on its last feature map; {neck}; a {model.get('embedding_dim', '?')}-d "
        f"linear layer with BatchNorm: the embedding, the network's penultimate layer. {size}. "
        f"Input {px}×{px} px RGB; {_fmt(as_float(start.get('num_classes')), 'int')} training identities."
    )
    summary = run / "model_summary.txt"
    if summary.is_file():
        lines = summary.read_text(encoding="utf-8").rstrip().splitlines()
        more = len(lines) - _MAX_SUMMARY_LINES
        tail = [f"... ({more} more lines in model_summary.txt)"] if more > 0 else []
        body = "\n".join(lines[:_MAX_SUMMARY_LINES] + tail).replace("```", "'''")
        text += f"\n\n<details><summary>Network summary</summary>\n\n```text\n{body}\n```\n\n</details>"
    return text


def loss_section(cfg: dict) -> str:
    loss = cfg.get("loss") or {}
    extra = [e for e in loss.get("extra") or [] if isinstance(e, dict)]
    terms = [_term(loss.get("name", "?"), loss.get("params"))]
    terms += [_term(e.get("name", "?"), e.get("params"), e.get("weight", 1.0)) for e in extra]
    names = [loss.get("name")] + [e.get("name") for e in extra]
    notes = "".join(f"\n- `{n}`: {_LOSS_NOTES[n]}" for n in names if n in _LOSS_NOTES)
    smoothing = (cfg.get("optim") or {}).get("label_smoothing")
    terms[0] += f" with label smoothing {smoothing}" if smoothing else ""
    default = " (the loss's own choice)" if loss.get("scoring", "auto") == "auto" else ""
    scoring = f"Pairs are scored by {scoring_name(cfg)} similarity{default}."
    return f"## Loss\n\nL = {' + '.join(terms)}.\n{notes}\n{_distillation(cfg)}\n{scoring}"


def _distillation(cfg: dict) -> str:
    """The teacher-student terms of a `facerec distill` run (nothing for `facerec train`)."""
    d = cfg.get("distill") or {}
    if not d.get("teacher"):
        return ""
    teacher = "dlib's ResNet descriptor (a pretrained model: outside the course's rules)"
    if d["teacher"] != "dlib":
        teacher = f"`{Path(str(d['teacher'])).name}`"
    clean = d.get("teacher_view") == "clean"
    view = "clean views, computed once and cached" if clean else "the student's own augmented views, online"
    centred = ", its training mean subtracted" if d.get("center", True) else ""
    w = [d.get(k, 1.0) for k in ("weight_embedding", "weight_relational", "weight_labels")]
    return (
        f"\nDistilled from {teacher} ({view}{centred}): L_total = {w[0]} · (1 − cos(P·s, t))"
        f" + {w[1]} · MSE(cos(s_i, s_j), cos(t_i, t_j)) + {w[2]} · L, with s the student's and t the teacher's"
        " normalised embeddings and P a learned projection between their sizes.\n"
    )


def hyperparameters(cfg: dict, start: dict, epochs: list[dict]) -> str:
    data, optim, train = cfg.get("data") or {}, cfg.get("optim") or {}, cfg.get("train") or {}
    batch = f"{data.get('batch_size', '?')} images, sampler {data.get('sampler', '?')}"
    if data.get("sampler") == "pk":
        batch = f"P × K = {data.get('p', '?')} × {data.get('k', '?')} (pk sampler)"
    opt = f"{optim.get('name', '?')}, lr {optim.get('lr', '?')}, weight decay {optim.get('weight_decay', '?')}"
    if optim.get("name") == "sgd":
        opt += f", momentum {optim.get('momentum', '?')}" + (" (Nesterov)" if optim.get("nesterov") else "")
    if optim.get("grad_clip"):
        opt += f", gradient clipping at norm {optim['grad_clip']}"
    if train.get("ema"):
        opt += f"; evaluated and saved: the weights' EMA (decay {train['ema']} per step)"
    rows = [
        ["Optimizer", opt],
        ["Schedule", f"{optim.get('schedule', '?')}, {optim.get('warmup_epochs', 0)} warm-up epoch(s)"],
        ["Batch", batch],
        ["Augmentation", f"{data.get('augment', '?')}, {data.get('image_size', '?')} px"],
        ["Epochs", f"{len(epochs)} run of {train.get('epochs', '?')} planned" + _early_stop(train)],
        ["Precision / seed", f"AMP {train.get('amp', '?')}, seed {train.get('seed', '?')}"],
        [
            "Data",
            f"`{data.get('root', '?')}`, {_fmt(as_float(start.get('num_train_images')), 'int')} training images"
            + _held_out(data),
        ],
    ]
    return "## Hyperparameters\n\n" + _table(["Setting", "Value"], rows)


def _early_stop(train: dict) -> str:
    n = train.get("early_stop")
    return f"; early stop after {n} epochs without a better {train.get('best_metric')}" if n else ""


def _held_out(data: dict) -> str:
    """How validation was carved out of the training folders (data.holdout / data.val_per_class), if it was."""
    parts = []
    if data.get("holdout"):
        parts.append(f"{data['holdout']:g} of the identities held out for verification pairs")
    if data.get("val_per_class"):
        parts.append(f"{data['val_per_class']} image(s) per identity held out for accuracy")
    return f" after holding out validation ({'; '.join(parts)})" if parts else ""


_RESULTS = (("val_acc", "Accuracy (top-1)", "pct"), ("val_top5", "Accuracy (top-5)", "pct"),
            ("val_auc", "Verification AUC", "dec"), ("val_eer", "EER", "pct"))  # fmt: skip


def results(
    epochs: list[dict], best: dict, end: dict, start: dict, ver: dict | None, held_out: bool = False
) -> str:
    if not best:
        return "## Results\n\nNo epoch has finished yet."
    rows = []
    for key, label, kind in _RESULTS:
        top = best_of(epochs, key, higher=key != "val_eer")
        rows.append(
            [
                label,
                _fmt(metric(best, key), kind),
                f"{_fmt(metric(top, key), kind)} (epoch {top.get('epoch', '—')})",
            ]
        )
    note = ""
    if ver is not None:
        rows += [[f"TAR @ FAR = {far:g}", _fmt(ver[far_key(far)], "pct"), "—"] for far in DEFAULT_FARS]
        rows.append(
            ["Pair accuracy", f"{_fmt(ver['best_acc'], 'pct')} at threshold {ver['best_threshold']:.3f}", "—"]
        )
        note = (
            f" Pair metrics use the checkpoint's {ver['n_pairs']} validation pairs ({ver['n_pos']} same"
            + (", of identities held out of training" if held_out else "")
            + "): TAR "
            "at the lowest threshold whose FAR stays within the target; the accuracy threshold is tuned on them."
        )
    table = _table(["Validation metric", f"Checkpoint (epoch {best['epoch']})", "Best over run"], rows)
    speed = [v for v in (metric(r, "images_per_s") for r in epochs) if not math.isnan(v)]
    rate = f"{sum(speed) / len(speed):,.0f} images/s on average" if speed else "throughput not logged"
    total = as_float(end.get("total_time_s", epochs[-1].get("elapsed_s")))
    return (
        f"## Results\n\n{table}\n\nTraining took {_fmt(total, 'time')} for {len(epochs)} epoch(s) on "
        f"`{start.get('device', '?')}` ({rate}; torch {start.get('torch', '?')}).{note}"
    )


def figures(ver: dict | None, pair_note: str) -> str:
    text = "## Plots\n\n![Training curves](curves.png)"
    return f"{text}\n\n{pair_note}" if ver is None else f"{text}\n\n![ROC](roc.png) ![Pair scores](score_hist.png)"


_EPOCH_COLUMNS = (("Train loss", "train_loss", "dec"), ("Train acc", "train_acc", "pct"),
                  ("Val acc", "val_acc", "pct"), ("Val AUC", "val_auc", "dec"), ("Val EER", "val_eer", "pct"),
                  ("LR", "lr", "sci"), ("Time", "epoch_time_s", "time"))  # fmt: skip


def epoch_table(epochs: list[dict], best: dict) -> str:
    """Per-epoch numbers; runs over _MAX_TABLE_ROWS epochs show every n-th epoch plus the last and best."""
    if not epochs:
        return ""
    step = max(1, math.ceil(len(epochs) / (_MAX_TABLE_ROWS - 2)))
    keep = {r["epoch"] for r in epochs[::step]} | {epochs[-1]["epoch"], best.get("epoch")}
    rows = [
        [f"{r['epoch']}{' *' if r is best else ''}"] + [_fmt(metric(r, k), f) for _, k, f in _EPOCH_COLUMNS]
        for r in epochs
        if r["epoch"] in keep
    ]
    title = "## Per epoch" + (f" (every {step}th epoch, plus the last and best)" if step > 1 else "")
    head = ["Epoch"] + [c for c, _, _ in _EPOCH_COLUMNS]
    return f"{title}\n\n{_table(head, rows)}\n\n\\* best checkpoint."
