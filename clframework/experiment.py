"""Runs and comparisons: resolve a configuration (checking everything before training), train, score, write files."""
from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from clframework.benchmarks.registry import BENCHMARKS, Protocol, benchmark_protocol
from clframework.benchmarks.fingerprint import changes as fingerprint_changes
from clframework.benchmarks.fingerprint import fingerprint as data_fingerprint
from clframework.benchmarks.stream import decode_record
from clframework.evaluation import aggregate as A  # its scipy only once a summary needs it
from clframework.evaluation import metrics as M
from clframework.evaluation.continual import check_settings as check_eval, check_subset
from clframework.evaluation.aggregate import format_console as format_table  # noqa: F401 (the CLI's compare table)
from clframework.evaluation.figures import Figures
from clframework.evaluation.results import OutputError, matrix_csv, read_json, write_json, write_text

from .checkpoint import (CHECKPOINT, CONFIG, FAILED, MODEL, RESULTS, SCORER, STRATEGY_STATE, STUDY, OutputFolder,
                         as_json, check_free_space, check_same_config, checkpoint_bytes, load_checkpoint,
                         refuse_other_config, save_checkpoint, save_torch)
from . import provenance
from .augment import check_augment, check_augment_fits, make_augment
from .callbacks import prepare_study
from .models import ModelSpec, build_model, model_factory, model_name
from .parallel import Backend, Executor, open_executor, plugin_modules, run_threads
from .inference import scorer_record
from .plugin import STRATEGIES, Strategy, check_boundaries, check_needs, make_strategy
from .plugin import overrides as hook_overridden
from .progress import StudyProgress
from .registry import RegistryError
from .recipe import RECIPE_FIELDS, Recipe
from .trainer import (Trainer, TrainerCallback, TrainingDiverged, TrainingFailed, check_fast_step,
                      seed_everything, select_device)


PRESETS = ("strategy_hparams", "method_settings")  # the Protocol's strategy settings, apart from its training fields
# the training protocol's fields a RunConfig sets (None: the protocol's), and the opt-in fast step
TRAIN_FIELDS = tuple(f.name for f in fields(Protocol) if f.name not in PRESETS) + ("precision", "compile")
# the optimizer recipe's fields as RunConfig takes them: each keyword-only, None (unset: the protocol's value)
RecipeOverrides = make_dataclass("RecipeOverrides", [
    (f.name, f.type if f.type.startswith("Optional[") else f"Optional[{f.type}]", field(default=None, kw_only=True))
    for f in fields(Recipe)])


def augment_seed(seed: int) -> int:
    """The augmentation generator's seed: derived from the run's seed, apart from the batch-order generator's."""
    return 2 * seed + 1


@dataclass
class RunConfig(RecipeOverrides):
    """One (strategy, benchmark, seed) run. Unset training fields take the benchmark's paper protocol, or
    `protocol` (a stream of your own: run(config, stream=...) takes the stream's own when no benchmark is named).
    Besides the fields below, the optimizer recipe's, keyword-only (clframework.recipe.Recipe: optimizer, lr,
    momentum, weight_decay, lr_schedule, lr_step_epochs, lr_gamma, lr_min, grad_clip, lr_milestones)."""

    strategy: str
    benchmark: Optional[str] = None
    hparams: Dict[str, object] = field(default_factory=dict)
    seed: int = 0
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    hidden: Optional[Sequence[int]] = None
    dropout: Optional[float] = None
    reset_optimizer: Optional[bool] = None
    device: str = "auto"
    benchmark_options: Dict[str, object] = field(default_factory=dict)
    evaluate_on: str = "test"  # "valid" scores the validation hold-out (hyperparameter search)
    tasks: Optional[int] = None  # the first N tasks of the stream only
    model: Optional[ModelSpec] = None  # a registered model, "module:factory", or a callable (input_shape, head_sizes)
    augment: Optional[str] = None  # the training augmentation (augment.py): "none" or "crop-flip"
    precision: Optional[str] = None  # opt-in fast step: "bf16" autocast (default fp32, recorded only when set)
    compile: Optional[str] = None  # opt-in fast step: torch.compile mode of the forward pass (default: eager)
    protocol: Optional[Protocol] = None  # the defaults of the fields above, in place of the benchmark's
    workers: int = 0  # DataLoader worker processes for tasks read from disk (no effect on results)
    eval_every: Optional[int] = None  # continual evaluation: every N optimizer steps (docs/continual-evaluation.md)
    eval_subset: Optional[int] = None  # ... on N seeded examples of each task's split (None: all of it)

    def training_protocol(self) -> Protocol:
        """`protocol`, else the named benchmark's; neither is an error saying what to give."""
        if self.protocol is not None:
            if not isinstance(self.protocol, Protocol):
                raise ValueError(f"protocol must be a clframework.benchmarks.Protocol, got {self.protocol!r}")
            return self.protocol
        if self.benchmark is None:
            raise ValueError("the run has no benchmark: name a registered one (clframework list), or pass a stream "
                             "of your own (run(config, stream=...), compare(..., stream=...)), whose protocol "
                             "(stream.protocol, else Protocol()'s defaults) sets the training")
        return benchmark_protocol(self.benchmark)

    def as_record(self) -> dict:
        """The configuration as JSON records it (a model callable by its `module:name`)."""
        out = asdict(self)
        if self.model is not None:
            out["model"] = model_name(self.model)
        return out

    def resolved(self) -> dict:
        """The full configuration, every value checked; raises RegistryError/ValueError before any training.

        This is the one place a configuration is validated: the CLI, run(), compare(), tune() and reproduce() all
        come through here, and each error names the value and what is accepted."""
        options = dict(self.benchmark_options)
        if self.benchmark is not None:
            checked = BENCHMARKS.check_hparams(self.benchmark, options)
            options = {k: checked[k] for k in options}  # typed, e.g. "3" from --option n_tasks=3 -> 3
        elif options:
            raise ValueError(f"benchmark options {sorted(self.benchmark_options)} need a registered benchmark; a "
                             f"stream of your own is built by your code")
        protocol = self.training_protocol()
        entry = STRATEGIES.get(self.strategy)
        size = self.hparams.get("memory_size", entry.defaults.get("memory_size", -1))
        best = protocol.for_method(self.strategy, int(size) if str(size).isdigit() else -1)
        preset = {k: v for k, v in {**protocol.strategy_hparams.get(self.strategy, {}), **best}.items()
                  if k in entry.params}
        hparams = STRATEGIES.check_hparams(self.strategy, {**preset, **self.hparams})
        train = protocol.as_dict()
        for key in PRESETS:
            train.pop(key)
        # the method's own training settings at this memory size (lr, weight decay ...: DER-line protocols)
        train.update({k: v for k, v in best.items() if k in train and k not in entry.params})
        for key in TRAIN_FIELDS:
            value = getattr(self, key)
            if value is not None:
                train[key] = list(value) if key == "hidden" and not isinstance(value, (str, int)) else value
        if self.model is not None:
            model_factory(self.model)  # an unknown name or an unimportable factory: RegistryError now
            train["model"] = model_name(self.model)
        check_training(train)
        for key in getattr(entry.factory, "lr_params", ()):  # follow the run's lr unless given (MIR's virtual step)
            if key not in self.hparams and key not in preset:
                hparams[key] = float(train["lr"])
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        select_device(self.device)
        if self.tasks is not None and (isinstance(self.tasks, bool) or not isinstance(self.tasks, int)
                                       or self.tasks < 1):
            raise ValueError(f"the number of tasks must be an integer >= 1, got {self.tasks!r}")
        if not _is_int(self.workers) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: read files in the training process), got "
                             f"{self.workers!r}")
        if self.evaluate_on not in ("test", "valid"):
            raise ValueError(f"evaluate_on must be 'test' or 'valid', got {self.evaluate_on!r}")
        check_eval(self.eval_every, self.eval_subset)
        out = {"strategy": self.strategy, "benchmark": self.benchmark, "seed": self.seed, "hparams": hparams,
               "train": train, "benchmark_options": options, "device": self.device,
               "tasks": self.tasks, "evaluate_on": self.evaluate_on}
        if self.eval_every is not None:  # recorded only when asked: folders of runs without it resume as before
            out["continual_eval"] = {"every": self.eval_every, "subset": self.eval_subset}
        return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_training(train: dict) -> None:
    """The training protocol's values, each against what is accepted (ValueError naming the value); the optimizer
    recipe's defaults are filled in, so that results.json records every value used."""
    for key in ("epochs", "batch_size"):
        if not _is_int(train[key]) or train[key] < 1:
            raise ValueError(f"{key.replace('_', ' ')} must be an integer >= 1, got {train[key]!r}")
    train.update(Recipe.of(train).resolved().as_dict())
    hidden = train["hidden"]
    if not isinstance(hidden, list) or not all(_is_int(h) and h >= 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive integers (e.g. 256,256), got {hidden!r}")
    dropout = train["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(train["reset_optimizer"], bool):
        raise ValueError(f"reset_optimizer must be true or false, got {train['reset_optimizer']!r}")
    check_augment(train["augment"])
    check_fast_step(train.get("precision", "fp32"), train.get("compile"))


def recipe_of(train: dict) -> dict:
    """The optimizer recipe's values of a resolved training protocol, as Trainer keywords."""
    return {k: train[k] for k in RECIPE_FIELDS}


def with_stream_protocol(config: RunConfig, stream) -> RunConfig:
    """A run on a stream of its own with no benchmark named trains by the stream's protocol (else Protocol())."""
    if stream is None or config.benchmark is not None or config.protocol is not None:
        return config
    return replace(config, protocol=stream.protocol or Protocol())


def build_stream(config: RunConfig, stream=None):
    """The configuration's stream (or `stream`), cut to its first `config.tasks` tasks. A builder that takes
    `n_tasks` is asked for them directly, so the unused tasks are never built."""
    if stream is None:
        config.training_protocol()  # no benchmark named and no stream given: say so
        options = dict(config.benchmark_options)
        if config.tasks and "n_tasks" in BENCHMARKS.get(config.benchmark).params and "n_tasks" not in options:
            options["n_tasks"] = config.tasks
        stream = BENCHMARKS.create(config.benchmark, **options)
    return stream.first(config.tasks) if config.tasks and config.tasks != len(stream) else stream


def overrides(config: RunConfig) -> dict:
    """What the caller set explicitly, as opposed to what the benchmark's protocol and the defaults supplied."""
    out = {k: list(v) if k == "hidden" else v for k in TRAIN_FIELDS if (v := getattr(config, k)) is not None}
    if config.model is not None:
        out["model"] = model_name(config.model)
    for key in ("hparams", "benchmark_options"):
        if getattr(config, key):
            out[key] = dict(getattr(config, key))
    if config.device != "auto":
        out["device"] = config.device
    if config.tasks:
        out["tasks"] = config.tasks
    for key in ("eval_every", "eval_subset"):
        if getattr(config, key) is not None:
            out[key] = getattr(config, key)
    return out


def check_task_free(config: RunConfig, cfg: dict, stream) -> None:
    """A task-free stream takes only strategies that need no task boundaries, seen once (epochs 1): ValueError."""
    if not stream.task_free:
        return
    check_boundaries(make_strategy(config.strategy, **cfg["hparams"]), stream, config.strategy)  # by its settings
    epochs = cfg["train"]["epochs"]
    if epochs != 1:
        raise ValueError(f"the task-free stream '{stream.name}' is seen once (online): epochs must be 1, got "
                         f"{epochs}; drop --epochs")


def model_for(config: RunConfig, train: dict, stream) -> torch.nn.Module:
    """A fresh model for the stream: the configuration's (its callable itself, when it gave one), else the resolved
    training protocol's registered or `module:factory` model."""
    return build_model(config.model if callable(config.model) else train["model"], stream.input_shape,
                       stream.head_sizes, train["hidden"], train["dropout"])


def stored_form(stream) -> dict:
    """What results.json records of the stream's stored examples, for `clframework.load(...).predict` to take them:
    their dtype and how they are decoded into model inputs."""
    first = stream.tasks[0]
    return {"stored_dtype": str(first.examples("train").raw(slice(0, 1)).dtype).replace("torch.", ""),
            "decode": decode_record(first.decode)}


def class_names(stream) -> dict:
    """results.json's `class_names` (per task, in `classes`' order) where the stream's data name its classes (an
    ImageFolder tree's folders); nothing otherwise."""
    if not any(t.class_names for t in stream.tasks):
        return {}
    return {"class_names": [list(t.class_names) if t.class_names else None for t in stream.tasks]}


def protocol_source(config: RunConfig) -> str:
    """Whose protocol supplied the training defaults: the registered benchmark's name, or "own" (RunConfig.protocol,
    e.g. a custom stream's)."""
    return "own" if config.protocol is not None else config.benchmark


def check_study(configs: Sequence[RunConfig], stream, checkpoint_every: int) -> None:
    """Before the first run of a study trains: each configuration against the stream (check_fits_stream) and each
    strategy's needs against a model built as its runs' are."""
    for cfg in configs:
        resolved = cfg.resolved()
        check_fits_stream(resolved, stream, checkpoint_every)
        check_needs(STRATEGIES.get(cfg.strategy).factory, cfg.strategy, model_for(cfg, resolved["train"], stream),
                    stream)


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_fits_stream(cfg: dict, stream, checkpoint_every: int) -> None:
    """What a resolved configuration can only be checked against once the stream is built, before any folder is
    made: the augmentation (none on permuted pixels), the memory's size (said when larger than the data) and
    checkpoint_every."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be an integer >= 0 (0: after every task only), got "
                         f"{checkpoint_every!r}")
    check_augment_fits(cfg["train"]["augment"], stream)
    for notice in run_notices(cfg, stream):
        warnings.warn(notice)


def run_notices(cfg: dict, stream) -> List[str]:
    """What a run is told before training and keeps in results.json (`notices`): a memory larger than the data, which
    is allowed (a memory holds only what it stored, so it costs no more) and stores at most the stream's examples."""
    size, total = cfg["hparams"].get("memory_size"), sum(t.n("train") for t in stream.tasks)
    if isinstance(size, int) and not isinstance(size, bool) and size > total:
        return [f"memory_size {size} is more than the stream's {total} training examples: at most {total} are ever "
                f"stored"]
    return []


def refuse_changed_data(saved: Optional[dict], now: dict, checkpoint: Path) -> None:
    """--resume on data other than the checkpoint's would mix two data sets in one matrix: refuse, naming what
    changed. A checkpoint of a version that kept no fingerprint is taken as it is."""
    changed = [] if saved is None else fingerprint_changes(saved, now)
    if changed:
        raise ValueError(f"--resume: the data changed since {checkpoint} was made ({'; '.join(changed)}); restore "
                         f"them to continue, or start the run over on the data as they are now (--overwrite)")


def data_source(stream) -> object:
    """What the stream's builder says it read; a stream built without a record says so."""
    return stream.info.get("data_source") or f"stream {stream.name!r} (its builder recorded no data source)"


@dataclass
class RunResult:
    """One run's results. `to_json()` is results.json (docs/results-schema.md); `model` and `trained_strategy` are
    the trained objects, kept in memory only (for analysis in the caller's own code; None for a finished run that
    --resume read back from its folder)."""

    status: str
    strategy: str
    benchmark: str
    seed: int
    hparams: Dict[str, object]
    config: Dict[str, object]
    tasks: List[str]
    accuracy_matrix: List[List[float]]
    initial_accuracy: List[float]
    metrics: Dict[str, float]
    average_seen: List[float]
    curves: List[dict]
    train_seconds: float
    wall_seconds: float
    provenance: Dict[str, object] = field(default_factory=dict)
    train_cpu_seconds: Optional[float] = None  # CPU time of training (None in results of older versions)
    task_il_accuracy_matrix: Optional[List[List[float]]] = None  # task-IL scores of the same outputs (evaluator.py)
    continual_eval: Optional[dict] = None  # the accuracy during training (eval_every; evaluation/continual.py)
    health: List[dict] = field(default_factory=list)  # the tasks that learned nothing (evaluation/health.py)
    losses: List[dict] = field(default_factory=list)  # training loss every k steps: {task, step, loss} (trainer.py)
    omega_correlation: Optional[Dict[str, list]] = None
    resumed_from: Optional[dict] = None
    notices: Optional[List[str]] = None  # what the run was told before training (run_notices)
    model: Optional[torch.nn.Module] = field(default=None, repr=False, compare=False)
    trained_strategy: Optional[Strategy] = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "trained_strategy")}
        return {k: v for k, v in out.items()
                if v is not None or k not in ("omega_correlation", "resumed_from", "task_il_accuracy_matrix",
                                              "continual_eval", "notices")}

    @classmethod
    def from_json(cls, data: dict) -> "RunResult":
        """A results.json read back (keys this version does not know are ignored)."""
        names = {f.name for f in fields(cls)} - {"model", "trained_strategy"}
        return cls(**{k: v for k, v in data.items() if k in names})


DEFAULT_CHECKPOINT_EVERY = 500  # optimizer steps between mid-task checkpoints (besides one after every task)
STUDY_FIGURES = Figures(runs=False)  # a study's default: its own figures, not one set per run


def identity(cfg: dict) -> dict:
    """What must match for a folder's run to be resumed or skipped: the resolved configuration minus the device
    (a run may continue on another machine; only the same device gives bit-identical numbers)."""
    return as_json({k: v for k, v in cfg.items() if k != "device"})


def as_now(saved):
    """A configuration saved by an earlier version in this version's terms: a folder from before the optimizer
    recipe's fields (or some of them, e.g. lr_milestones) existed trained by the values they default to for its
    optimizer (plain Adam or SGD, constant lr, no clipping), so its missing recipe keys read as those."""
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict) or not {"optimizer", "lr"} <= set(train) or set(RECIPE_FIELDS) <= set(train):
        return saved
    try:
        filled = Recipe.of(train).resolved().as_dict()
    except (TypeError, ValueError):
        return saved  # not a configuration this version can read: the differences are reported as they are
    return {**saved, "train": {**as_json(filled), **train}}


def run(config: RunConfig, out_dir: Optional[Path] = None, quiet: bool = False,
        callbacks: Sequence[TrainerCallback] = (), stream=None, *, resume: bool = False, overwrite: bool = False,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, label: str = "",
        figures: Figures = Figures(), threads: Optional[int] = None) -> RunResult:
    """Train one strategy on one benchmark (or on `stream`, with the benchmark's protocol; results then carry the
    stream's own name as their benchmark) and return (and, with out_dir, write) its results.

    With out_dir, the folder is prepared before training (created, proved writable, locked; a non-empty one needs
    resume or overwrite) and holds a checkpoint while the run trains; `figures` says which figures it gets (all, as
    PNG, by default). resume: a finished run with the same
    configuration is returned as saved, an interrupted one continues from its checkpoint (docs/reliability.md).
    A diverged run writes its partial results (status "diverged") and raises TrainingDiverged.
    threads: torch threads (None: clframework.parallel.default_threads, by the model's size).
    """
    config = with_stream_protocol(config, stream)
    cfg = config.resolved()
    benchmark = config.benchmark if stream is None else stream.name
    stream = build_stream(config, stream)  # data errors (missing files, bad labels) before the folder is touched
    stream.validate()
    check_subset(stream, config.eval_subset, config.evaluate_on)
    check_fits_stream(cfg, stream, checkpoint_every)
    check_task_free(config, cfg, stream)
    prepare_study(callbacks)
    if out_dir is None:
        return _run(config, cfg, None, quiet, callbacks, stream, False, checkpoint_every, label, benchmark,
                    threads=threads)
    with OutputFolder(out_dir, resume=resume, overwrite=overwrite):
        return _run(config, cfg, Path(out_dir), quiet, callbacks, stream, resume, checkpoint_every, label, benchmark,
                    figures, threads)


def _run(config: RunConfig, cfg: dict, out_dir: Optional[Path], quiet: bool, callbacks, stream, resume: bool,
         checkpoint_every: int, label: str, benchmark: Optional[str] = None,
         figures: Figures = Figures(), threads: Optional[int] = None) -> RunResult:
    started, wall_start = provenance.now(), time.perf_counter()
    label = label or f"{config.strategy} seed {config.seed}"
    benchmark = benchmark or config.benchmark
    train = cfg["train"]
    state = None
    own = False  # config.json missing or damaged beside a checkpoint: the checkpoint's own configuration stands
    if out_dir is not None and resume and ((out_dir / RESULTS).exists() or (out_dir / CHECKPOINT).exists()):
        own = not (out_dir / RESULTS).exists() and not isinstance(_json_or_none(out_dir / CONFIG), dict)
        if not own:
            check_same_config(out_dir, identity(cfg), as_now)
        if (out_dir / RESULTS).exists():  # finished (or diverged) before: nothing to train again
            saved = read_json(out_dir / RESULTS)
            if saved.get("status") == "diverged":
                raise _diverged_again(saved, label)
            return RunResult.from_json(saved)
        state = load_checkpoint(out_dir / CHECKPOINT)
        refuse_other_config(as_now(state.get("config")), identity(cfg), f"checkpoint {out_dir / CHECKPOINT} was made")
        refuse_changed_data(state.get("data"), data_fingerprint(stream), out_dir / CHECKPOINT)
    stream.validate()  # once per stream (cached): data errors before anything is written
    seed_everything(config.seed)
    model = model_for(config, train, stream)
    if out_dir is not None:
        check_free_space(out_dir, checkpoint_bytes(model))
    strategy = make_strategy(config.strategy, **cfg["hparams"])
    wandb_id = next((getattr(cb, "run_id", None) for cb in callbacks if getattr(cb, "run_id", None)), None)
    if state is not None:  # loggers continue their run (W&B: the same run id) and its counters
        progress = state["trainer"]["progress"]
        resumed = {"run_id": state.get("wandb_run_id"),
                   "epochs_trained": len(progress["curves"]) + len(state["trainer"]["task_curve"]),
                   "tasks_evaluated": 1 + len(progress["accuracy_matrix"]),  # the untrained model's row first
                   "eval_step": max((p["step"] for p in progress.get("eval_points", [])), default=-1),
                   "loss_step": max((p["step"] for p in progress.get("losses", []) + state["trainer"].get(
                       "task_losses", [])), default=-1)}
        for cb in callbacks:
            cb.on_resume(resumed)
    startup = time.perf_counter()
    for cb in callbacks:  # a logger's start-up (W&B: up to its timeout) is not part of the run's seconds
        cb.on_run_start()
    wall_start += time.perf_counter() - startup

    def save(trainer_state: dict) -> None:
        run_id = next((getattr(cb, "run_id", None) for cb in callbacks if getattr(cb, "run_id", None)), wandb_id)
        save_checkpoint(out_dir / CHECKPOINT, {"run": label, "config": identity(cfg), "wandb_run_id": run_id,
                                               "data": data_fingerprint(stream), "trainer": trainer_state})

    if out_dir is not None and (state is None or own):
        write_json(out_dir / CONFIG, identity(cfg))
    trainer = Trainer(model, strategy, epochs=train["epochs"], batch_size=train["batch_size"],
                      reset_optimizer=train["reset_optimizer"], **recipe_of(train), device=config.device,
                      seed=config.seed, quiet=quiet, callbacks=callbacks, evaluate_on=config.evaluate_on,
                      checkpoint_every=checkpoint_every if out_dir is not None else 0,
                      on_checkpoint=save if out_dir is not None else None,
                      augment=make_augment(train["augment"], stream.input_shape, seed=augment_seed(config.seed),
                                           decode=stream.tasks[0].decode),
                      precision=train.get("precision", "fp32"), compile=train.get("compile"), workers=config.workers,
                      eval_every=config.eval_every, eval_subset=config.eval_subset)
    record = provenance.collect({"function": "clframework.run", "config": config.as_record()}, overrides(config),
                                str(trainer.device), started, data_source(stream))
    head = {"status": "finished", "strategy": config.strategy, "benchmark": benchmark, "seed": config.seed,
            "hparams": cfg["hparams"],
            "config": {**train, "protocol": protocol_source(config), "setting": stream.setting,
                       "head_sizes": stream.head_sizes, "input_shape": list(stream.input_shape), **stored_form(stream),
                       "classes": [list(t.classes) for t in stream.tasks], **class_names(stream),
                       "task_heads": [t.head for t in stream.tasks],
                       "benchmark_options": cfg["benchmark_options"], "device": str(trainer.device),
                       "evaluated_on": config.evaluate_on},
            "tasks": stream.task_names, **({"notices": notices} if (notices := run_notices(cfg, stream)) else {})}
    if out_dir is not None:
        (out_dir / FAILED).unlink(missing_ok=True)  # a failed run continued with --resume trains again
    try:
        with run_threads(threads, model) as used:
            record["threads"] = used  # what it trains with (collect saw the process's share)
            result = trainer.fit(stream, resume=state["trainer"] if state is not None else None)
    except TrainingDiverged as exc:
        exc.run = label
        p = trainer._progress
        exc.result = {**head, "status": "diverged", "diverged_at": {**exc.where, "loss": str(exc.loss),
                                                                **({"in": "eval_model"} if exc.scorer else {})},
                      "error": str(exc), "accuracy_matrix": p["accuracy_matrix"],
                      "initial_accuracy": p["initial_accuracy"], "curves": p["curves"] + trainer._task_curve,
                      "health": p["health"], "losses": p["losses"] + trainer._task_losses,
                      "train_seconds": p["train_seconds"], "train_cpu_seconds": p["train_cpu_seconds"],
                      "wall_seconds": time.perf_counter() - wall_start,
                      **({"continual_eval": trainer.continual_eval()} if config.eval_every else {}),
                      "provenance": provenance.finish(record)}
        if out_dir is not None:
            write_text(out_dir / "matrix.csv", matrix_csv(exc.result))
            write_json(out_dir / RESULTS, exc.result)
        raise
    except TrainingFailed as exc:
        exc.run = label
        if out_dir is not None:  # says why this folder holds a checkpoint and no results (clframework runs)
            write_json(out_dir / FAILED, {**head, "status": "failed", "failed_at": exc.where, "error": str(exc),
                                          "provenance": provenance.finish(record)})
        raise
    R = result.accuracy_matrix
    out = RunResult(
        **head, accuracy_matrix=R, initial_accuracy=result.initial_accuracy,
        metrics={**M.summary(R, result.initial_accuracy), "task_il_acc": M.acc(result.task_il_matrix),
                 **(M.continual_summary(result.continual_eval) if result.continual_eval else {})},
        continual_eval=result.continual_eval,
        task_il_accuracy_matrix=result.task_il_matrix, health=result.health, losses=result.losses,
        average_seen=M.average_seen(R),
        curves=result.curves,
        train_seconds=result.train_seconds, train_cpu_seconds=result.train_cpu_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        provenance=provenance.finish(record), model=trainer.model, trained_strategy=strategy)
    if state is not None:
        out.resumed_from = dict(state["trainer"]["position"])
    if hasattr(strategy, "omega_history"):  # SI (and SI with c=0, i.e. fine-tuning that records omega): Fig. 5
        out.omega_correlation = M.omega_correlations(strategy.omega_history)
    if out_dir is not None:
        save_torch(out_dir / MODEL, trainer.model.state_dict())
        save_torch(out_dir / STRATEGY_STATE, {"strategy": config.strategy, "state": strategy.state_dict()})
        if hook_overridden(strategy, "eval_model"):  # its scores came from another module than model.pt's
            save_torch(out_dir / SCORER, scorer_record(trainer.scorer, stream, trainer.device))
        write_run(out.to_json(), out_dir, figures)
        (out_dir / CHECKPOINT).unlink(missing_ok=True)  # results.json, model.pt and strategy.pt hold it all now
    for cb in callbacks:
        cb.on_run_end(out.to_json(), out_dir)
    return out


def _diverged_again(saved: dict, label: str) -> TrainingDiverged:
    """The TrainingDiverged of a run that diverged before (--resume does not train it again)."""
    where = saved["diverged_at"]
    exc = TrainingDiverged({k: where[k] for k in ("task", "task_name", "epoch", "step")}, where["loss"],
                           scorer=where.get("in") == "eval_model")
    exc.run, exc.result = label, saved
    return exc


def write_run(result: dict, out_dir: Path, figures: Figures = Figures()) -> Path:
    """matrix.csv, the run's plots (if `figures.runs`), then results.json (docs/results-schema.md): results.json
    last, as its presence marks the run finished."""
    out_dir = Path(out_dir)
    write_text(out_dir / "matrix.csv", matrix_csv(result))
    if figures.runs:
        from clframework.evaluation.plots import write_run_plots  # matplotlib: only where figures are drawn

        write_run_plots(result, out_dir, figures.formats)
    return write_json(out_dir / RESULTS, result)


def slug(label: str) -> str:
    """A folder name for a label such as "SI (c=0.1)" -> "si-c-0-1"."""
    return "-".join("".join(ch if ch.isalnum() else " " for ch in label.lower()).split())


def compare(strategies: Sequence[str], benchmark: Optional[str] = None, seeds: int = 3, out_dir: Optional[Path] = None,
            quiet: bool = False, base: Optional[RunConfig] = None, hparams: Optional[Dict[str, dict]] = None,
            callbacks_for=None, *, resume: bool = False, overwrite: bool = False,
            checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, stream=None, summary_callbacks: Sequence = (),
            backend: Optional[Backend] = None, progress: Optional[StudyProgress] = None,
            checkpoint_dir: Optional[Path] = None, figures: Figures = STUDY_FIGURES, **settings) -> dict:
    """Run every (strategy, seed) pair on one benchmark (or on `stream`: with the named benchmark's protocol, else
    the stream's own; the summary then carries the stream's name); return (and write) summary.json content.

    settings: RunConfig fields shared by every run, as `run` takes them (tasks=2, epochs=1, lr=..., optimizer=...,
    model=..., benchmark_options=...); they replace those of `base`. Every configuration is checked before the
    first run starts. figures: the study's figures only, as PNG, unless asked for more
    (`Figures(runs=True, formats=("png", "svg"))`).
    """
    strategies = list(strategies)
    if not strategies:
        raise ValueError("give at least one strategy to compare (e.g. --strategies naive,si)")
    repeated = sorted({s for s in strategies if strategies.count(s) > 1})
    if repeated:
        raise ValueError(f"strategies {repeated} are listed more than once in {strategies}; list each once")
    shared = {f.name for f in fields(RunConfig)} - {"strategy", "benchmark", "hparams", "seed"}
    unknown = sorted(set(settings) - shared)
    if unknown:
        raise TypeError(f"compare() got unknown setting(s) {unknown}; it takes these RunConfig fields: "
                        f"{', '.join(sorted(shared))} (hyperparameters go in hparams={{strategy: {{...}}}})")
    base = replace(base or RunConfig(strategy=strategies[0], benchmark=benchmark), **settings)
    hparams = hparams or {}
    configs = {s: replace(base, strategy=s, benchmark=benchmark, hparams=dict(hparams.get(s, {}))) for s in strategies}
    unknown = sorted(set(hparams) - set(strategies))
    if unknown:
        raise RegistryError(f"hyperparameters given for {unknown}, which are not among the compared strategies "
                            f"{list(strategies)}")
    return compare_configs(configs, seeds, out_dir, quiet, callbacks_for, resume=resume, overwrite=overwrite,
                           checkpoint_every=checkpoint_every, stream=stream, summary_callbacks=summary_callbacks,
                           backend=backend, progress=progress, checkpoint_dir=checkpoint_dir, figures=figures)


def compare_configs(configs: Dict[str, RunConfig], seeds: int, out_dir: Optional[Path] = None, quiet: bool = False,
                    callbacks_for=None, *, resume: bool = False, overwrite: bool = False,
                    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, stream=None,
                    summary_callbacks: Sequence = (), backend: Optional[Backend] = None,
                    progress: Optional[StudyProgress] = None, checkpoint_dir: Optional[Path] = None,
                    executor: Optional[Executor] = None,
                    on_run: Optional[Callable[[str, int, dict], None]] = None,
                    figures: Figures = STUDY_FIGURES) -> dict:
    """Run each labelled configuration (all on one benchmark) for seeds 0..seeds-1 and aggregate them head to head.

    Every configuration is checked before the first run starts; the stream is built once (unless given) and shared.
    A run that diverges is recorded (summary["diverged"]) and left out of the statistics; the others go on.
    `summary_callbacks` get `on_summary(summary, out_dir)` once the summary is complete (W&B's summary run).
    backend: where the runs execute (in turn here, `--jobs`, `--ray`; parallel.py); checkpoint_dir: where each run's
    folder lives while it trains, if not in out_dir (shared storage for Ray workers on other machines); executor:
    an open executor holding this stream (reproduce shares one between arms and controls); on_run: called here
    with (label, seed, results) as each run finishes, whichever process trained it; figures: which figures are
    written (the study's, as PNG, by default).
    """
    started = provenance.now()
    if not configs:
        raise ValueError("give at least one configuration to compare")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r}")
    configs = {label: with_stream_protocol(cfg, stream) for label, cfg in configs.items()}
    for cfg in configs.values():
        cfg.resolved()
    first = next(iter(configs.values()))
    benchmark = first.benchmark
    if any(c.benchmark != benchmark or c.benchmark_options != first.benchmark_options for c in configs.values()):
        raise ValueError("a comparison runs every configuration on the same benchmark with the same options")
    if any(c.tasks != first.tasks for c in configs.values()):
        raise ValueError("a comparison runs every configuration on the same tasks")
    backend = backend or Backend()
    plugins = study_plugins(list(configs.values())) if backend.parallel else []
    label = benchmark if stream is None else stream.name
    stream = build_stream(first, stream)  # data errors before the folder is touched
    stream.validate()
    for cfg in configs.values():  # a strategy that cannot run on the stream: before the first run
        check_subset(stream, cfg.eval_subset, cfg.evaluate_on)
    check_study(list(configs.values()), stream, checkpoint_every)
    for cfg in configs.values():
        check_task_free(cfg, cfg.resolved(), stream)
    own_progress = progress is None
    progress = progress or StudyProgress("compare", quiet)
    args = (configs, seeds, quiet, callbacks_for, checkpoint_every, stream, started, summary_callbacks, label,
            backend, plugins, progress, executor, on_run, figures)
    return in_study_folders(lambda *folders: _compare(*args, *folders), out_dir, checkpoint_dir, resume, overwrite,
                            progress if own_progress else None)


class StudyFolders:
    """The study's output folder and, if elsewhere, the folder holding each run's folder while it trains; both
    locked and checked (a non-empty one needs resume or overwrite) before training. Yields (out, runs root)."""

    def __init__(self, out_dir: Path, checkpoint_dir: Optional[Path], resume: bool, overwrite: bool):
        out = Path(out_dir).absolute()
        runs_root = Path(checkpoint_dir).absolute() if checkpoint_dir is not None else out
        self.folders = [OutputFolder(f, resume=resume, overwrite=overwrite) for f in dict.fromkeys([out, runs_root])]
        self.paths = (out, runs_root)

    def __enter__(self):
        entered = []
        try:
            for folder in self.folders:
                folder.__enter__()
                entered.append(folder)
        except BaseException:
            for folder in reversed(entered):
                folder.__exit__(None, None, None)
            raise
        return self.paths

    def __exit__(self, *exc):
        for folder in reversed(self.folders):
            folder.__exit__(*exc)
        return False


def in_study_folders(body: Callable[..., dict], out_dir: Optional[Path], checkpoint_dir: Optional[Path], resume: bool,
                     overwrite: bool, own_progress: Optional[StudyProgress]) -> dict:
    """`body(out, runs_root, resume)` inside the study's folders (StudyFolders), or `body(None, None, False)` without
    an out_dir; then `own_progress`, the bar the study opened itself (None: the caller's), is closed."""
    try:
        if out_dir is None:
            return body(None, None, False)
        with StudyFolders(out_dir, checkpoint_dir, resume, overwrite) as (out, runs_root):
            return body(out, runs_root, resume)
    finally:
        if own_progress is not None:
            own_progress.close()


@dataclass
class RunJob:
    """One run of a study as a worker receives it. out_dir: the run's folder, where the worker writes its
    checkpoints and results (None: no files); benchmark: the name the results carry."""

    label: str
    config: RunConfig
    out_dir: Optional[Path] = None
    callbacks: Sequence[TrainerCallback] = ()
    quiet: bool = True
    resume: bool = False
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    benchmark: Optional[str] = None
    figures: Figures = STUDY_FIGURES
    threads: Optional[int] = None  # --threads (None: default_threads within the executor's share)


def run_job(stream, job: RunJob) -> dict:
    """A worker's side of a study: train and return results.json's content. A diverged run returns
    {"_diverged": ...}; an exception inside training {"_failed": ...} with its traceback's text (exceptions cross
    processes by pickling, and a traceback does not pickle): the study goes on with its other runs."""
    try:
        res = _run_in(job.config, job.out_dir, job.quiet, job.callbacks, stream, job.resume, job.checkpoint_every,
                      job.label, job.benchmark or job.config.benchmark, job.figures, job.threads)
    except TrainingDiverged as exc:
        return {"_diverged": {"message": str(exc), "diverged_at": exc.result["diverged_at"]}}
    except TrainingFailed as exc:
        return {"_failed": {"message": f"run {job.label}: {exc}", "failed_at": exc.where,
                            "traceback": "".join(traceback.format_exception(exc.__cause__))}}
    return res.to_json()


def study_plugins(configs: Sequence[RunConfig]) -> list:
    """The user modules that worker processes import to find the configurations' strategies and benchmarks."""
    return plugin_modules([STRATEGIES.get(c.strategy).factory for c in configs]
                          + [BENCHMARKS.get(c.benchmark).factory for c in configs if c.benchmark is not None])


def run_study(executor: Executor, jobs: Sequence[RunJob], progress: StudyProgress,
              result_dirs: Optional[Sequence[Optional[Path]]] = None,
              on_result: Optional[Callable[[int, dict], None]] = None) -> List[dict]:
    """Execute the jobs, reporting each as it finishes (and passing a finished run's results to on_result). A job
    whose folder is not `result_dirs[i]` (it trained on a checkpoint folder elsewhere, maybe on another machine)
    has its results written there by this process. The jobs' callbacks are prepared here, before any is sent to a
    worker process (W&B asks its server once for all of them)."""
    prepare_study([cb for job in jobs for cb in job.callbacks])

    def done(i: int, result: dict) -> None:
        if "_diverged" in result:
            progress.note(f"clframework: {result['_diverged']['message']}", err=True)
            progress.finished(jobs[i].label, None, 0.0)
            return
        if "_failed" in result:
            progress.note(f"{result['_failed']['traceback']}clframework: {result['_failed']['message']}", err=True)
            progress.finished(jobs[i].label, None, 0.0, "failed")
            return
        target = result_dirs[i] if result_dirs else None
        if target is not None and not (target / RESULTS).exists():
            write_run(result, target, jobs[i].figures)
        if on_result is not None:
            on_result(i, result)
        progress.finished(jobs[i].label, result["metrics"]["acc"], result["wall_seconds"])

    def lost(i: int, why: str, final: bool) -> Optional[dict]:
        """A worker died running jobs[i]: the first time it runs again from its checkpoint, the second it fails."""
        job = jobs[i]
        if not final:
            progress.note(f"clframework: run {job.label}: its worker process was {why}; it runs again from its "
                          f"checkpoint", err=True)
            return None
        checkpoint = job.out_dir / CHECKPOINT if job.out_dir is not None else None
        where = load_checkpoint(checkpoint)["trainer"]["position"] if checkpoint and checkpoint.exists() else None
        after = f" after task {where['task'] + 1} ({where['task_name']}), epoch {where['epoch']}, step " \
                f"{where['step']} (its last checkpoint)" if where else " before its first checkpoint"
        return {"_failed": {"message": f"run {job.label}: its worker process died twice, the second time {why}"
                                       f"{after}", "failed_at": where, "traceback": ""}}

    return executor.map(run_job, jobs, done, lost)


def write_plan(out_dir: Path, kind: str, benchmark: str, configs: Sequence[RunConfig], seeds: int, tasks: int,
               runs: int) -> Path:
    """study.json, before the first run: what the study will hold, so that `clframework runs` can tell a study
    stopped part-way (k of `runs` run folders finished) from a finished one."""
    epochs = sorted({c.resolved()["train"]["epochs"] for c in configs})
    return write_json(out_dir / STUDY, {"kind": kind, "benchmark": benchmark, "seeds": seeds, "tasks": tasks,
                                        "epochs": epochs, "runs": runs, "started": provenance.now()})


def _refuse_a_subset(out_dir: Path, runs_root: Path, expected: set) -> None:
    """compare --resume with fewer strategies or seeds than the study in the folder would rewrite its summary for
    the subset: refused, naming the runs it would leave out (tune and reproduce keep other folders: not checked)."""
    plan = read_json(out_dir / STUDY) if (out_dir / STUDY).exists() else {}
    if plan.get("kind", "compare") != "compare":
        return
    others = sorted(p.name for p in runs_root.iterdir() if p.is_dir() and p.name not in expected
                    and any((p / f).exists() for f in (RESULTS, CHECKPOINT, CONFIG)))
    if others:
        raise ValueError(f"compare --resume: {runs_root} also holds the runs {', '.join(others)} of this study; list "
                         f"all its strategies and seeds (the command that made it) so that its summary keeps them, "
                         f"or choose another --out")


def _compare(configs, seeds, quiet, callbacks_for, checkpoint_every, stream, started, summary_callbacks, benchmark,
             backend, plugins, progress, executor, on_run, figures, out_dir, runs_root, resume) -> dict:
    first = next(iter(configs.values()))
    summary = {"benchmark": benchmark, "protocol": protocol_source(first), "tasks": stream.task_names,
               "setting": stream.setting, "benchmark_options": first.resolved()["benchmark_options"],
               "seeds": list(range(seeds)), "strategies": {}, "diverged": [], "failed": []}
    api_call = {"function": "clframework.compare", "seeds": seeds,
                "configs": {label: cfg.as_record() for label, cfg in configs.items()}}
    record = provenance.collect(api_call, {label: overrides(cfg) for label, cfg in configs.items()},
                                str(select_device(first.device)), started, data_source(stream))
    pairs = [(name, seed) for name in configs for seed in range(seeds)]
    if resume and runs_root is not None:
        _refuse_a_subset(out_dir, runs_root, {f"{slug(name)}-seed{seed}" for name, seed in pairs})
    if out_dir is not None and not (out_dir / STUDY).exists():  # reproduce wrote its own plan
        write_plan(out_dir, "compare", benchmark, list(configs.values()), seeds, len(stream), len(pairs))
    jobs = [RunJob(f"{name} seed {seed}", replace(configs[name], seed=seed),
                   runs_root / f"{slug(name)}-seed{seed}" if runs_root is not None else None,
                   tuple(callbacks_for(name, seed)) if callbacks_for else (), quiet or backend.parallel,
                   # a run retried after its worker died finds its own checkpoint: it must continue from it
                   resume or backend.parallel, checkpoint_every, benchmark, figures, backend.threads)
            for name, seed in pairs]
    result_dirs = [out_dir / f"{slug(name)}-seed{seed}" if out_dir is not None else None for name, seed in pairs]
    progress.add(len(jobs))
    on_result = (lambda i, result: on_run(*pairs[i], result)) if on_run is not None else None
    if executor is None:
        with open_executor(backend, stream, plugins, first.device) as ex:
            results = run_study(ex, jobs, progress, result_dirs, on_result)
    else:
        results = run_study(executor, jobs, progress, result_dirs, on_result)
    all_runs = {}
    for name, cfg in configs.items():
        runs, diverged = [], []
        for (n, seed), res in zip(pairs, results):
            if n != name:
                continue
            if "_diverged" in res:
                diverged.append({"strategy": name, "seed": seed, "diverged_at": res["_diverged"]["diverged_at"]})
            elif "_failed" in res:
                summary["failed"].append({"strategy": name, "seed": seed, "failed_at": res["_failed"]["failed_at"],
                                          "error": res["_failed"]["message"]})
            else:
                runs.append(res)
        summary["diverged"] += diverged
        resolved = cfg.resolved()
        entry = {"hparams": resolved["hparams"], "train": resolved["train"],
                 "diverged_seeds": [d["seed"] for d in diverged],
                 "failed_seeds": [f["seed"] for f in summary["failed"] if f["strategy"] == name],
                 "bound": getattr(STRATEGIES.get(cfg.strategy).factory, "bound", None)}  # joint, cumulative
        if runs:
            all_runs[name] = runs
            stats = A.aggregate_runs(runs)
            entry.update({
                "acc_mean": stats["metrics"]["acc"]["mean"], "acc_sem": stats["metrics"]["acc"]["sem"],
                "seconds_per_run": sum(r["wall_seconds"] for r in runs) / len(runs),
                "cpu_seconds_per_run": A.mean_cpu_seconds(runs), **stats,
                "runs": [{k: r.get(k) for k in ("seed", "metrics", "train_seconds", "train_cpu_seconds",
                                                "wall_seconds", "accuracy_matrix", "initial_accuracy",
                                                "average_seen")} for r in runs]})
        else:  # every seed diverged: shown in the table, no statistics
            entry.update({"acc_mean": None, "acc_sem": None, "seconds_per_run": None, "cpu_seconds_per_run": None,
                          "metrics": {}, "runs": []})
        summary["strategies"][name] = entry
    summary["paired"] = A.paired_table(all_runs)  # finished runs only, on the seeds both strategies finished
    summary["table"] = A.head_to_head(summary)
    summary["provenance"] = provenance.finish(record)
    if out_dir is not None:
        write_json(out_dir / "summary.json", summary)
        write_text(out_dir / "table.md", A.table_markdown(summary))
        write_text(out_dir / "table.csv", A.table_csv(summary["table"]))
        if all_runs and figures.study:
            from clframework.evaluation.plots import write_compare_plots

            write_compare_plots(all_runs, out_dir, figures.formats)
    for cb in summary_callbacks:
        cb.on_summary(summary, out_dir)
    return summary


def _run_in(config: RunConfig, run_dir: Optional[Path], quiet: bool, callbacks, stream, resume: bool,
            checkpoint_every: int, label: str, benchmark: str, figures: Figures = Figures(),
            threads: Optional[int] = None) -> RunResult:
    """One run inside a comparison's folder (already locked and checked): its own subfolder, same resume rules."""
    cfg = config.resolved()
    if run_dir is not None and run_dir.exists() and not resume and any(run_dir.iterdir()):
        raise OutputError(f"{run_dir} is not empty; add --resume or --overwrite")
    return _run(config, cfg, run_dir, quiet, callbacks, stream, resume, checkpoint_every, label, benchmark, figures,
                threads)
