"""The teacher-embedding cache (distillation/cache.py): hit when nothing changed, missed when the teacher, an
option or the image list changed, resumed after an interruption; nothing pickled."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facerec.distillation.cache import teacher_targets


class CountingTeacher:
    """A teacher that counts the images it embeds; `fingerprint` follows `option`."""

    embedding_dim = 3

    def __init__(self, option: str = "a") -> None:
        self.name, self.option, self.embedded = "counting", option, 0

    @property
    def fingerprint(self) -> str:
        return f"counting-{self.option}"

    def embed(self, images: list[str]) -> np.ndarray:
        self.embedded += len(images)
        return np.array([[len(p) % 7 + 1.0, 1.0, float(i)] for i, p in enumerate(images)], np.float32)


def test_cache_is_hit_when_nothing_changed_and_missed_when_teacher_or_folder_changed(face_dir: Path) -> None:
    paths = sorted(str(p) for p in face_dir.rglob("*.jpg"))
    cache = face_dir.parent / "cache"
    first = teacher_targets(CountingTeacher(), paths, cache, batch_size=5)
    assert first.computed == len(paths) and first.path.is_file()
    again = CountingTeacher()
    hit = teacher_targets(again, paths, cache)
    assert again.embedded == 0 and hit.computed == 0 and hit.path == first.path
    np.testing.assert_array_equal(hit.embeddings, first.embeddings)
    expected_mean = F.normalize(torch.from_numpy(first.embeddings), dim=1).mean(0).numpy()
    np.testing.assert_allclose(hit.mean, expected_mean, rtol=1e-6)  # the stored training mean
    with np.load(first.path, allow_pickle=False) as f:  # nothing pickled
        assert set(f.files) == {"key", "embeddings", "done", "mean", "fingerprint", "images"}
    other = CountingTeacher("b")  # another option of the teacher: another key
    assert teacher_targets(other, paths, cache).computed == len(paths) and other.embedded == len(paths)
    moved = face_dir.parent / "moved"
    shutil.copytree(face_dir, moved)  # the same images elsewhere, written afresh: found by their content
    again = CountingTeacher()
    copied = teacher_targets(again, sorted(str(p) for p in moved.rglob("*.jpg")), cache)
    assert again.embedded == 0 and copied.computed == 0
    np.testing.assert_array_equal(copied.embeddings, first.embeddings)
    Path(paths[0]).write_bytes(Path(paths[0]).read_bytes() + b"changed")  # a changed image
    changed = CountingTeacher()
    assert teacher_targets(changed, paths, cache).computed == len(paths)
    (face_dir / "dave").mkdir()
    (face_dir / "dave" / "0.jpg").write_bytes(Path(paths[2]).read_bytes() + b"dave")
    grown = sorted(str(p) for p in face_dir.rglob("*.jpg"))  # a changed folder: one image more
    assert teacher_targets(CountingTeacher(), grown, cache).computed == len(grown)


def test_interrupted_caching_continues_from_its_partial_file(face_dir: Path) -> None:
    paths = sorted(str(p) for p in face_dir.rglob("*.jpg"))

    class Failing(CountingTeacher):
        def embed(self, images: list[str]) -> np.ndarray:
            if self.embedded >= 8:
                raise KeyboardInterrupt
            return super().embed(images)

    with pytest.raises(KeyboardInterrupt):
        teacher_targets(Failing(), paths, face_dir.parent / "cache", batch_size=4, save_every_s=0)
    resumed = CountingTeacher()
    out = teacher_targets(resumed, paths, face_dir.parent / "cache", batch_size=4)
    assert resumed.embedded == len(paths) - 8 and out.computed == len(paths) - 8
    full = teacher_targets(CountingTeacher(), paths, face_dir.parent / "fresh", batch_size=4)
    np.testing.assert_array_equal(out.embeddings, full.embeddings)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: f.write_bytes(b"not an npz"),
        lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),
        lambda f: np.savez(open(f, "wb"), key=np.array("x"), embeddings=np.zeros((2, 3)), done=np.array(2)),
    ],
    ids=["garbage", "truncated", "foreign"],
)
def test_a_damaged_cache_file_is_computed_again(face_dir: Path, damage) -> None:
    paths = sorted(str(p) for p in face_dir.rglob("*.jpg"))
    first = teacher_targets(CountingTeacher(), paths, face_dir.parent / "cache")
    damage(first.path)
    again = CountingTeacher()
    out = teacher_targets(again, paths, face_dir.parent / "cache")
    assert again.embedded == len(paths) and out.computed == len(paths)
    np.testing.assert_array_equal(out.embeddings, first.embeddings)


def test_a_run_on_a_subset_takes_its_rows_from_the_cache_of_all_images(face_dir: Path) -> None:
    paths = sorted(str(p) for p in face_dir.rglob("*.jpg"))
    cache = face_dir.parent / "cache"
    full = teacher_targets(CountingTeacher(), paths, cache)
    pick = [7, 2, 11, 0]
    again = CountingTeacher()
    subset = teacher_targets(again, [paths[i] for i in pick], cache)
    assert again.embedded == 0 and subset.computed == 0 and subset.path != full.path
    np.testing.assert_array_equal(subset.embeddings, full.embeddings[pick])
    expected_mean = F.normalize(torch.from_numpy(full.embeddings[pick]), dim=1).mean(0).numpy()
    np.testing.assert_allclose(subset.mean, expected_mean, rtol=1e-6)  # the subset's own training mean
    other = CountingTeacher("b")  # another teacher finds nothing to reuse
    assert teacher_targets(other, [paths[i] for i in pick], cache).computed == len(pick)
    new_image = face_dir / "alice" / "new.jpg"
    new_image.write_bytes(Path(paths[0]).read_bytes() + b"another image")
    more = CountingTeacher()  # an image the full cache lacks: computed
    assert teacher_targets(more, [paths[1], str(new_image)], cache).computed == 2
