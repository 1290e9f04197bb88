"""Shared fixtures: seeded tiny tensors, generated image folders, and the shared real data (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$FACEREC_SHARED_DATA`, else ../shared/data beside the checkout."""
    return Path(os.environ.get("FACEREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def facehw_dir() -> Path:
    """`$FACEREC_DATA`, else ../shared/data/facehw."""
    return Path(os.environ.get("FACEREC_DATA", shared_data_dir() / "facehw"))


# The tiny config every training test starts from: a small network on 16x16 images, no warm-up. Seconds per run.
TINY_CONFIG = (
    "model.backbone=tiny_cnn",
    "model.embedding_dim=32",
    "data.image_size=16",
    "data.batch_size=16",
    "optim.warmup_epochs=0",
)


def tiny_overrides(*changes: str) -> list[str]:
    """`key=value` overrides: the tiny config with `changes` applied (a key given again takes the new value)."""
    merged = {item.split("=", 1)[0]: item for item in TINY_CONFIG}
    merged.update((item.split("=", 1)[0], item) for item in changes)
    return list(merged.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the shared data gets the `data` marker (`-m "not data"` runs without it)."""
    for item in items:
        if {"facehw", "shared_data"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)


@pytest.fixture
def facehw() -> Path:
    root = facehw_dir()
    if not (root / "classification_data").is_dir() and not (root / "train_data").is_dir():
        pytest.skip(f"facehw data not found at {root} (set FACEREC_DATA)")
    return root


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set FACEREC_SHARED_DATA)")
    return root


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """12 random 8-d embeddings: 3 identities x 4 images, requiring grad."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 8, generator=g).requires_grad_(), torch.arange(3).repeat_interleave(4)


def make_identity_folder(
    root: Path, identities: list[str], per_identity: int, size: int = 16, seed: int = 0
) -> Path:
    """root/<identity>/<i>.jpg with noise images whose mean colour depends on the identity (learnable)."""
    rng = np.random.default_rng(seed)
    for identity in identities:
        (root / identity).mkdir(parents=True, exist_ok=True)
        base = rng.integers(40, 216, 3)
        for i in range(per_identity):
            img = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / identity / f"{i:04d}.jpg")
    return root


@pytest.fixture
def face_dir(tmp_path: Path) -> Path:
    """A throwaway identity-folder tree: 3 identities x 4 noise images of 16x16."""
    return make_identity_folder(tmp_path / "faces", ["alice", "bob", "carol"], 4)


def make_hw2p2(root: Path, n_ids: int = 6, per_id: int = 8, size: int = 16, seed: int = 0) -> Path:
    """A miniature HW2P2 dataset in the spec layout, with learnable identities (mean colour per identity).

    Identity folder names are "1", "4", "7", ... (3i + 1): a class index never equals its folder name, and string
    order ("1", "10", "13", "4", ...) differs from numeric order. Test and verification images use the same
    identities; test_truth.txt holds the test images' folder names.
    """
    rng = np.random.default_rng(seed)
    cd = root / "classification_data"
    bases = rng.integers(30, 226, (n_ids, 3))

    def face(i: int) -> Image.Image:
        return Image.fromarray(np.clip(bases[i] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))

    for i in range(n_ids):
        for split, n in (("train_data", per_id), ("val_data", 2)):
            (cd / split / str(3 * i + 1)).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                face(i).save(cd / split / str(3 * i + 1) / f"{j:04d}.jpg")
    (cd / "test_data").mkdir(parents=True)
    test_truth = []
    for n in range(12):
        i = int(rng.integers(n_ids))
        face(i).save(cd / "test_data" / f"{n}.jpg")
        test_truth.append(3 * i + 1)
    ver = root / "verification_data"
    ver.mkdir()
    owner = {}
    for n in range(24):
        name = f"{10000000 + n:08d}.jpg"
        owner[name] = n % n_ids
        face(owner[name]).save(ver / name)
    names = sorted(owner)
    lines_val, lines_test = [], []
    chosen: set[tuple[str, str]] = set()
    while len(chosen) < 40:  # Kaggle ids must be unique
        a, b = rng.choice(names, 2, replace=False)
        if (a, b) in chosen:
            continue
        chosen.add((a, b))
        line = f"verification_data/{a} verification_data/{b}"
        lines_val.append(f"{line} {int(owner[a] == owner[b])}")
        lines_test.append(line)
    for k, a in enumerate(names[:n_ids]):  # make sure some positives exist
        b = names[k + n_ids]
        lines_val.append(f"verification_data/{a} verification_data/{b} 1")
    (root / "verification_pairs_val.txt").write_text("\n".join(lines_val) + "\n")
    (root / "verification_pairs_test.txt").write_text("\n".join(lines_test) + "\n")
    ids = [f"{n}.jpg" for n in range(12)]
    (root / "classification_sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i in ids))
    (root / "verification_sample_submission.csv").write_text(
        "Id,Category\n" + "".join(f"{line},0\n" for line in lines_test)
    )
    (root / "test_truth.txt").write_text("\n".join(str(t) for t in test_truth))
    return root


@pytest.fixture
def hw2p2_dir(tmp_path: Path) -> Path:
    return make_hw2p2(tmp_path / "hw", n_ids=12, per_id=8)
