"""Shared bits of the benchmarks: where the data is, what machine ran them, the decoded training images."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from facerec.data.hw2p2 import detect_layout
from facerec.data.memory import ImageSet, load_identity_folders
from facerec.data.pack import is_pack, open_pack

REPO = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    """--data, else $FACEREC_DATA, else ../shared/data/facehw beside the repository."""
    return Path(arg or os.environ.get("FACEREC_DATA", REPO.parent / "shared" / "data" / "facehw"))


def train_dir(root: Path) -> Path:
    layout = detect_layout(root)
    if layout.train is None:
        raise SystemExit(f"{root} has no training split")
    return layout.train


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware(device: torch.device) -> str:
    """One line: CPU model, cores, torch threads, load average, GPU."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (
        f"{cpu_model()}, nproc {os.cpu_count()}, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, load average {load}"
    )
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def decoded_images(root: Path, image_size: int, pack: str | None) -> tuple[ImageSet, str]:
    """The training images as one uint8 tensor: from a pack (memory-mapped), else decoded once via the cache."""
    if pack or is_pack(root):
        return open_pack(pack or root, image_size, log=lambda m: None), f"pack {pack or root}"
    t0, messages = time.perf_counter(), []
    images = load_identity_folders(
        train_dir(root), image_size, num_workers=os.cpu_count() or 2, log=messages.append
    )
    how = "read from the decoded-image cache" if any("cache" in m for m in messages) else "decoded"
    return images, f"{how} in {time.perf_counter() - t0:.1f}s (once per dataset, not per epoch)"


def device_from(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Timer:
    """CPU seconds of this process (all its threads) and wall seconds of a block. Images per CPU-second is the
    rate per core that other processes competing for the cores do not distort (with one thread and no workers)."""

    def __enter__(self) -> Timer:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall

    def rates(self, n: int) -> tuple[float, float]:
        return n / max(self.cpu, 1e-9), n / max(self.wall, 1e-9)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
