"""One run: train a resolved configuration on its stream, score it, and write its folder (checkpoints while it
trains, results.json and the model when it ends; --resume continues or returns it)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from clframework.benchmarks.fingerprint import changes as fingerprint_changes
from clframework.benchmarks.fingerprint import fingerprint as data_fingerprint
from clframework.benchmarks.stream import decode_record
from clframework.evaluation import metrics as M
from clframework.evaluation.continual import check_subset
from clframework.evaluation.figures import Figures
from clframework.evaluation.results import OutputError, matrix_csv, read_json, write_json, write_text

from . import provenance
from .augment import make_augment
from .callbacks import prepare_study
from .checkpoint import (CHECKPOINT, CONFIG, FAILED, MODEL, RESULTS, SCORER, STRATEGY_STATE, OutputFolder,
                         check_free_space, check_same_config, checkpoint_bytes, load_checkpoint, refuse_other_config,
                         save_checkpoint, save_torch)
from .config import (RunConfig, as_now, augment_seed, build_stream, check_study, identity, model_for, overrides,
                     protocol_source, recipe_of, run_notices, with_stream_protocol)
from .inference import scorer_record
from .parallel import run_threads
from .plugin import Strategy, make_strategy
from .plugin import overrides as hook_overridden
from .trainer import Trainer, TrainerCallback, TrainingDiverged, TrainingFailed, seed_everything


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def refuse_changed_data(saved: Optional[dict], now: dict, checkpoint: Path) -> None:
    """--resume on data other than the checkpoint's would mix two data sets in one matrix: refuse, naming what
    changed. A checkpoint of a version that kept no fingerprint is taken as it is."""
    changed = [] if saved is None else fingerprint_changes(saved, now)
    if changed:
        raise ValueError(f"--resume: the data changed since {checkpoint} was made ({'; '.join(changed)}); restore "
                         f"them to continue, or start the run over on the data as they are now (--overwrite)")


def refuse_other_model(saved: dict, model: torch.nn.Module, checkpoint: Path) -> None:
    """--resume into a model of other shapes than the checkpoint's would fail inside torch: refuse, naming the tensor
    (a class-incremental --tasks run interrupted under a version whose --tasks cut the head has the smaller one)."""
    now = model.state_dict()
    for name, tensor in saved.items():
        if name in now and tuple(tensor.shape) != tuple(now[name].shape):
            raise ValueError(f"--resume: {checkpoint} holds a model of other shapes than this configuration builds "
                             f"({name}: {list(tensor.shape)} there, {list(now[name].shape)} now; a class-incremental "
                             f"--tasks run from a version whose --tasks cut the head to those tasks' classes); start "
                             f"it over with --overwrite")


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
    check_study([config], stream, checkpoint_every)
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
    if state is not None:
        refuse_other_model(state["trainer"]["model"], model, out_dir / CHECKPOINT)
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


def run_in_study_folder(config: RunConfig, run_dir: Optional[Path], quiet: bool, callbacks, stream, resume: bool,
            checkpoint_every: int, label: str, benchmark: str, figures: Figures = Figures(),
            threads: Optional[int] = None) -> RunResult:
    """One run inside a comparison's folder (already locked and checked): its own subfolder, same resume rules."""
    cfg = config.resolved()
    if run_dir is not None and run_dir.exists() and not resume and any(run_dir.iterdir()):
        raise OutputError(f"{run_dir} is not empty; add --resume or --overwrite")
    return _run(config, cfg, run_dir, quiet, callbacks, stream, resume, checkpoint_every, label, benchmark, figures,
                threads)
