"""Runs and comparisons: resolve a configuration (checking everything before training), train, score, write files."""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from clframework.benchmarks.registry import BENCHMARKS, benchmark_protocol
from clframework.evaluation import aggregate as A
from clframework.evaluation import metrics as M
from clframework.evaluation.aggregate import format_console as format_table  # noqa: F401 (the CLI's compare table)
from clframework.evaluation.plots import write_compare_plots, write_run_plots
from clframework.evaluation.results import matrix_csv, write_json, write_text

from .models import build_model
from .plugin import STRATEGIES, make_strategy
from .registry import RegistryError
from .trainer import Trainer, TrainerCallback, seed_everything, select_device


@dataclass
class RunConfig:
    """One (strategy, benchmark, seed) run. Unset training fields take the benchmark's paper protocol."""

    strategy: str
    benchmark: str
    hparams: Dict[str, object] = field(default_factory=dict)
    seed: int = 0
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    hidden: Optional[Sequence[int]] = None
    dropout: Optional[float] = None
    optimizer: Optional[str] = None
    reset_optimizer: Optional[bool] = None
    device: str = "auto"
    benchmark_options: Dict[str, object] = field(default_factory=dict)
    evaluate_on: str = "test"  # "valid" scores the validation hold-out (hyperparameter search)

    def resolved(self) -> dict:
        """The full configuration, every value checked; raises RegistryError/ValueError before any training."""
        BENCHMARKS.check_hparams(self.benchmark, self.benchmark_options)
        protocol = benchmark_protocol(self.benchmark)
        entry = STRATEGIES.get(self.strategy)
        preset = {k: v for k, v in protocol.strategy_hparams.get(self.strategy, {}).items() if k in entry.params}
        hparams = STRATEGIES.check_hparams(self.strategy, {**preset, **self.hparams})
        train = protocol.as_dict()
        train.pop("strategy_hparams")
        for key in ("epochs", "batch_size", "lr", "hidden", "dropout", "optimizer", "reset_optimizer"):
            value = getattr(self, key)
            if value is not None:
                train[key] = list(value) if key == "hidden" else value
        if train["epochs"] < 1 or train["batch_size"] < 1 or train["lr"] <= 0:
            raise ValueError(f"epochs and batch size must be >= 1 and lr > 0; got epochs={train['epochs']}, "
                             f"batch_size={train['batch_size']}, lr={train['lr']}")
        if not 0 <= train["dropout"] < 1:
            raise ValueError(f"dropout must be in [0, 1), got {train['dropout']}")
        select_device(self.device)
        if self.evaluate_on not in ("test", "valid"):
            raise ValueError(f"evaluate_on must be 'test' or 'valid', got {self.evaluate_on!r}")
        return {"strategy": self.strategy, "benchmark": self.benchmark, "seed": self.seed, "hparams": hparams,
                "train": train, "benchmark_options": dict(self.benchmark_options), "device": self.device}


def versions() -> Dict[str, str]:
    import clframework

    return {"clframework": clframework.__version__, "torch": torch.__version__, "python": platform.python_version()}


def run(config: RunConfig, out_dir: Optional[Path] = None, quiet: bool = False,
        callbacks: Sequence[TrainerCallback] = (), stream=None) -> dict:
    """Train one strategy on one benchmark and return (and, with out_dir, write) its results.json content."""
    wall_start = time.perf_counter()
    cfg = config.resolved()
    train = cfg["train"]
    if stream is None:
        stream = BENCHMARKS.create(config.benchmark, **config.benchmark_options)
    seed_everything(config.seed)
    model = build_model(train["model"], stream.input_shape, stream.head_sizes, train["hidden"], train["dropout"])
    strategy = make_strategy(config.strategy, **cfg["hparams"])
    trainer = Trainer(model, strategy, epochs=train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
                      optimizer=train["optimizer"], reset_optimizer=train["reset_optimizer"], device=config.device,
                      seed=config.seed, quiet=quiet, callbacks=callbacks, evaluate_on=config.evaluate_on)
    result = trainer.fit(stream)
    R = result.accuracy_matrix
    out = {
        "strategy": config.strategy, "benchmark": config.benchmark, "seed": config.seed, "hparams": cfg["hparams"],
        "config": {**train, "setting": stream.setting, "head_sizes": stream.head_sizes,
                   "benchmark_options": cfg["benchmark_options"], "device": str(trainer.device),
                   "evaluated_on": config.evaluate_on},
        "tasks": stream.task_names, "accuracy_matrix": R, "initial_accuracy": result.initial_accuracy,
        "metrics": M.summary(R, result.initial_accuracy), "average_seen": M.average_seen(R),
        "curves": result.curves, "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - wall_start, "versions": versions(),
    }
    if hasattr(strategy, "omega_history"):  # SI (and SI with c=0, i.e. fine-tuning that records omega): Fig. 5
        out["omega_correlation"] = M.omega_correlations(strategy.omega_history)
    out["_strategy"] = strategy  # in-memory only (dropped before writing): lets callers inspect learned state
    if out_dir is not None:
        write_run(out, Path(out_dir))
    for cb in callbacks:
        cb.on_run_end(out, out_dir)
    return out


def write_run(result: dict, out_dir: Path) -> Path:
    """results.json, matrix.csv and the run's plots (docs/results-schema.md)."""
    out_dir = Path(out_dir)
    path = write_json(out_dir / "results.json", {k: v for k, v in result.items() if not k.startswith("_")})
    write_text(out_dir / "matrix.csv", matrix_csv(result))
    write_run_plots(result, out_dir)
    return path


def slug(label: str) -> str:
    """A folder name for a label such as "SI (c=0.1)" -> "si-c-0-1"."""
    return "-".join("".join(ch if ch.isalnum() else " " for ch in label.lower()).split())


def compare(strategies: Sequence[str], benchmark: str, seeds: int = 3, out_dir: Optional[Path] = None,
            quiet: bool = False, base: Optional[RunConfig] = None, hparams: Optional[Dict[str, dict]] = None,
            callbacks_for=None) -> dict:
    """Run every (strategy, seed) pair on one benchmark; return (and write) summary.json content.

    Every configuration is checked before the first run starts.
    """
    if not strategies:
        raise ValueError("give at least one strategy to compare")
    base = base or RunConfig(strategy=strategies[0], benchmark=benchmark)
    hparams = hparams or {}
    configs = {s: replace(base, strategy=s, benchmark=benchmark, hparams=dict(hparams.get(s, {}))) for s in strategies}
    unknown = sorted(set(hparams) - set(strategies))
    if unknown:
        raise RegistryError(f"hyperparameters given for {unknown}, which are not among the compared strategies "
                            f"{list(strategies)}")
    return compare_configs(configs, seeds, out_dir, quiet, callbacks_for)


def compare_configs(configs: Dict[str, RunConfig], seeds: int, out_dir: Optional[Path] = None, quiet: bool = False,
                    callbacks_for=None) -> dict:
    """Run each labelled configuration (all on one benchmark) for seeds 0..seeds-1 and aggregate them head to head.

    Every configuration is checked before the first run starts; the stream is built once and shared.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    for cfg in configs.values():
        cfg.resolved()
    first = next(iter(configs.values()))
    benchmark = first.benchmark
    if any(c.benchmark != benchmark or c.benchmark_options != first.benchmark_options for c in configs.values()):
        raise ValueError("a comparison runs every configuration on the same benchmark with the same options")
    stream = BENCHMARKS.create(benchmark, **first.benchmark_options)
    summary = {"benchmark": benchmark, "tasks": stream.task_names, "seeds": list(range(seeds)), "strategies": {}}
    all_runs = {}
    for name, cfg in configs.items():
        runs = []
        for seed in range(seeds):
            callbacks = callbacks_for(name, seed) if callbacks_for else ()
            run_dir = Path(out_dir) / f"{slug(name)}-seed{seed}" if out_dir is not None else None
            res = run(replace(cfg, seed=seed), run_dir, quiet, callbacks, stream=stream)
            runs.append({k: v for k, v in res.items() if not k.startswith("_")})
        all_runs[name] = runs
        stats = A.aggregate_runs(runs)
        summary["strategies"][name] = {
            "acc_mean": stats["metrics"]["acc"]["mean"], "acc_sem": stats["metrics"]["acc"]["sem"],
            "hparams": runs[0]["hparams"], "seconds_per_run": sum(r["wall_seconds"] for r in runs) / len(runs),
            **stats,
            "runs": [{k: r[k] for k in ("seed", "metrics", "train_seconds", "wall_seconds", "accuracy_matrix",
                                        "initial_accuracy", "average_seen")} for r in runs],
        }
    summary["paired"] = A.paired_table(all_runs)
    summary["table"] = A.head_to_head(summary)
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(out_dir / "summary.json", summary)
        write_text(out_dir / "table.md", A.table_markdown(summary))
        write_text(out_dir / "table.csv", A.table_csv(summary["table"]))
        write_compare_plots(all_runs, out_dir)
    return summary
