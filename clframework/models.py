"""The paper's networks. Every model takes `forward(x, head)`: the output head of the task at hand.

Single-head settings simply have one head. Heads live in an `nn.ModuleList`, so a model can also grow a head later
(`add_head`) and strategies will treat its parameters as new.
"""
from __future__ import annotations

import functools
import inspect
from typing import Sequence

import torch
from torch import nn


class MultiHeadNet(nn.Module):
    """A shared trunk followed by one linear head per task."""

    def __init__(self, trunk: nn.Module, features: int, head_sizes: Sequence[int]):
        super().__init__()
        if not head_sizes or min(head_sizes) < 1:
            raise ValueError(f"head_sizes must list at least one positive size, got {list(head_sizes)}")
        self.trunk = trunk
        self.features = features
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in head_sizes)

    def add_head(self, n_outputs: int) -> int:
        device = next(self.parameters()).device
        self.heads.append(nn.Linear(self.features, n_outputs).to(device))
        return len(self.heads) - 1

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        return self.heads[head](self.trunk(x))


def mlp(input_size: int, head_sizes: Sequence[int], hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0) -> MultiHeadNet:
    """The paper's MLP: fully connected ReLU layers (784-256-256 for split MNIST, 784-2000-2000 for permuted)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers, width = [nn.Flatten()], input_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return MultiHeadNet(nn.Sequential(*layers), width, head_sizes)


def cifar_cnn(head_sizes: Sequence[int], in_channels: int = 3) -> MultiHeadNet:
    """The paper's CIFAR network (the Keras CIFAR-10 example): 4 conv layers, dense 512, dropout, task heads."""
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * 6 * 6, 512), nn.ReLU(), nn.Dropout(0.5),
    )
    return MultiHeadNet(trunk, 512, head_sizes)


def build_model(kind: str, input_shape: Sequence[int], head_sizes: Sequence[int],
                hidden: Sequence[int] = (256, 256), dropout: float = 0.0) -> MultiHeadNet:
    if kind == "mlp":
        size = 1
        for d in input_shape:
            size *= int(d)
        return mlp(size, head_sizes, hidden, dropout)
    if kind == "cnn":
        return cifar_cnn(head_sizes, in_channels=int(input_shape[0]))
    raise ValueError(f"unknown model kind {kind!r}; choose 'mlp' or 'cnn'")


def takes_head(model: nn.Module) -> bool:
    """Whether `model.forward` accepts a head index (clframework models do; a user's plain model may not)."""
    forward = model.forward
    return _accepts_head(getattr(forward, "__func__", forward))


@functools.lru_cache(maxsize=None)
def _accepts_head(forward) -> bool:
    """Cached per forward function: inspect.signature is too slow to run on every training step."""
    return "head" in inspect.signature(forward).parameters


def forward_head(model: nn.Module, x: torch.Tensor, head: int) -> torch.Tensor:
    return model(x, head) if takes_head(model) else model(x)


def forward_heads(model: nn.Module, x: torch.Tensor, head) -> torch.Tensor:
    """Outputs on `x` through one head (an int) or one head per example (a LongTensor, e.g. a minibatch joined with
    replayed examples of earlier tasks). Per-example heads run the trunk once (MultiHeadNet) and each head on its
    rows; rows of heads narrower than the widest are padded with -inf, which softmax and cross-entropy ignore."""
    if not isinstance(head, torch.Tensor):
        return forward_head(model, x, head)
    used = head.unique().tolist()
    if len(used) == 1:
        return forward_head(model, x, used[0])
    features = model.trunk(x) if isinstance(model, MultiHeadNet) else None
    parts = []
    for h in used:
        rows = (head == h).nonzero().squeeze(1)
        out = model.heads[h](features[rows]) if features is not None else forward_head(model, x[rows], h)
        parts.append((rows, out))
    width = max(o.shape[1] for _, o in parts)
    out = parts[0][1].new_full((len(x), width), float("-inf"))
    for rows, o in parts:
        out[rows, :o.shape[1]] = o
    return out
