"""Write an ImageFolder tree of generated images (ROOT/<class>/<i>.png, or .bmp): noise tinted by a class colour, so the
classes are learnable. For the disk-backed measurements in docs/performance.md.

usage: python scripts/make_image_tree.py ROOT [--classes 10] [--per-class 9000] [--size 64] [--seed 0] [--format png]
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=9000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="png", choices=["png", "bmp"], help="bmp: uncompressed, fastest to write")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    colours = rng.integers(0, 128, (args.classes, 1, 1, 3))
    for c in range(args.classes):
        folder = args.root / f"class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            noise = rng.integers(0, 128, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(noise + colours[c].astype(np.uint8)).save(folder / f"{i:05d}.{args.format}")
    n = args.classes * args.per_class
    print(f"{n} images of {args.size}x{args.size}x3 in {args.root}: {n * args.size ** 2 * 3 * 4 / 2 ** 30:.2f} GiB "
          f"as float32, {n * args.size ** 2 * 3 / 2 ** 30:.2f} GiB as uint8")


if __name__ == "__main__":
    main()
