"""Small image folders in the real layouts of TinyImageNet, ImageFolder trees and CORe50 (random pixels), for tests
and for the disk-backed measurements in docs/performance.md."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _image(gen: torch.Generator, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)


def _write(img: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
    if path.suffix.lower() == ".png":
        picture.save(path, compress_level=1)
    else:
        picture.save(path, format="JPEG", quality=95)


def tiny_imagenet(root: Path, n_classes: int = 4, train_per_class: int = 6, val_per_class: int = 3,
                  size: int = 64, seed: int = 0) -> Path:
    """root/tiny-imagenet-200 with wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG, val/images + val_annotations.txt
    (and the boxes file and test/ folder the real archive has)."""
    gen = torch.Generator().manual_seed(seed)
    top = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1000 + 7 * i:08d}" for i in range(n_classes)]
    top.mkdir(parents=True, exist_ok=True)
    (top / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the real file is not sorted either
    for w in wnids:
        lines = []
        for i in range(train_per_class):
            _write(_image(gen, size), top / "train" / w / "images" / f"{w}_{i}.JPEG")
            lines.append(f"{w}_{i}.JPEG\t0\t0\t{size - 1}\t{size - 1}")
        (top / "train" / w / f"{w}_boxes.txt").write_text("\n".join(lines) + "\n")
    annotations, k = [], 0
    for i in range(val_per_class):
        for w in wnids:
            _write(_image(gen, size), top / "val" / "images" / f"val_{k}.JPEG")
            annotations.append(f"val_{k}.JPEG\t{w}\t0\t0\t{size - 1}\t{size - 1}")
            k += 1
    (top / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    _write(_image(gen, size), top / "test" / "images" / "test_0.JPEG")
    return top


def image_folder(root: Path, n_classes: int = 4, per_class: int = 5, size: int = 16, seed: int = 0,
                 suffix: str = ".png", names=None) -> Path:
    """root/<class>/<i><suffix>: an ImageFolder tree (ImageNet-R's layout, with class folders named by wnid, or by
    `names`)."""
    gen = torch.Generator().manual_seed(seed)
    root = Path(root)
    for c in range(n_classes):
        for i in range(per_class):
            _write(_image(gen, size), root / (names[c] if names else f"n{2000 + c:08d}") / f"img_{i}{suffix}")
    return root


def core50(root: Path, per_object: int = 1, size: int = 8, seed: int = 0) -> Path:
    """root/core50_128x128/s1..s11/o1..o50/C_<s>_<o>_<i>.png (the real frames are 128x128)."""
    gen = torch.Generator().manual_seed(seed)
    top = Path(root) / "core50_128x128"
    for s in range(1, 12):
        for o in range(1, 51):
            for i in range(per_object):
                _write(_image(gen, size), top / f"s{s}" / f"o{o}" / f"C_{s:02d}_{o:02d}_{i:03d}.png")
    return top
