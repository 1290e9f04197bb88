"""Verification pair files, in either of two formats, told apart by their first line:

  * HW2P2: `a b label` (validation) or `a b` (test) lines, one pair per line, paths relative to the data root;
    kept exactly as written, because the verification submission's Id is f"{a} {b}".
  * LFW (Huang et al. 2007, UMass TR 07-49): a header "FOLDS N" (pairs.txt, View 2: "10 300") or "N"
    (pairsDevTest.txt, View 1: one fold), then per fold N matched lines `name n1 n2` followed by N mismatched
    lines `name1 n1 name2 n2`. Image `name n` is the relative path name/name_000n.jpg.

`read_pairs` reads both (one PairList; LFW files add the fold of each pair); every bad line raises DataError
naming the file and its 1-based line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from facerec.data.folder import DataError
from facerec.data.hw2p2 import pair_path_candidates

PAIR_FORMATS = ("hw2p2", "lfw")
_INTEGER = re.compile(r"[0-9]+")
Rows = list[tuple[int, list[str]]]  # (1-based line number, whitespace-separated fields) of the non-blank lines


@dataclass
class PairList:
    """Pairs in file order. `labels` (1 = same person) is None for an unlabelled (test) file;
    `line_numbers[i]` is the 1-based line of pair i, for error messages; `folds[i]` (LFW files only, else None)
    is the 0-based fold of pair i."""

    a: list[str]
    b: list[str]
    labels: list[int] | None
    source: Path
    line_numbers: list[int] = field(default_factory=list)
    folds: list[int] | None = None
    format: str = "hw2p2"

    def __len__(self) -> int:
        return len(self.a)

    def line_of(self, i: int) -> int:
        return self.line_numbers[i] if self.line_numbers else i + 1

    @property
    def n_folds(self) -> int:
        return max(self.folds) + 1 if self.folds else 1


def read_pairs(path: str | Path, labelled: bool | None = None, fmt: str | None = None) -> PairList:
    """Parse a pair file of either format (module notes); whitespace runs, tabs, CRLF, a BOM and blank lines are
    tolerated.

    `fmt` None detects the format (`pair_file_format`); "hw2p2" or "lfw" insists on one. For HW2P2 files,
    `labelled=None` decides from the first non-blank line (3 fields: labelled, 2: not) and every line must then
    agree. LFW files are always labelled.
    """
    path = Path(path).expanduser()
    rows = _rows(path)
    fmt = fmt or _detect_format(rows)
    if fmt not in PAIR_FORMATS:
        raise ValueError(f"unknown pair file format {fmt!r}; choose one of {', '.join(PAIR_FORMATS)}")
    if fmt == "lfw":
        if labelled is False:
            raise DataError(f"{path} is an LFW pair file, which is labelled; pass an unlabelled `a b` pair file")
        return _read_lfw(rows, path)
    return _read_hw2p2(rows, path, labelled)


def pair_file_format(path: str | Path) -> str:
    """The format `read_pairs` reads a file as: "lfw" when it starts with an LFW header (one integer, or two
    followed by a line of 3 or 4 fields), else "hw2p2"."""
    path = Path(path).expanduser()
    return _detect_format(_rows(path))


def _rows(path: Path) -> Rows:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"pair file {path} does not exist; check the path (see `detect_layout`).") from None
    except UnicodeDecodeError as err:
        raise DataError(f"pair file {path} is not UTF-8 text ({err.reason}); is it the right file?") from None
    except OSError as err:  # a folder, no read permission, an I/O error
        raise DataError(f"cannot read pair file {path} ({err.strerror or err}); pass a text file.") from None
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, fields) for number, fields in rows if fields]


def _detect_format(rows: Rows) -> str:
    """A line of one integer is never an HW2P2 pair; two integers ("10 300") are an LFW header when the next
    line has the 3 or 4 fields of an LFW pair (an HW2P2 file of 2-field lines never has one)."""
    first = rows[0][1] if rows else []
    if not 1 <= len(first) <= 2 or not all(_INTEGER.fullmatch(f) for f in first):
        return "hw2p2"
    return "lfw" if len(first) == 1 or (len(rows) > 1 and len(rows[1][1]) in (3, 4)) else "hw2p2"


def _read_hw2p2(rows: Rows, path: Path, labelled: bool | None) -> PairList:
    a: list[str] = []
    b: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    auto = labelled is None
    for number, fields in rows:
        if labelled is None:
            labelled = _detect(fields, path, number)
        _check_fields(fields, labelled, path, number, auto)
        a.append(fields[0])
        b.append(fields[1])
        lines.append(number)
        if labelled:
            labels.append(_label(fields[2], path, number))
    if not a:
        raise DataError(
            f"pair file {path} holds no pairs; expected lines like `verification_data/1.jpg "
            "verification_data/2.jpg [0|1]`."
        )
    return PairList(a, b, labels if labelled else None, path, lines)


def _detect(fields: list[str], path: Path, number: int) -> bool:
    if len(fields) not in (2, 3):
        raise DataError(
            f"{path}:{number}: {len(fields)} fields {fields[:4]}; a pair line is `a b label` (validation) or "
            "`a b` (test), separated by spaces or tabs. Fix or delete the line."
        )
    return len(fields) == 3


def _check_fields(fields: list[str], labelled: bool, path: Path, number: int, auto: bool) -> None:
    expected = 3 if labelled else 2
    if len(fields) == expected:
        return
    if len(fields) in (2, 3):
        why = "the first line decided the format" if auto else f"labelled={labelled} was requested"
        raise DataError(
            f"{path}:{number}: {len(fields)} fields where {expected} were expected ({why}); the file mixes "
            "labelled (`a b label`) and unlabelled (`a b`) lines. Fix the line or use the right pair file."
        )
    shape = "`a b label`" if labelled else "`a b`"
    raise DataError(
        f"{path}:{number}: {len(fields)} fields {fields[:4]}, expected {shape}. Fix or delete the line."
    )


def _label(text: str, path: Path, number: int) -> int:
    if text not in ("0", "1"):
        raise DataError(f"{path}:{number}: label {text!r} is not 0 or 1 (1 = same person). Fix the line.")
    return int(text)


def lfw_image(name: str, number: str | int, path: Path, line: int) -> str:
    """LFW's image `name number` as the relative path name/name_000n.jpg."""
    try:
        n = int(number)
    except ValueError:
        raise DataError(f"{path}:{line}: image number {number!r} is not an integer") from None
    return f"{name}/{name}_{n:04d}.jpg"


def _lfw_header(number: int, fields: list[str], path: Path) -> tuple[int, int]:
    try:
        values = [int(f) for f in fields]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise DataError(
            f"{path}:{number}: expected the LFW header 'FOLDS N' (pairs.txt, e.g. '10 300') or 'N' "
            f"(pairsDevTest.txt, e.g. '500'), got {' '.join(fields)!r}"
        )
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])


def _read_lfw(rows: Rows, path: Path) -> PairList:
    if not rows:
        raise DataError(f"{path} is empty; expected an LFW pair file (pairs.txt or pairsDevTest.txt)")
    n_folds, n = _lfw_header(*rows[0], path)
    body = rows[1:]
    if len(body) != 2 * n * n_folds:
        raise DataError(
            f"{path}: the header promises {n_folds} fold(s) x ({n} matched + {n} mismatched) = "
            f"{2 * n * n_folds} pair lines, but the file has {len(body)}"
        )
    out = PairList([], [], [], path, [], [], "lfw")
    for k, (line, fields) in enumerate(body):
        fold, same = k // (2 * n), (k % (2 * n)) < n
        if len(fields) != (3 if same else 4):
            kind = "matched `name n1 n2`" if same else "mismatched `name1 n1 name2 n2`"
            part = "first" if same else "second"
            raise DataError(
                f"{path}:{line}: expected a {kind} line (fold {fold + 1}, {part} {n} lines of the "
                f"fold), got {len(fields)} fields: {' '.join(fields)!r}"
            )
        out.a.append(lfw_image(fields[0], fields[1], path, line))
        out.b.append(lfw_image(fields[0], fields[2], path, line) if same else lfw_image(*fields[2:], path, line))
        out.labels.append(int(same))  # type: ignore[union-attr]
        out.folds.append(fold)  # type: ignore[union-attr]
        out.line_numbers.append(line)
    return out


def check_pair_files(
    pairs: PairList, root: str | Path, verification_dir: str | Path | None
) -> tuple[list[Path], list[Path]]:
    """Resolve every pair path (see `resolve_pair_path`) to (a_paths, b_paths); call before training starts.

    The first missing image raises DataError with its line number, the locations tried and how many other
    paths are missing, so a wrong --data root fails in seconds rather than after an epoch.
    """
    resolved: dict[str, Path | None] = {}
    for rel in dict.fromkeys(pairs.a + pairs.b):
        candidates = pair_path_candidates(rel, root, verification_dir)
        resolved[rel] = next((c for c in candidates if c.is_file()), None)
    missing = [rel for rel, found in resolved.items() if found is None]
    if missing:
        first = next(
            i
            for i, (x, y) in enumerate(zip(pairs.a, pairs.b, strict=True))
            if resolved[x] is None or resolved[y] is None
        )
        rel = pairs.a[first] if resolved[pairs.a[first]] is None else pairs.b[first]
        tried = ", ".join(str(c) for c in pair_path_candidates(rel, root, verification_dir))
        more = f"; {len(missing) - 1} other image paths are missing too" if len(missing) > 1 else ""
        hint = (
            "--root must be the LFW folder of <name>/<name>_NNNN.jpg"
            if pairs.format == "lfw"
            else "Point --data at the dataset root that holds verification_data/ (or fix the pair file)"
        )
        raise DataError(
            f"{pairs.source}:{pairs.line_of(first)}: image {rel!r} not found (tried {tried}){more}. {hint}."
        )
    return [resolved[x] for x in pairs.a], [resolved[y] for y in pairs.b]  # type: ignore[misc]


def unique_images(paths_a: list[Path], paths_b: list[Path]) -> tuple[list[Path], list[int], list[int]]:
    """Each image of the pairs once, for embedding once: (unique paths in first-use order, a's before b's;
    index of pair i's first image in them; of its second). `Scoring.indexed_pairs` scores the result."""
    unique: dict[Path, int] = {}
    for p in list(paths_a) + list(paths_b):
        unique.setdefault(Path(p), len(unique))
    return list(unique), [unique[Path(p)] for p in paths_a], [unique[Path(p)] for p in paths_b]
