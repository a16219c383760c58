"""A finished run's trained model, rebuilt for inference in one call: `clframework.load(run_dir)`.

results.json records the architecture (the model's registered name or `module:factory`, its options, the stream's
input shape and head sizes), each task's classes and how the stream stores and decodes its examples; model.pt holds
the weights. `predict` takes examples as the stream stores them (e.g. uint8 images) or model inputs, and answers in
the stream's own labels (e.g. CIFAR-10's 0-9), not in the outputs of a task's head.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import nn

from clframework.benchmarks.stream import Normalize
from clframework.evaluation.results import read_json

from .checkpoint import MODEL, RESULTS
from .models import build_model, forward_head


class TrainedModel:
    """A trained network with the label maps of its stream. `model` is the nn.Module itself (eval mode)."""

    def __init__(self, model: nn.Module, config: dict, tasks: List[str]):
        self.model, self.config, self.tasks = model.eval(), config, list(tasks)
        self.setting = config["setting"]
        self.classes = [list(c) for c in config["classes"]]
        self.task_heads = list(config["task_heads"])

    def _task_index(self, task: Union[int, str]) -> int:
        if isinstance(task, str):
            if task not in self.tasks:
                raise ValueError(f"unknown task {task!r}; the run's tasks: {', '.join(self.tasks)}")
            return self.tasks.index(task)
        if not 0 <= task < len(self.tasks):
            raise ValueError(f"task must be 0..{len(self.tasks) - 1} (or a task name), got {task}")
        return task

    def label_map(self, task: Optional[Union[int, str]] = None) -> tuple:
        """(head, global label of each of that head's outputs) for a prediction."""
        if self.setting == "class":  # one head; every task's classes take the next outputs
            return 0, [c for cls in self.classes for c in cls]
        if task is None:
            if self.setting == "domain" and all(c == self.classes[0] for c in self.classes):
                return 0, self.classes[0]
            raise ValueError(f"this run is {self.setting}-incremental with a different label map per task: pass "
                             f"task= (an index or one of {', '.join(self.tasks)})")
        i = self._task_index(task)
        return self.task_heads[i], self.classes[i]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task: Optional[Union[int, str]] = None) -> torch.Tensor:
        """The stream's labels predicted for `x`: examples [N, ...] as the stream stores them (e.g. uint8 images,
        `task.examples("test").raw()`), decoded as the run's stream decodes them, or float32 model inputs
        (`task.test_x`). Class- and domain-incremental runs need no task; task-incremental ones predict within the
        given task's classes."""
        head, labels = self.label_map(task)
        device = next(self.model.parameters()).device
        out = forward_head(self.model, self.inputs(x, device), head)
        return torch.tensor(labels, device=out.device)[out[:, :len(labels)].argmax(1)].cpu()

    def inputs(self, x: torch.Tensor, device="cpu") -> torch.Tensor:
        """Model inputs on `device` for `x`, stored form or model inputs (see predict); anything else is a ValueError
        saying what this run takes."""
        shape, stored, decode = tuple(self.config["input_shape"]), self.config.get("stored_dtype"), \
            self.config.get("decode")
        raw = isinstance(decode, dict) and stored != "float32"  # stored floats decoded: model inputs only (unambiguous)
        takes = f"float32 model inputs of shape [N, {', '.join(map(str, shape))}]"
        if raw:
            takes += f", or the stream's stored {stored} examples of that shape"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"predict takes {takes}; got a {type(x).__name__} (torch.as_tensor converts it)")
        if tuple(x.shape[1:]) != shape:
            one = " (one example: x.unsqueeze(0))" if tuple(x.shape) == shape else ""
            raise ValueError(f"predict takes {takes}; got shape {list(x.shape)}{one}")
        if x.dtype == torch.float32:
            return x.to(device)
        if raw and str(x.dtype) == f"torch.{stored}":
            return Normalize(decode["scale"], tuple(decode["mean"]), tuple(decode["std"]))(x.to(device))
        why = ""
        if isinstance(decode, str):
            why = f" (the stream decodes its {stored} examples with {decode}, which load cannot rebuild: pass " \
                  f"what it makes of them, task.inputs(raw))"
        elif "decode" not in self.config:
            why = " (results.json of an older clframework records no stored form: decode with task.inputs(raw))"
        raise ValueError(f"predict takes {takes}; got {x.dtype}{why}")

    def to(self, device) -> "TrainedModel":
        self.model.to(device)
        return self


def load(run_dir: Union[str, Path], model=None, device: str = "cpu") -> TrainedModel:
    """The trained model of a finished run folder, rebuilt with its architecture. `model`: the factory to use when
    the run's was a callable that cannot be imported again (results.json names it)."""
    run_dir = Path(run_dir)
    results, weights = run_dir / RESULTS, run_dir / MODEL
    if not results.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (needs {RESULTS} and {MODEL}); a run still training "
                                f"or interrupted has only a checkpoint: finish it with --resume")
    saved = read_json(results)
    config = saved["config"]
    missing = [k for k in ("model", "input_shape", "head_sizes", "classes", "task_heads") if k not in config]
    if missing:
        raise ValueError(f"{results} does not record {', '.join(missing)} (written by an older clframework); "
                         f"rebuild the model by hand and load {weights} into it")
    net = build_model(model or config["model"], config["input_shape"], config["head_sizes"], config.get("hidden"),
                      config.get("dropout"))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return TrainedModel(net, config, saved["tasks"]).to(device)
