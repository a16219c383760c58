"""A finished run's trained model, rebuilt for inference in one call: `clframework.load(run_dir)`.

results.json records the architecture (the model's registered name or `module:factory`, its options, the stream's
input shape and head sizes), each task's classes and how the stream stores and decodes its examples; model.pt holds
the weights. `predict` takes examples as the stream stores them (e.g. uint8 images) or model inputs, and answers in
the stream's own labels (e.g. CIFAR-10's 0-9), not in the outputs of a task's head.

A strategy that scores with another module than its stream network (`eval_model`: GDumb's network retrained on the
memory, iCaRL's nearest mean of exemplars) leaves that module in scorer.pt, with its outputs on a few test examples;
`load` rebuilds it (a network of the run's architecture, or the strategy's own `eval_model` wrapper restored from
strategy.pt), proves it gives those outputs, and predicts with it, or refuses naming why.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import nn

from clframework.benchmarks.stream import Normalize
from clframework.evaluation.results import read_json

from .checkpoint import MODEL, RESULTS, SCORER, STRATEGY_STATE
from .models import build_model, forward_head

PROBE = 16  # test examples whose scores prove a rebuilt scorer the one that produced the run's numbers


class TrainedModel:
    """A trained network with the label maps of its stream. `model` is the nn.Module that produced the run's scores
    (eval mode): the stream network, or the strategy's scorer (see the module docstring)."""

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
        given task's classes. As the run's scores do, the argmax takes the head's every output: -1 where it is one no
        class of the run maps to (a head wider than the run's classes, e.g. the first 2 tasks of a 5-task stream)."""
        head, labels = self.label_map(task)
        device = next(self.model.parameters()).device
        out = forward_head(self.model, self.inputs(x, device), head)
        labels = labels + [-1] * (out.shape[1] - len(labels))
        return torch.tensor(labels, device=out.device)[out.argmax(1)].cpu()

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


@torch.no_grad()
def _scores(module: nn.Module, x: torch.Tensor, head: int) -> torch.Tensor:
    was = module.training
    module.eval()
    try:
        return forward_head(module, x, head)
    finally:
        module.train(was)


def scorer_record(scorer: Optional[nn.Module], stream, device) -> dict:
    """scorer.pt's content: the scorer's weights and buffers, and its scores on the last task's first test examples.
    No scorer (a run resumed after its last task was scored: eval_model's module was not kept) is recorded as such."""
    if scorer is None:
        return {"format": 1, "missing": "the run was resumed after its last task had been scored, and the module its "
                                        "strategy scored with (eval_model) was not kept"}
    task = stream.tasks[-1]
    x = task.inputs(task.examples("test").raw(slice(0, PROBE))).to(device)
    return {"format": 1, "state": {k: v.detach().cpu() for k, v in scorer.state_dict().items()},
            "probe_x": x.cpu(), "probe_head": int(task.head), "probe_scores": _scores(scorer, x, task.head).cpu()}


def _same_scores(got: torch.Tensor, recorded: torch.Tensor) -> bool:
    """The same scores up to another device's arithmetic (a run on a GPU, TF32 convolutions, loaded on the CPU):
    the same -inf entries, the others within 1% in norm; another module's scores differ by far more."""
    finite = torch.isfinite(recorded)
    if got.shape != recorded.shape or not torch.equal(finite, torch.isfinite(got)):
        return False
    g, r = got[finite].double(), recorded[finite].double()
    return bool((g - r).norm() <= 1e-2 * r.norm() + 1e-6)


def _rebuild_scorer(net: nn.Module, run_dir: Path, saved: dict) -> nn.Module:
    """The module that produced the run's scores (see the module docstring)."""
    record = torch.load(run_dir / SCORER, map_location="cpu", weights_only=True)
    strategy = saved.get("strategy", "?")
    why = f"{run_dir} cannot be loaded for prediction: its scores came from strategy {strategy!r}'s eval_model, not " \
          f"from {MODEL}, and"
    if "missing" in record:
        raise ValueError(f"{why} {record['missing']}; run it again (--overwrite) to predict with it")
    state, own = record["state"], net.state_dict()
    if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
        net.load_state_dict(state)  # a network of the run's architecture (GDumb's, retrained on the memory)
        scorer = net
    else:  # a wrapper around the network (iCaRL's nearest mean): the strategy builds it, the record fills it
        from .plugin import make_strategy

        try:
            saved = torch.load(run_dir / STRATEGY_STATE, map_location="cpu", weights_only=True)
            rebuilt = make_strategy(strategy, **saved.get("hparams", {}))
            rebuilt.load_state_dict(saved["state"])
            scorer = rebuilt.eval_model(net)
            scorer.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 (any failure means: not the scorer; say which)
            raise ValueError(f"{why} its scorer cannot be rebuilt here ({type(exc).__name__}: {exc})") from None
    if not _same_scores(_scores(scorer, record["probe_x"], record["probe_head"]), record["probe_scores"]):
        raise ValueError(f"{why} the module rebuilt here scores {PROBE} recorded test examples otherwise than the "
                         f"run did (its eval_model is not reproducible from {STRATEGY_STATE})")
    return scorer


def load(run_dir: Union[str, Path], model=None, device: str = "cpu") -> TrainedModel:
    """The trained model of a finished run folder, rebuilt with its architecture. `model`: the factory to use when
    the run's was a callable that cannot be imported again (results.json names it)."""
    run_dir = Path(run_dir)
    results, weights = run_dir / RESULTS, run_dir / MODEL
    if not results.is_file() and (run_dir / "summary.json").is_file():
        runs = sorted(p.parent for p in run_dir.glob(f"*/{RESULTS}"))
        raise FileNotFoundError(f"{run_dir} is a study's folder (summary.json); load one of its runs: "
                                f"{', '.join(map(str, runs))}")
    if results.is_file() and not weights.is_file() and read_json(results).get("status") == "diverged":
        at = read_json(results).get("diverged_at") or {}
        raise ValueError(f"{run_dir} holds a run that diverged (task {at.get('task', -1) + 1} ({at.get('task_name')}), "
                         f"epoch {at.get('epoch')}, step {at.get('step')}): it kept no trained model; run it again "
                         f"with a lower learning rate (--lr)")
    if not results.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (needs {RESULTS} and {MODEL}); a run still training "
                                f"or interrupted has only a checkpoint: finish it with --resume")
    saved = read_json(results)
    config = saved["config"]
    missing = [k for k in ("model", "input_shape", "head_sizes", "classes", "task_heads") if k not in config]
    if missing:
        raise ValueError(f"{results} does not record {', '.join(missing)} (written by an older clframework); "
                         f"rebuild the model by hand and load {weights} into it")
    try:
        net = build_model(model or config["model"], config["input_shape"], config["head_sizes"], config.get("hidden"),
                          config.get("dropout"))
    except ValueError as exc:  # e.g. the run's module:factory not importable from here
        raise ValueError(f"{exc}; or pass the factory itself: load({str(run_dir)!r}, model=factory)") from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or overwritten file: torch's zip reader names no file
        raise ValueError(f"cannot read {weights} ({type(exc).__name__}: {str(exc).splitlines()[0]}); it is damaged: "
                         f"run the command that wrote it again") from exc
    net.load_state_dict(state)
    if (run_dir / SCORER).is_file():
        net = _rebuild_scorer(net, run_dir, saved)
    return TrainedModel(net, config, saved["tasks"]).to(device)
