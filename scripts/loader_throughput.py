"""Throughput of the DataLoader (disk) path against the in-memory path on the same images: examples per second of
one epoch of minibatches fetched in the trainer's way (a shuffled order from a seeded generator, raw uint8 moved to
the device, decoded there), and with --train one epoch of naive training on each.

usage: python scripts/loader_throughput.py [--root TREE] [--images N] [--size S] [--workers 0,2,4] [--batch-size B]
                                           [--device cpu|cuda] [--train] [--repeats R]
Without --root, an ImageFolder tree of N random PNG images (10 classes, S x S) is generated in a temporary folder.
Prints one line per path (best of R epochs); run it on a quiet machine.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from clframework import Trainer, make_strategy
from clframework.benchmarks import split
from clframework.benchmarks.folders import image_folder, to_memory
from clframework.models import build_model


def generate(root: Path, images: int, size: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import fake_folders

    return fake_folders.image_folder(root, n_classes=10, per_class=max(2, images // 10), size=size)


def epoch_seconds(data, device, batch_size: int, workers: int, train: bool) -> float:
    stream = split(data, 10)  # one task of all 10 classes
    task = stream[0]
    if train:
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.head_sizes, (256,))
        trainer = Trainer(model, make_strategy("naive"), epochs=1, batch_size=batch_size, device=str(device),
                          quiet=True, workers=workers)
        start = time.perf_counter()
        trainer.train_task(task, 0)
    else:
        examples = task.examples("train").on(device)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for raw, y in examples.minibatches(order, 0, batch_size, device, workers):
            task.decode(raw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="an ImageFolder tree (default: generate one)")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--workers", default="0,2,4", help="DataLoader worker counts to try, comma-separated")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train", action="store_true", help="time one epoch of naive training instead of reading only")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or generate(Path(tmp) / "tree", args.images, args.size)
        disk = image_folder(root, size=0 if args.root is None else args.size, test_fraction=0.1)
        memory = to_memory(disk, workers=max(int(w) for w in args.workers.split(",")))
        n = len(disk.train)
        what = "naive training epoch" if args.train else "fetch + decode epoch"
        print(f"{n} training images of shape {tuple(memory.train.x.shape[1:])}, batch {args.batch_size}, "
              f"device {device}, {what}, best of {args.repeats}")
        paths = [("in-memory (uint8 tensor, index gather)", memory, 0)]
        paths += [(f"DataLoader, {w} workers", disk, int(w)) for w in args.workers.split(",")]
        base = None
        for label, data, workers in paths:
            best = min(epoch_seconds(data, device, args.batch_size, workers, args.train) for _ in range(args.repeats))
            base = base or best
            print(f"{label:42s} {best:8.3f} s  {n / best:10.0f} examples/s  {best / base:6.2f}x in-memory time")


if __name__ == "__main__":
    main()
