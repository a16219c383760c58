"""The model registry and its networks: the paper's MLP and CNN, and the ResNet-18s of the DER/GEM line. Every model
takes `forward(x, head)`: the output head of the task at hand.

Single-head settings simply have one head. Heads live in an `nn.ModuleList`, so a model can also grow a head later
(`add_head`) and strategies will treat its parameters as new.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .registry import Registry, RegistryError


MODELS = Registry("model", entry_point_group="clframework.models", param_word="option")


def register_model(name: str, *, checks: Optional[Dict[str, tuple]] = None, description: str = "",
                   override: bool = False):
    """Decorator for a factory `(input_shape, head_sizes, **options) -> nn.Module`; its keyword defaults are the
    model's options. A name already registered is an error unless override=True (then a warning)."""
    return MODELS.register(name, checks=checks, description=description, override=override)


def available_models() -> List[str]:
    return MODELS.names()


class XavierLinear(nn.Linear):
    """nn.Linear initialized as the DER code's MNISTMLP (Mammoth backbone/__init__.py `xavier`, commit 7ab9db97):
    Xavier-uniform weights, zero biases; `reset_parameters` (e.g. GDumb's fresh network) draws the same way."""

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class MultiHeadNet(nn.Module):
    """A shared trunk followed by one linear head per task. `features(x)` is the trunk's output (the penultimate
    features: iCaRL's nearest-mean classifier and LwF use them); `feature_size` its width. `linear`: the heads' class
    (nn.Linear, or XavierLinear for its initialization)."""

    def __init__(self, trunk: nn.Module, feature_size: int, head_sizes: Sequence[int], linear: type = nn.Linear):
        super().__init__()
        if not head_sizes or min(head_sizes) < 1:
            raise ValueError(f"head_sizes must list at least one positive size, got {list(head_sizes)}")
        self.trunk = trunk
        self.feature_size = feature_size
        self.linear = linear
        self.heads = nn.ModuleList(linear(feature_size, n) for n in head_sizes)

    def add_head(self, n_outputs: int) -> int:
        device = next(self.parameters()).device
        self.heads.append(self.linear(self.feature_size, n_outputs).to(device))
        return len(self.heads) - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        return self.heads[head](self.trunk(x))


def _flat_size(input_shape: Sequence[int]) -> int:
    size = 1
    for d in input_shape:
        size *= int(d)
    return size


def mlp(input_size: int, head_sizes: Sequence[int], hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0, linear: type = nn.Linear) -> MultiHeadNet:
    """The paper's MLP: fully connected ReLU layers (784-256-256 for split MNIST, 784-2000-2000 for permuted);
    `linear` the layers' class (XavierLinear: the DER code's initialization)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers, width = [nn.Flatten()], input_size
    for h in hidden:
        layers += [linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return MultiHeadNet(nn.Sequential(*layers), width, head_sizes, linear)


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


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_trunk(in_channels: int, nf: int, blocks: Sequence[int] = (2, 2, 2, 2)) -> nn.Sequential:
    """ResNet-18 as in the GEM and DER code (Lopez-Paz & Ranzato 2017; Buzzega et al. 2020): a 3x3 stride-1 first
    convolution and no max-pool (torchvision's 7x7 stem and max-pool are made for 224 px ImageNet), four stages of
    BasicBlocks with nf, 2nf, 4nf, 8nf filters, then global average pooling: any image size works (32 px CIFAR,
    64 px TinyImageNet)."""
    layers: List[nn.Module] = [nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
    in_planes = nf
    for i, n in enumerate(blocks):
        planes = nf * 2 ** i
        for j in range(n):
            layers.append(BasicBlock(in_planes, planes, 1 if i == 0 or j > 0 else 2))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _image_channels(input_shape: Sequence[int], name: str) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"model '{name}' takes images [channels, height, width]; the stream's inputs have shape "
                         f"{tuple(input_shape)} (choose --model mlp for flat inputs)")
    return int(input_shape[0])


@register_model("mlp", checks={"dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)")},
                description="fully connected ReLU layers (the paper's MNIST networks; --hidden, --dropout)")
def mlp_model(input_shape: Sequence[int], head_sizes: Sequence[int], hidden: Sequence[int] = (256, 256),
              dropout: float = 0.0) -> MultiHeadNet:
    return mlp(_flat_size(input_shape), head_sizes, hidden, dropout)


@register_model("xavier_mlp", checks={"dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)")},
                description="mlp initialized as the DER code's MNISTMLP: Xavier-uniform weights, zero biases (the "
                            "seq-MNIST protocol's network)")
def xavier_mlp_model(input_shape: Sequence[int], head_sizes: Sequence[int], hidden: Sequence[int] = (100, 100),
                     dropout: float = 0.0) -> MultiHeadNet:
    return mlp(_flat_size(input_shape), head_sizes, hidden, dropout, XavierLinear)


@register_model("cnn", description="the paper's CIFAR CNN: 4 conv layers, dense 512, dropout (Zenke et al. 2017)")
def cnn_model(input_shape: Sequence[int], head_sizes: Sequence[int]) -> MultiHeadNet:
    return cifar_cnn(head_sizes, in_channels=_image_channels(input_shape, "cnn"))


@register_model("resnet18", description="ResNet-18 of the DER code: 3x3 stem, no max-pool, 64 base filters")
def resnet18(input_shape: Sequence[int], head_sizes: Sequence[int]) -> MultiHeadNet:
    return MultiHeadNet(resnet_trunk(_image_channels(input_shape, "resnet18"), 64), 8 * 64, head_sizes)


@register_model("reduced_resnet18", description="the reduced ResNet-18 of the GEM code: resnet18 with 20 base "
                                                "filters")
def reduced_resnet18(input_shape: Sequence[int], head_sizes: Sequence[int]) -> MultiHeadNet:
    return MultiHeadNet(resnet_trunk(_image_channels(input_shape, "reduced_resnet18"), 20), 8 * 20, head_sizes)


ModelSpec = Union[str, Callable[..., nn.Module]]


def model_name(model: ModelSpec) -> str:
    """How results.json records a model: its registered name, or `module:factory` for a user's factory."""
    if isinstance(model, str):
        return model
    return f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', repr(model))}"


def model_factory(model: ModelSpec) -> Callable[..., nn.Module]:
    """The factory a model spec names: a registered name, `module:factory` (imported; the current folder is on the
    path), or a callable `(input_shape, head_sizes) -> nn.Module`. RegistryError names the problem and the fix."""
    if callable(model):
        return model
    if not isinstance(model, str) or not model:
        raise RegistryError(f"a model is a registered name ({', '.join(available_models())}), 'module:factory' or a "
                            f"callable (input_shape, head_sizes) -> nn.Module; got {model!r}")
    if ":" not in model:
        return MODELS.get(model).factory
    module, _, attr = model.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise RegistryError(f"--model {model}: cannot import module '{module}' ({exc}); give an importable module "
                            f"(on PYTHONPATH or in the current folder) and a factory in it") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"--model {model}: module '{module}' has no '{attr}'") from None
        obj = getattr(obj, part)
    if not callable(obj):
        raise RegistryError(f"--model {model}: '{attr}' is not callable; it must be a factory "
                            f"(input_shape, head_sizes) -> nn.Module")
    return obj


def build_model(model: ModelSpec, input_shape: Sequence[int], head_sizes: Sequence[int],
                hidden: Optional[Sequence[int]] = None, dropout: Optional[float] = None) -> nn.Module:
    """The model for a stream: `model` (a registered name, 'module:factory' or a callable) built with the stream's
    input shape and head sizes; `hidden` and `dropout` go to factories that take them (the MLP)."""
    factory = model_factory(model)
    accepted = inspect.signature(factory).parameters
    options = {k: (tuple(v) if k == "hidden" else v) for k, v in (("hidden", hidden), ("dropout", dropout))
               if v is not None and k in accepted}
    if isinstance(model, str) and ":" not in model:
        options = MODELS.check_hparams(model, options)
    name = model_name(model)
    try:
        net = factory(tuple(int(d) for d in input_shape), list(head_sizes), **options)
    except Exception as exc:  # a user's factory may raise anything: name it (--debug shows its traceback)
        called = (" (a model factory is called as factory(input_shape, head_sizes))" if isinstance(exc, TypeError)
                  else "")
        raise ValueError(f"model {name} could not be built for inputs of shape {tuple(input_shape)} and heads "
                         f"{list(head_sizes)}: {type(exc).__name__}: {exc}{called}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"model factory {name} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the output layer sees (iCaRL's herding and nearest-mean classifier use them). A model exposes
    them by a method `features(x)`; a MultiHeadNet's are its trunk's output."""
    method = getattr(model, "features", None)
    if callable(method):
        return method(x)
    if isinstance(model, MultiHeadNet):
        return model.trunk(x)
    raise TypeError(f"{type(model).__name__} does not expose its penultimate features: give it a method "
                    f"features(x) returning the input of its output layer")


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
