"""Images per second of the streamed ImageNet pipeline (data.Stream) on this machine.

    python benchmarks/imagenet_pipeline.py [--images 200] [--workers 2] [--batch 32]
                                           [--epochs 3] [--crop 224]

Writes a synthetic ImageFolder (--images JPEGs of 500x375, ILSVRC's typical size, in 10 class
folders, under a temporary directory), then streams it as train.py --dataset imagenet does:
training (RandomResizedCrop, flip, ColorJitter, ToTensor) and validation (Resize 256,
CenterCrop 224, ToTensor), decoded by --workers processes. Each epoch is timed from the
start of iteration (worker start-up included) to its last batch; the table row shows the
best epoch of each (images / seconds). No network runs: this is the ceiling the data
pipeline puts on a retraining's speed.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import data  # noqa: E402


def write_folder(root, n, size=(500, 375), classes=10, seed=0):
    """n smooth random JPEGs (quality 90) in root/train/cNN and root/val/cNN."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n):
            d = os.path.join(root, split, f"c{i % classes:02d}")
            os.makedirs(d, exist_ok=True)
            low = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize(size, Image.BILINEAR)   # photo-like, not noise
            img.save(os.path.join(d, f"{i:05d}.JPEG"), quality=90)


def rate(stream, epochs):
    best = 0.0
    for e in range(epochs):
        stream.epoch = e
        t0, n = time.perf_counter(), 0
        for x, _ in stream:
            n += len(x)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crop", type=int, default=224)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, a.images)
        cpu = torch.device("cpu")
        tr = rate(data.imagenet_stream(root, True, a.batch, cpu, a.workers, a.crop), a.epochs)
        va = rate(data.imagenet_stream(root, False, a.batch, cpu, a.workers, a.crop), a.epochs)
    print("| images | size | workers | batch | crop | train img/s | val img/s | CPUs |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {a.images} | 500x375 | {a.workers} | {a.batch} | {a.crop} | {tr:.0f} | {va:.0f} | "
          f"{os.cpu_count()} |")


if __name__ == "__main__":
    main()
