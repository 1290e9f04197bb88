"""Find the parts of an HW2P2 dataset on disk, whichever of the known layouts it was unpacked in.

kind "spec":   root/classification_data/{train_data/<ID>, val_data/<ID>, test_data/<n>.jpg},
               root/verification_data/, root/verification_pairs_{val,test}.txt,
               root/{classification,verification}_sample_submission.csv
kind "kaggle": the same without the classification_data/ wrapper (Kaggle, Fall 2021), possibly with a split
               nested in a same-named folder (verification_data/verification_data/) and slightly different
               file names; a verification-only download (no train_data) is also "kaggle"
kind "folder": any root/<identity>/<image> tree; it becomes `train`, everything else is None
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facerec.data.folder import DataError, is_hidden, is_image_name

_SPLITS = ("train_data", "val_data", "test_data")
_VERIFICATION = "verification_data"
# (field, exact spec name, glob fallback, glob words to exclude)
_FILES = (
    ("pairs_val", "verification_pairs_val.txt", "*pairs_val*.txt", ()),
    ("pairs_test", "verification_pairs_test.txt", "*pairs_test*.txt", ()),
    ("class_sample", "classification_sample_submission.csv", "*sample_submission*.csv", ("verification",)),
    ("verif_sample", "verification_sample_submission.csv", "*verification*sample_submission*.csv", ()),
)


@dataclass
class Hw2p2Layout:
    """Where each part of the dataset lives; None for parts that are absent. `root` is the dataset root that
    pair-file paths like `verification_data/123.jpg` are relative to."""

    root: Path
    train: Path | None
    val: Path | None
    test: Path | None
    verification: Path | None
    pairs_val: Path | None
    pairs_test: Path | None
    class_sample: Path | None
    verif_sample: Path | None
    kind: str

    def describe(self) -> str:
        """One line per part, for logs: `train: /data/.../train_data` or `train: -`."""
        parts = ("train", "val", "test", "verification", "pairs_val", "pairs_test", "class_sample", "verif_sample")
        return "\n".join(
            [f"layout: {self.kind} at {self.root}"] + [f"{p}: {getattr(self, p) or '-'}" for p in parts]
        )


def detect_layout(root: str | Path) -> Hw2p2Layout:
    """Detect the spec, Kaggle or plain identity-folder layout under `root` (or root = classification_data/)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a directory; check the path (and FACEREC_DATA / --data).")
    if root.resolve().name == "classification_data" and _has_split(root):
        # pointed at the wrapper itself: the dataset root (pair files, verification_data/) is one level up
        return detect_layout(root.resolve().parent)
    files = {name: _find_file(root, exact, pattern, exclude) for name, exact, pattern, exclude in _FILES}
    verification = _unnest((root / _VERIFICATION), flat=True) if (root / _VERIFICATION).is_dir() else None
    if (root / "classification_data").is_dir():
        kind, base = "spec", _unnest(root / "classification_data", flat=False)
    elif _has_split(root) or verification is not None or any(files.values()):
        kind, base = "kaggle", root
    elif _looks_like_identity_root(root):
        return Hw2p2Layout(root, root, None, None, None, None, None, None, None, kind="folder")
    else:
        raise DataError(
            f"no HW2P2 dataset recognised at {root}. Looked for classification_data/ (spec layout), "
            f"{', '.join(_SPLITS)} or {_VERIFICATION}/ and verification_pairs_*.txt at the top level (Kaggle "
            f"layout), or <identity>/<image>.jpg subfolders; found {_sample_entries(root)}. "
            "Point at the folder that holds these (where the dataset archive was extracted)."
        )
    train, val, test = (_split_dir(base, name) for name in _SPLITS)
    return Hw2p2Layout(root, train, val, test, verification, kind=kind, **files)


def resolve_pair_path(rel: str, root: str | Path, verification_dir: str | Path | None) -> Path:
    """The file a pair-file path names: root/rel, else (images in a nested or renamed folder) inside
    `verification_dir` by the path below `verification_data/` or by file name. Returns root/rel if none exists,
    so the caller's error shows the primary location."""
    candidates = pair_path_candidates(rel, root, verification_dir)
    return next((c for c in candidates if c.is_file()), candidates[0])


def pair_path_candidates(rel: str, root: str | Path, verification_dir: str | Path | None) -> list[Path]:
    """Locations tried by `resolve_pair_path`, most likely first."""
    rel_path = Path(rel.replace("\\", "/"))
    if rel_path.is_absolute():
        return [rel_path]
    candidates = [Path(root) / rel_path]
    if verification_dir is not None:
        vdir = Path(verification_dir)
        parts = rel_path.parts
        if _VERIFICATION in parts[:-1]:  # path below the last verification_data/ component
            below = parts[len(parts) - 1 - parts[::-1].index(_VERIFICATION) :]
            candidates.append(vdir.joinpath(*below))
        candidates += [vdir / rel_path, vdir / rel_path.name]
    return list(dict.fromkeys(candidates))  # de-duplicate, keep order


def _has_split(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in _SPLITS)


def _split_dir(base: Path, name: str) -> Path | None:
    folder = base / name
    return _unnest(folder, flat=name == "test_data") if folder.is_dir() else None


def _unnest(folder: Path, flat: bool) -> Path:
    """Descend into folder/<same name>/ while that is what a zip extraction left (e.g. test_data/test_data/).

    A flat folder (test/verification images) is nested when it has no images of its own but a same-named
    subfolder; an identity-folder split only when that subfolder is its single visible entry.
    """
    while (folder / folder.name).is_dir():
        entries = [e for e in folder.iterdir() if not is_hidden(e.name)]
        has_images = any(e.is_file() and is_image_name(e.name) for e in entries)
        if (flat and has_images) or (not flat and len(entries) != 1):
            break
        folder = folder / folder.name
    return folder


def _find_file(root: Path, exact: str, pattern: str, exclude: tuple[str, ...]) -> Path | None:
    """root/exact, else the single file matching `pattern`; several candidates -> DataError listing them."""
    if (root / exact).is_file():
        return root / exact
    matches = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and not is_hidden(p.name) and not any(w in p.name for w in exclude)
    )
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise DataError(f"several files in {root} could be {exact}: {names}; rename the right one to {exact}.")
    return matches[0] if matches else None


def _looks_like_identity_root(root: Path, probe: int = 20) -> bool:
    """True if one of the first `probe` visible subfolders holds an image file directly."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))[:probe]
    return any(any(is_image_name(f.name) and f.is_file() for f in d.iterdir()) for d in subdirs)


def _sample_entries(root: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not names:
        return "an empty folder"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
