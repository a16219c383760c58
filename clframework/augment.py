"""Training augmentation: a transform applied per example on whole minibatches, on the device they live on.

Kornia's augmentation module does the work (a crop and a flip per example on a batch tensor, on the GPU); the random
parameters come from our own seeded generator and are handed to Kornia, so each example gets its own crop and flip,
runs are reproducible, and the generator's state is checkpointed (a resumed run draws the same parameters).
torchvision's transforms v2 draw one set of parameters per call, the same for a whole batch: per-example parameters
would need a Python loop over examples.

The trainer applies it to every minibatch it trains on; memories rebuild model inputs with `Batch.inputs(raw)`, which
applies it too, so replayed examples are augmented exactly like incoming ones (stored raw, augmented afresh each time).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

AUGMENTATIONS = ("none", "crop-flip")
PADDING = 4  # the DER protocol's RandomCrop(32, padding=4) (and 64 px with padding 4 for TinyImageNet)


class CropFlip:
    """Random crop of the input's own size from the image zero-padded by `padding` pixels on every side, then a
    horizontal flip with probability 1/2 (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, as in the
    DER protocol), each example with its own parameters. Inputs are model inputs (already normalized), so the padding
    is `fill`, one value per channel in model-input units (`black_fill` gives a black pixel's, what torchvision pads
    with before ToTensor and Normalize; default 0)."""

    name = "crop-flip"

    def __init__(self, input_shape: Sequence[int], padding: int = PADDING, seed: int = 0,
                 fill: Optional[Sequence[float]] = None):
        import kornia.augmentation as K  # only runs that augment pay for importing Kornia

        if len(input_shape) != 3:
            raise ValueError(f"crop-flip augments images [channels, height, width]; the stream's inputs have shape "
                             f"{tuple(input_shape)} (use --augment none for flat inputs)")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.size = (int(input_shape[1]), int(input_shape[2]))
        self.padding = int(padding)
        fill = [0.0] * int(input_shape[0]) if fill is None else [float(f) for f in fill]
        self.crop = K.RandomCrop(self.size, padding=self.padding, fill=fill)
        self.flip = K.RandomHorizontalFlip()
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> Dict[str, torch.Tensor]:
        """Parameters for n examples, from our generator: each example's crop offset (x, y) in [0, 2 padding] and
        whether it is flipped."""
        span = 2 * self.padding + 1
        offsets = torch.randint(0, span, (n, 2), generator=self.generator)
        flips = torch.rand(n, generator=self.generator) < 0.5
        return {"offsets": offsets, "flips": flips}

    def apply(self, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """x augmented with the given parameters (Kornia's crop and flip, fed our parameters)."""
        n, (h, w), p = len(x), self.size, self.padding
        corners = torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=torch.float32)
        src = params["offsets"].to(torch.float32)[:, None, :] + corners
        crop = {"src": src, "dst": corners.expand(n, 4, 2),
                "input_size": torch.tensor([[h + 2 * p, w + 2 * p]]).expand(n, 2),
                "output_size": torch.tensor([[h, w]]).expand(n, 2), "batch_prob": torch.ones(n),
                "forward_input_shape": torch.tensor([n, x.shape[1], h + 2 * p, w + 2 * p]),
                "padding_size": torch.tensor([[p, p, p, p]]).expand(n, 4)}
        flip = {"batch_prob": params["flips"].to(torch.float32), "forward_input_shape": torch.tensor(x.shape)}
        return self.flip(self.crop(x, params=crop), params=flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.sample(len(x)))

    def state_dict(self) -> dict:
        return {"name": self.name, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"augmentation state of {state.get('name')!r} cannot restore {self.name!r}")
        self.generator.set_state(state["generator"])


def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return name


def check_augment_fits(name: str, stream) -> None:
    """crop-flip moves pixels; on a stream whose tasks permute the pixels (permuted MNIST) a crop of a permuted image
    is noise (accuracy 0.17 against 0.85 without): refused."""
    if name == "crop-flip" and any(t.examples("train").features is not None for t in stream.tasks):
        raise ValueError(f"--augment crop-flip crops and flips images, but the tasks of {stream.name} permute their "
                         f"pixels: a crop of a permuted image is noise; use --augment none")


def black_fill(decode: Optional[Callable[[torch.Tensor], torch.Tensor]], input_shape: Sequence[int]) -> List[float]:
    """Per channel, the model input of a black stored pixel: `decode` of an all-zero uint8 image (for `Normalize`,
    -mean/std). The DER protocol pads the stored image with black before normalizing it; padding the normalized image
    with these values gives the same inputs. Without a decode the stored form is the model input and its black is
    unknown: 0."""
    if decode is None:
        return [0.0] * int(input_shape[0])
    return decode(torch.zeros((1, *input_shape), dtype=torch.uint8))[0, :, 0, 0].tolist()


def make_augment(name: str, input_shape: Sequence[int], seed: int = 0,
                 decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Optional[CropFlip]:
    """The training augmentation called `name` for inputs of `input_shape` ("none": None); crops pad with the black
    of the stream's stored images (`black_fill(decode, ...)`), as the DER protocol's transforms do."""
    if check_augment(name) == "none":
        return None
    fill = black_fill(decode, input_shape) if len(input_shape) == 3 else None  # other shapes: CropFlip says why not
    return CropFlip(input_shape, seed=seed, fill=fill)
