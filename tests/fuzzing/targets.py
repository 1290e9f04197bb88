"""Every fuzz target by name, in the order bench/fuzz.py runs them."""

from __future__ import annotations

from fuzzing.base import Target
from fuzzing.files import FILE_TARGETS
from fuzzing.gallery import GALLERY_TARGETS
from fuzzing.models import MODEL_TARGETS
from fuzzing.packs import BIN_TARGETS
from fuzzing.recordio import REC_TARGETS
from fuzzing.service import SERVICE_TARGETS

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [*FILE_TARGETS, *MODEL_TARGETS, *SERVICE_TARGETS, *GALLERY_TARGETS, *REC_TARGETS, *BIN_TARGETS]
}
