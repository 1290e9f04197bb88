"""Verification pair files: `a b label` (val) or `a b` (test), one pair per line, paths relative to the data root.

The paths are kept exactly as written, because the verification submission's Id is f"{a} {b}".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facerec.data.folder import DataError
from facerec.data.hw2p2 import pair_path_candidates


@dataclass
class PairList:
    """Pairs in file order. `labels` (1 = same person) is None for an unlabelled (test) file;
    `line_numbers[i]` is the 1-based line of pair i, for error messages."""

    a: list[str]
    b: list[str]
    labels: list[int] | None
    source: Path
    line_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.a)

    def line_of(self, i: int) -> int:
        return self.line_numbers[i] if self.line_numbers else i + 1


def read_pairs(path: str | Path, labelled: bool | None = None) -> PairList:
    """Parse a pair file; whitespace runs, tabs, CRLF, a BOM and blank lines are tolerated.

    `labelled=None` decides from the first non-blank line (3 fields: labelled, 2: not); every line must then
    agree. A bad line raises DataError naming the file and its 1-based line number.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"pair file {path} does not exist; check the path (see `detect_layout`).") from None
    except UnicodeDecodeError as err:
        raise DataError(f"pair file {path} is not UTF-8 text ({err.reason}); is it the right file?") from None
    except OSError as err:  # a folder, no read permission, an I/O error
        raise DataError(f"cannot read pair file {path} ({err.strerror or err}); pass a text file.") from None
    a: list[str] = []
    b: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    auto = labelled is None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
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
        raise DataError(
            f"{pairs.source}:{pairs.line_of(first)}: image {rel!r} not found (tried {tried}){more}. "
            "Point --data at the dataset root that holds verification_data/ (or fix the pair file)."
        )
    return [resolved[x] for x in pairs.a], [resolved[y] for y in pairs.b]  # type: ignore[misc]
