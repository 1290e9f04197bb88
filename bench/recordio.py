"""Training from an insightface .rec folder against training from a facerec pack of the same images (issue #15).

A synthetic insightface training set is written to a temporary folder: the first --images facehw training images,
grouped by identity, resized from 64x64 to --image-size (112) and JPEG-encoded (quality 95, as im2rec does), laid
out as insightface's rec builder writes them (header, image and identity records; tests/rec_writer.py, which
reproduces an MXNet-written file byte for byte). `facerec pack` then decodes it into a pack. Three sources feed
the same training step (facerec.engine.train.train_one_epoch on facerec.engine.data.epoch_batches, what
`facerec train` runs):

pack   the pack, memory-mapped (the images decoded once, before training)
lazy   the .rec folder decoded batch by batch (`RecordImages`: what a set too big for memory, e.g. MS1M, gets)
eager  the .rec folder decoded up front when it is opened (what a set under 1 GiB of decoded images gets)

The rate is images per CPU-second of this process (time.process_time: one torch thread, one decoding thread, so
per core and not distorted by other processes on the machine); wall-clock rates beside it. The sources take turns,
--rounds times, so a change in the machine's load falls on all of them. "data only" is the batches alone (the
data path without the network), and the times to open each source are printed too.

    python bench/recordio.py [--images 5000] [--models mobilefacenet,facenet_s] [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import Timer, data_root, hardware, train_dir
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test writer of .rec sets
from facerec.data.augment import get_preset  # noqa: E402
from facerec.data.folder import scan_identity_folders  # noqa: E402
from facerec.data.memory import ImageSet  # noqa: E402
from facerec.data.pack import open_pack, pack_dataset  # noqa: E402
from facerec.data.recordset import open_recordio  # noqa: E402
from facerec.data.sampler import RandomBatchSampler  # noqa: E402
from facerec.engine.data import epoch_batches  # noqa: E402
from facerec.engine.optim import build_optimizer  # noqa: E402
from facerec.engine.schedule import LRSchedule  # noqa: E402
from facerec.engine.train import StepOptions, StepParts, train_one_epoch  # noqa: E402
from facerec.losses.base import build_combined_loss  # noqa: E402
from facerec.models.embedder import FaceEmbedder  # noqa: E402
from rec_writer import write_set  # noqa: E402

CPU = torch.device("cpu")


def write_rec(root: Path, out: Path, n: int, size: int) -> int:
    """The first `n` training images of `root`, by identity, as an insightface set at `size`; its class count."""
    index = scan_identity_folders(train_dir(root))
    by_class: dict[int, list[bytes]] = {}
    for path, label in list(zip(index.paths, index.labels, strict=True))[:n]:
        img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        by_class.setdefault(label, []).append(buf.getvalue())
    write_set(out, [by_class[c] for c in sorted(by_class)], size)
    return len(by_class)


def trainer(model_name: str, images: ImageSet, batch: int, size: int):
    """A function that trains `steps` steps on `images` (the same seeded model, loss and optimiser each time)."""
    torch.manual_seed(0)
    model = FaceEmbedder(model_name, 256, image_size=size)
    loss = build_combined_loss([("softmax", 1.0, {})], embedding_dim=256, num_classes=len(images.classes))
    opt, schedule = build_optimizer(model, loss, "sgd", 0.01, 5e-4), LRSchedule(0.01, 1, 10**6, "constant")
    sampler, gen, aug = RandomBatchSampler(len(images), batch), torch.Generator().manual_seed(0), torch.Generator()

    def stream():
        while True:
            yield from epoch_batches(images, sampler, gen, CPU)

    batches = stream()

    def run(steps: int) -> None:
        opts = StepOptions(CPU, log_every=10**9, max_steps=steps)
        parts = StepParts(model, loss, opt, schedule, get_preset("standard"), opts)
        train_one_epoch(parts, batches, aug, steps=steps)

    return run


def data_only(images: ImageSet, batch: int, steps: int) -> tuple[float, float]:
    sampler, gen = RandomBatchSampler(len(images), batch), torch.Generator().manual_seed(1)
    with Timer() as t:
        n = sum(x.shape[0] for _, (x, _) in zip(range(steps), epoch_batches(images, sampler, gen, CPU)))
    return t.rates(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="facehw root (default $FACEREC_DATA, ../shared/data/facehw)")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--models", default="mobilefacenet,facenet_s")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per source per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    size, quiet = args.image_size, lambda m: None
    print(f"{hardware(CPU)}; {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="facerec-rec-") as tmp:
        rec, pack = Path(tmp) / "rec", Path(tmp) / "pack"
        classes = write_rec(data_root(args.data), rec, args.images, size)
        mib = (rec / "train.rec").stat().st_size / 2**20
        print(
            f"synthetic set: {args.images} images of {classes} identities at {size}x{size}, "
            f"train.rec {mib:.1f} MiB"
        )
        sources: dict[str, ImageSet] = {}
        for name, opener in [
            ("pack", lambda: (pack_dataset(rec, pack, size, 1, quiet), open_pack(pack, size, quiet))[1]),
            ("lazy", lambda: open_recordio(rec, size, num_workers=1, log=quiet, eager_bytes=0)),
            ("eager", lambda: open_recordio(rec, size, num_workers=1, log=quiet)),
        ]:
            with Timer() as t:
                sources[name] = opener()
            what = {"pack": "facerec pack + open", "lazy": "open (index checked)", "eager": "open + decode"}[name]
            print(f"  {name:<5} {what}: {t.cpu:.2f} CPU-s, {t.wall:.2f} s")
        assert all(torch.equal(sources["pack"].labels, s.labels) for s in sources.values())
        rates = {name: data_only(s, args.batch_size, 20) for name, s in sources.items()}
        print("data only (img/CPU-s): " + ", ".join(f"{k} {v[0]:,.0f}" for k, v in rates.items()))
        print("\n| model | pack img/CPU-s | lazy .rec | eager .rec | lazy / pack | eager / pack | (wall img/s) |")
        print("|---|---|---|---|---|---|---|")
        for model in args.models.split(","):
            runs = {name: trainer(model, s, args.batch_size, size) for name, s in sources.items()}
            cpu = dict.fromkeys(runs, 0.0)
            wall = dict.fromkeys(runs, 0.0)
            for run in runs.values():
                run(1)  # warm-up, not timed
            for _ in range(args.rounds):
                for name, run in runs.items():
                    with Timer() as t:
                        run(args.steps)
                    cpu[name] += t.cpu
                    wall[name] += t.wall
            n = args.rounds * args.steps * args.batch_size
            r = {k: n / v for k, v in cpu.items()}
            walls = ", ".join(f"{k} {n / v:.1f}" for k, v in wall.items())
            print(
                f"| {model} | {r['pack']:.1f} | {r['lazy']:.1f} | {r['eager']:.1f} | {r['lazy'] / r['pack']:.3f} "
                f"| {r['eager'] / r['pack']:.3f} | {walls} |",
                flush=True,
            )
    print(f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps per source, 1 torch thread")


if __name__ == "__main__":
    main()
