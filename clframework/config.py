"""A run's configuration: RunConfig, resolved against its benchmark's protocol and checked before any training
(the one place a configuration is validated), and what a run builds from it (its stream, its model)."""
from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from typing import Dict, List, Optional, Sequence

import torch

from clframework.benchmarks.registry import BENCHMARKS, Protocol, benchmark_protocol
from clframework.evaluation.continual import check_settings as check_eval

from .augment import check_augment, check_augment_fits
from .checkpoint import as_json
from .models import ModelSpec, build_model, model_factory, model_name
from .plugin import STRATEGIES, check_needs, make_strategy
from .recipe import RECIPE_FIELDS, Recipe
from .trainer import check_fast_step, check_model_fits, select_device


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
    tasks: Optional[int] = None  # the first N tasks of the stream only, with the full stream's class-incremental head
    model: Optional[ModelSpec] = None  # a registered model, "module:factory", or a callable (input_shape, head_sizes)
    augment: Optional[str] = None  # the training augmentation (augment.py): "none" or "crop-flip"
    precision: Optional[str] = None  # opt-in fast step: "bf16" autocast (default fp32, recorded only when set)
    compile: Optional[str] = None  # opt-in fast step: torch.compile mode of the forward pass (default: eager)
    protocol: Optional[Protocol] = None  # the defaults of the fields above, in place of the benchmark's
    workers: int = 0  # DataLoader worker processes for tasks read from disk (no effect on results)
    eval_every: Optional[int] = None  # continual evaluation: every N optimizer steps (docs/continual-evaluation.md)
    eval_subset: Optional[int] = None  # ... on N seeded examples of each task's split (None: all of it)
    small_head: bool = False  # with tasks: a class-incremental head of those tasks' classes only (a smaller model)

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
        if not isinstance(self.small_head, bool):
            raise ValueError(f"small_head must be true or false, got {self.small_head!r}")
        if self.small_head and self.tasks is None:
            raise ValueError("small_head cuts the head to the classes of the first N tasks: give tasks (--tasks N) "
                             "with it, or drop it")
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
        if self.small_head:  # the same
            out["small_head"] = True
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
    """The configuration's stream (or `stream`), cut to its first `config.tasks` tasks. A class-incremental cut keeps
    the full stream's head (an output for every class: the model of the full run; small_head: those tasks' classes
    only). A builder that takes `n_tasks` is asked for them directly, so the unused tasks are never built, unless
    its stream is class-incremental and the full head is kept, which only the full stream knows."""
    if stream is None:
        config.training_protocol()  # no benchmark named and no stream given: say so
        options = dict(config.benchmark_options)
        if config.tasks and "n_tasks" in BENCHMARKS.get(config.benchmark).params and "n_tasks" not in options:
            stream = BENCHMARKS.create(config.benchmark, **options, n_tasks=config.tasks)
            if config.small_head or not _class_incremental(stream):
                return stream
        stream = BENCHMARKS.create(config.benchmark, **options)
    if not config.tasks or config.tasks == len(stream):
        return stream
    if _class_incremental(stream) and not config.small_head:
        return stream.subset(range(config.tasks))
    return stream.first(config.tasks)


def _class_incremental(stream) -> bool:
    """A class-incremental stream with task boundaries: the one whose cut keeps the full head unless small_head (a
    task-free stream's cut keeps every output anyway, a task- or domain-incremental cut the heads its tasks use)."""
    return stream.setting == "class" and not stream.task_free


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
    if config.small_head:
        out["small_head"] = True
    for key in ("eval_every", "eval_subset"):
        if getattr(config, key) is not None:
            out[key] = getattr(config, key)
    return out


def check_task_free(cfg: dict, stream) -> None:
    """A task-free stream is seen once (epochs 1): ValueError. (Its strategies need no task boundaries: a need.)"""
    epochs = cfg["train"]["epochs"]
    if stream.task_free and epochs != 1:
        raise ValueError(f"the task-free stream '{stream.name}' is seen once (online): epochs must be 1, got "
                         f"{epochs}; drop --epochs")


def model_for(config: RunConfig, train: dict, stream) -> torch.nn.Module:
    """A fresh model for the stream: the configuration's (its callable itself, when it gave one), else the resolved
    training protocol's registered or `module:factory` model."""
    return build_model(config.model if callable(config.model) else train["model"], stream.input_shape,
                       stream.head_sizes, train["hidden"], train["dropout"])


def protocol_source(config: RunConfig) -> str:
    """Whose protocol supplied the training defaults: the registered benchmark's name, or "own" (RunConfig.protocol,
    e.g. a custom stream's)."""
    return "own" if config.protocol is not None else config.benchmark


def check_study(configs: Sequence[RunConfig], stream, checkpoint_every: int) -> None:
    """Before the first run of a study (or a lone run, before its folder is made) trains: each configuration against
    the stream (check_fits_stream, check_task_free), and a model built as its runs' are against each strategy's
    needs, by its settings, and against the stream (check_model_fits)."""
    for cfg in configs:
        resolved = cfg.resolved()
        check_fits_stream(resolved, stream, checkpoint_every)
        check_task_free(resolved, stream)
        model = model_for(cfg, resolved["train"], stream)
        unused = unused_model_options(cfg, resolved["train"])
        if unused:
            warnings.warn(unused)
        check_needs(make_strategy(cfg.strategy, **resolved["hparams"]), cfg.strategy, model, stream)
        check_model_fits(model, stream, torch.device("cpu"),
                         model_name(cfg.model if callable(cfg.model) else resolved["train"]["model"]))


def unused_model_options(config: RunConfig, train: dict) -> str:
    """A warning when --hidden or --dropout was given for a model whose factory takes neither (build_model passes
    them only to factories that do, e.g. the MLP's): the run would ignore them silently; else ''."""
    takes = inspect.signature(model_factory(config.model if config.model is not None else train["model"])).parameters
    given = [k for k in ("hidden", "dropout") if getattr(config, k) is not None and k not in takes]
    if not given:
        return ""
    flags = " and ".join(f"--{k}" for k in given)
    return f"{flags} given, but model {train['model']} takes no {' or '.join(given)}: ignored (they shape the mlp)"


def check_fits_stream(cfg: dict, stream, checkpoint_every: int) -> None:
    """What a resolved configuration can only be checked against once the stream is built, before any folder is
    made: the augmentation (none on permuted pixels), the memory's size (said when larger than the data) and
    checkpoint_every."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be an integer >= 0 (0: after every task only), got "
                         f"{checkpoint_every!r}")
    check_augment_fits(cfg["train"]["augment"], stream)
    check_drop_last(cfg["train"], stream)
    for notice in run_notices(cfg, stream):
        warnings.warn(notice)
    schedule = unreached_schedule(cfg["train"])
    if schedule:
        warnings.warn(schedule)


def check_drop_last(train: dict, stream) -> None:
    """--drop-last with a minibatch larger than a task's training data would train that task no step: refused."""
    if not train.get("drop_last"):
        return
    batch = train["batch_size"]
    for t in stream.tasks:
        if t.n("train") < batch:
            raise ValueError(f"--drop-last with batch size {batch}: task '{t.name}' has {t.n('train')} training "
                             f"examples, less than one minibatch, so it would train no step; lower --batch-size or "
                             f"drop --drop-last")


def unreached_schedule(train: dict) -> str:
    """A warning when the lr schedule decays at no epoch a task trains (epochs 0..epochs-1 of recipe.py's
    schedules): a milestone or step at or beyond --epochs (e.g. X-DER's 35,45 with --epochs 5); else ''."""
    epochs, schedule = train["epochs"], train.get("lr_schedule")
    if schedule == "multistep":
        given = list(train["lr_milestones"])
        late, flag = [m for m in given if m >= epochs], f"--lr-milestones {', '.join(map(str, given))}"
    elif schedule == "step":
        given = [train["lr_step_epochs"]]
        late, flag = [m for m in given if m >= epochs], f"--lr-step-epochs {given[0]}"
    else:
        return ""
    if not late:
        return ""
    never = ("the learning rate never decays there" if len(late) == len(given)
             else f"{', '.join(map(str, late))} never take effect")
    return (f"{flag}: a task trains {epochs} epoch{'s' if epochs != 1 else ''} (epochs 0..{epochs - 1} of the "
            f"schedule), so {never}; lower them below --epochs")


def run_notices(cfg: dict, stream) -> List[str]:
    """What a run is told before training and keeps in results.json (`notices`): a memory larger than the data, which
    is allowed (a memory holds only what it stored, so it costs no more) and stores at most the stream's examples."""
    size, total = cfg["hparams"].get("memory_size"), sum(t.n("train") for t in stream.tasks)
    if isinstance(size, int) and not isinstance(size, bool) and size > total:
        return [f"memory_size {size} is more than the stream's {total} training examples: at most {total} are ever "
                f"stored"]
    return []


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
