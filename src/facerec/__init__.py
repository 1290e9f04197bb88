"""facerec: train face-embedding CNNs for closed-set face classification and open-set face verification."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from facerec.engine.lr_find import LRFindResult
    from facerec.inference.protocol import FaceModelLike


def load(checkpoint: str | Path, device: str = "cpu") -> FaceModelLike:
    """Load any trained model file: a run checkpoint, an exported .pt model, an ensemble file or an ONNX export
    (run by ONNX Runtime). Every kind has `embed`, `score`, `verify`, `class_scores`, `classify` and `info`
    (inference/protocol.py); `device` is where PyTorch models run. See facerec.inference.load."""
    from facerec.inference.load import load as load_model  # here, so that `import facerec` stays light

    return load_model(checkpoint, device=device)


def train(
    data: str | Path | None,
    out: str | Path,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    resume: bool = False,
) -> Path:
    """Train like `facerec train`; returns the path of the run's best checkpoint (`facerec.load` it).

    Args:
        data: the dataset (an HW2P2 folder, a folder of identity folders or a pack); None when resuming.
        out: the run folder.
        config: a shipped recipe name (`facerec list recipes`) or a YAML file; None for the defaults.
        overrides: `{"train.epochs": 5, "data.holdout": 0.1}` or `["train.epochs=5", ...]`, as on the command line.
        resume: continue the run in `out` from its last checkpoint (the overrides apply on top of its config).
    """
    from facerec.config import load_config, recipe_path
    from facerec.engine.run import resume_config
    from facerec.engine.run import train as run_training

    items = _override_items(data, overrides)
    if resume:
        cfg = resume_config(out, True, items)
    else:
        cfg = load_config(recipe_path(str(config)) if config else None, items)
    run_training(cfg, out, resume=resume)
    return Path(out) / "best.pt"


def distill(
    teacher: str | Path,
    data: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> Path:
    """Train a student from a teacher like `facerec distill`; returns the path of the run's best checkpoint.

    Args:
        teacher: "dlib", a facerec model file (.pt, ensemble .pt, .onnx) or a foreign .onnx model (then give its
            input with the `distill.onnx_*` overrides).
        data: the training data: an HW2P2 folder (its train_data), identity folders, or a folder of face crops
            (unlabelled). Verification, test and LFW folders are refused (facerec/distillation/data.py).
        out: the run folder.
        config: a shipped recipe name or a YAML file (its `distill:` section sets the loss weights); None for
            the defaults.
        overrides: `{"distill.weight_relational": 2.0}` or `["train.epochs=5", ...]`, as on the command line.
    """
    from facerec.config import load_config, recipe_path
    from facerec.distillation.run import distill as run_distillation

    cfg = load_config(recipe_path(str(config)) if config else None, _override_items(data, overrides))
    cfg.distill.teacher = str(teacher)  # set, not parsed: a path is not YAML
    run_distillation(cfg, out)
    return Path(out) / "best.pt"


def find_lr(
    data: str | Path | None,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    start: float = 1e-5,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
    out: str | Path | None = None,
) -> LRFindResult:
    """The learning-rate range test of `facerec lr-find` for a config on `data`; `.suggestion` is the rate to give
    `optim.lr` (None when the loss never fell), `.lrs` / `.smoothed` the curve; the sweep stops once the smoothed
    loss passes `diverge` x its minimum. With `out`, also writes `lr_find.csv` and `lr_find.png` there."""
    from facerec.config import load_config, recipe_path
    from facerec.engine.lr_find import find_lr as range_test
    from facerec.engine.lr_find import write_outputs

    cfg = load_config(recipe_path(str(config)) if config else None, _override_items(data, overrides))
    result = range_test(cfg, start, end, steps, diverge)
    if out is not None:
        write_outputs(result, out)
    return result


def _override_items(data: str | Path | None, overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """`key=value` strings; JSON values are YAML flow values: numbers, true/false, null, [...], {...}."""
    if isinstance(overrides, Mapping):
        items = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    else:
        items = list(overrides)
    if data is not None:
        items.insert(0, f"data.root={data}")
    return items


def __getattr__(name: str) -> Any:
    if name == "FaceModel":
        from facerec.inference.model import FaceModel

        return FaceModel
    raise AttributeError(f"module 'facerec' has no attribute {name!r}")


# Modules that moved into subpackages (0.2): the old names still import, with a DeprecationWarning.
MOVED_MODULES = {
    "facerec.api": "facerec.inference.model",
    "facerec.onnx_backend": "facerec.inference.onnx",
    "facerec.ensemble": "facerec.evaluation.ensemble",
    "facerec.export": "facerec.inference.export",
    "facerec.lfw": "facerec.evaluation.lfw",
    "facerec.folder_benchmark": "facerec.evaluation.folder",
    "facerec.calibrate": "facerec.evaluation.calibrate",
    "facerec.align": "facerec.photos.align",
    "facerec.embeddings": "facerec.photos.embed",
    "facerec.gallery": "facerec.photos.gallery",
    "facerec.cluster": "facerec.photos.cluster",
    "facerec.submission": "facerec.outputs.submission",
    "facerec.report": "facerec.outputs.report",
    "facerec.report_plots": "facerec.outputs.plots",
    "facerec.pipeline": "facerec.engine.run",
    "facerec.lr_find": "facerec.engine.lr_find",
    "facerec.cli_photos": "facerec.cli.photos",
    "facerec.cli_serve": "facerec.cli.serve",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name (`facerec.api`) to its new module, once, with a DeprecationWarning."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is deprecated: import {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed."""


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
