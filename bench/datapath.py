"""The data path alone, images/s on ONE core: ImageFolder + PIL + per-image transforms vs the packed uint8 array.

student  torchvision ImageFolder: open + decode the JPEG (PIL), RandomHorizontalFlip, ToTensor, Normalize, one
         image at a time, collated into batches by a DataLoader in the main process (num_workers=0).
packed   a random batch indexed out of the decoded (N, S, S, 3) uint8 array, converted to float (B, 3, S, S) in
         [-1, 1] (channels_last, as `facerec train` feeds the network) and augmented in one batched call, in place
         as the training step does: "flip" (the student's augmentation) and "standard" (flip + affine jitter +
         colour, what `facerec train` uses by default).
The same --images images (a random subset of the training split) in each; decoding them into the array once
(what `facerec pack` does) is timed too. One torch thread; the rate is images per CPU-second of this process
(time.process_time), i.e. per core, which other processes competing for the cores do not distort; wall-clock
rates are printed beside it.

    python bench/datapath.py [--images 4096] [--batch-size 256]
"""

from __future__ import annotations

import argparse

import torch
from _common import Timer, data_root, hardware, train_dir
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from facerec.data.augment import augment, get_preset, to_input
from facerec.data.folder import load_images


def student(data: ImageFolder, idx: list[int], batch: int, size: int) -> tuple[float, float]:
    data.transform = T.Compose(
        [T.Resize((size, size)), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
    )
    loader = DataLoader(Subset(data, idx), batch, shuffle=True, num_workers=0)
    with Timer() as t:
        n = sum(x.shape[0] for x, _ in loader)
    return t.rates(n)


def packed(images: torch.Tensor, batch: int, preset: str, rounds: int = 3) -> tuple[float, float]:
    spec, gen = get_preset(preset), torch.Generator().manual_seed(0)
    n = 0
    with Timer() as t:
        for _ in range(rounds):  # several epochs over the subset: the array is reused, never decoded again
            for idx in torch.randperm(len(images), generator=gen).split(batch):
                x = augment(to_input(images[idx], channels_last=True), spec, gen, inplace=True)  # as trained
                n += x.shape[0]
    return t.rates(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="HW2P2 root or identity folders (default $FACEREC_DATA, ../shared/data/facehw)")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = ImageFolder(str(train_dir(data_root(args.data))))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.images].tolist()
    print(f"cpu: {hardware(torch.device('cpu'))}")
    print(f"{len(idx)} images of {data.root}, batch {args.batch_size}, 1 thread")

    with Timer() as t:
        array, failed = load_images([data.samples[i][0] for i in idx], args.image_size, num_workers=1)
    decode = t.rates(len(idx))
    images = torch.from_numpy(array)
    s = student(data, idx, args.batch_size, args.image_size)
    flip = packed(images, args.batch_size, "flip")
    standard = packed(images, args.batch_size, "standard")
    print(f"{'path':<46} {'img/CPU-s':>10} {'img/s wall':>11}")
    for label, (cpu, wall) in [
        ("student: ImageFolder + PIL + ToTensor (flip)", s),
        ("one-off decode into the array (facerec pack)", decode),
        ("packed: index + to_input + flip", flip),
        ("packed: index + to_input + standard augment", standard),
    ]:
        print(f"{label:<46} {cpu:>10.0f} {wall:>11.0f}")
    print(
        f"ratio packed / student, images per CPU-second: {flip[0] / s[0]:.1f}x (flip), "
        f"{standard[0] / s[0]:.1f}x (standard augmentation)"
    )


if __name__ == "__main__":
    main()
