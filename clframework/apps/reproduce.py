"""The paper's experiments as data (Zenke, Poole & Ganguli 2017, Sec. 5), and the runs that reproduce them.

Each experiment lists its benchmark per dataset, the arms it compares (label, strategy, hyperparameters, training
overrides), its number of seeds and error bars, its controls and figures, and what `--quick` scales down.
Fine-tuning arms run SI with c = 0: the same training as naive fine-tuning, but the path integral omega is recorded,
which the paper's Fig. 5 compares against SI's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from clframework.benchmarks.registry import BENCHMARKS
from clframework.benchmarks.stream import Stream, Task
from clframework.evaluation.evaluator import evaluate_stream
from clframework.evaluation.plots import final_accuracy_figure, save
from clframework.evaluation.results import write_json, write_text

from ..checkpoint import OutputFolder
from ..experiment import DEFAULT_CHECKPOINT_EVERY, RunConfig, compare_configs
from ..models import build_model
from ..plugin import make_strategy
from ..trainer import Trainer, seed_everything


@dataclass(frozen=True)
class Arm:
    label: str
    strategy: str
    hparams: Dict[str, object] = field(default_factory=dict)
    train: Dict[str, object] = field(default_factory=dict)  # RunConfig overrides, e.g. dropout


@dataclass(frozen=True)
class Experiment:
    name: str
    section: str
    benchmarks: Dict[str, str]  # dataset -> registered benchmark
    arms: Tuple[Arm, ...]
    seeds: int
    spread: str  # "sem" or "sd" (the paper's error bars)
    figures: Tuple[int, ...]
    controls: Tuple[str, ...] = ()
    quick: Dict[str, object] = field(default_factory=dict)  # training overrides, benchmark options, seeds


EXPERIMENTS: Dict[str, Experiment] = {
    "split-mnist": Experiment(
        "split-mnist", "Sec. 5.1, Fig. 3: 5 digit-pair tasks, multi-head, MLP 256-256, Adam reset per task",
        {"mnist": "split-mnist", "fashion-mnist": "split-fashion-mnist", "mnist-5k": "split-mnist-5k"},
        (Arm("fine-tuning (c=0)", "si", {"c": 0.0, "xi": 1e-3}),
         Arm("SI (c=1)", "si", {"c": 1.0, "xi": 1e-3}),
         Arm("EWC (exact Fisher)", "ewc")),
        seeds=10, spread="sem", figures=(3,), quick={"epochs": 2, "seeds": 3}),
    "permuted-mnist": Experiment(
        "permuted-mnist", "Sec. 5.2, Fig. 4-5: 10 permutations, one head, MLP 2000-2000, Adam kept across tasks",
        {"mnist": "permuted-mnist", "fashion-mnist": "permuted-fashion-mnist", "mnist-5k": "permuted-mnist-5k"},
        (Arm("SI (c=0.1)", "si", {"c": 0.1, "xi": 0.1}),
         Arm("EWC (exact Fisher)", "ewc"),
         Arm("SGD (c=0)", "si", {"c": 0.0, "xi": 0.1}),
         Arm("SGD w/ dropout (c=0)", "si", {"c": 0.0, "xi": 0.1}, {"dropout": 0.5})),
        seeds=3, spread="sem", figures=(4, 5), controls=("joint",),
        quick={"epochs": 2, "hidden": (256, 256), "n_tasks": 5, "seeds": 2}),
    "split-cifar": Experiment(
        "split-cifar", "Sec. 5.3, Fig. 6: CIFAR-10 then 5 CIFAR-100 blocks, multi-head CNN, Adam reset per task",
        {"cifar": "split-cifar10-100"},
        (Arm("fine-tuning (c=0)", "si", {"c": 0.0, "xi": 1e-3}),
         Arm("SI (c=0.1)", "si", {"c": 0.1, "xi": 1e-3})),
        seeds=5, spread="sd", figures=(6,), controls=("scratch",),
        quick={"epochs": 2, "cifar100_tasks": 2, "seeds": 2}),
}


def spread(values, kind: str) -> float:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return 0.0
    sd = float(v.std(ddof=1))
    return sd / math.sqrt(len(v)) if kind == "sem" else sd


def plan(name: str, dataset: Optional[str] = None, quick: bool = False, seeds: Optional[int] = None,
         epochs: Optional[int] = None, data_root: Optional[str] = None) -> dict:
    """Resolve an experiment into concrete run configurations (checked) and a list of what --quick scaled."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    dataset = dataset or next(iter(exp.benchmarks))
    if dataset not in exp.benchmarks:
        raise ValueError(f"experiment {name} runs on {', '.join(exp.benchmarks)}, not {dataset!r}")
    benchmark = exp.benchmarks[dataset]
    options: Dict[str, object] = {"data_root": data_root} if data_root else {}
    overrides: Dict[str, object] = {}
    scaled: List[str] = []
    n_seeds = exp.seeds
    if quick:
        entry = BENCHMARKS.get(benchmark)
        protocol = entry.extra["protocol"]
        for key, value in exp.quick.items():
            if key == "seeds":
                scaled.append(f"seeds {exp.seeds} -> {value}")
                n_seeds = value
            elif key in entry.params:  # a benchmark option, such as the number of tasks
                options[key] = value
                scaled.append(f"{key} {entry.params[key].default} -> {value}")
            elif getattr(protocol, key) != value:
                overrides[key] = value
                scaled.append(f"{key} {getattr(protocol, key)} -> {value}")
    if seeds is not None:
        n_seeds = seeds
    if epochs is not None:
        overrides["epochs"] = epochs
    configs = {}
    for arm in exp.arms:
        cfg = RunConfig(strategy=arm.strategy, benchmark=benchmark, hparams=dict(arm.hparams),
                        benchmark_options=dict(options), **{**overrides, **arm.train})
        cfg.resolved()  # every error before any training
        configs[arm.label] = cfg
    return {"experiment": exp, "benchmark": benchmark, "dataset": dataset, "configs": configs, "seeds": n_seeds,
            "scaled": scaled, "benchmark_options": options}


def train_alone(stream: Stream, config: RunConfig, seed: int, tasks: List[Task], quiet: bool) -> List[float]:
    """A fresh network trained on `tasks` only (controls: from scratch per task, or all tasks jointly)."""
    train = config.resolved()["train"]
    seed_everything(seed)
    model = build_model(train["model"], stream.input_shape, stream.head_sizes, train["hidden"], train["dropout"])
    trainer = Trainer(model, make_strategy("naive"), epochs=train["epochs"], batch_size=train["batch_size"],
                      lr=train["lr"], optimizer=train["optimizer"], reset_optimizer=True, device=config.device,
                      seed=seed, quiet=quiet)
    for i, task in enumerate(tasks):
        trainer.train_task(task, i)
    return evaluate_stream(trainer.model, stream, trainer.device)


def run_controls(exp: Experiment, stream: Stream, config: RunConfig, seeds: int, quiet: bool) -> dict:
    out = {}
    if "scratch" in exp.controls:  # each task on a fresh network, scored on that task
        per_seed = [[train_alone(stream, config, s, [t], quiet)[j] for j, t in enumerate(stream.tasks)]
                    for s in range(seeds)]
        out["scratch"] = {"per_task_mean": np.mean(per_seed, 0).tolist(), "per_seed": per_seed}
    if "joint" in exp.controls:  # every task's data at once (one shared head)
        joint = Task("joint", torch.cat([t.train_x for t in stream]), torch.cat([t.train_y for t in stream]),
                     stream[0].test_x, stream[0].test_y, stream[0].classes, 0)
        per_seed = [train_alone(stream, config, s, [joint], quiet) for s in range(seeds)]
        out["joint"] = {"acc_mean": float(np.mean([np.mean(r) for r in per_seed])), "per_seed": per_seed}
    return out


def reproduce(name: str, out_dir: Path, dataset: Optional[str] = None, quick: bool = False,
              seeds: Optional[int] = None, epochs: Optional[int] = None, data_root: Optional[str] = None,
              quiet: bool = False, log=print, *, resume: bool = False, overwrite: bool = False,
              checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> dict:
    """Run every arm for every seed (a head-to-head comparison), the controls, and draw the paper's figures.

    resume: finished arm runs are kept and interrupted ones continue from their checkpoints; the controls (short
    from-scratch trainings) run again."""
    p = plan(name, dataset, quick, seeds, epochs, data_root)
    exp: Experiment = p["experiment"]
    out_dir = Path(out_dir)
    with OutputFolder(out_dir, resume=resume, overwrite=overwrite):
        return _reproduce(exp, p, out_dir, quiet, log, resume, checkpoint_every)


def _reproduce(exp: "Experiment", p: dict, out_dir: Path, quiet: bool, log, resume: bool,
               checkpoint_every: int) -> dict:
    log(f"reproducing {exp.name} ({exp.section}) on {p['benchmark']}, {p['seeds']} seed(s)")
    if p["scaled"]:
        log("--quick scaled: " + "; ".join(p["scaled"]))
    comparison = compare_configs(p["configs"], p["seeds"], out_dir, quiet, resume=resume,
                                 checkpoint_every=checkpoint_every)
    stream = BENCHMARKS.create(p["benchmark"], **p["benchmark_options"])  # cached data: no second load
    result = summarize(exp, p, comparison)
    result["controls"] = run_controls(exp, stream, next(iter(p["configs"].values())), p["seeds"], quiet)
    result["figures"] = [str(f.relative_to(out_dir)) for f in draw_figures(exp, result, stream, out_dir)]
    write_json(out_dir / "reproduction.json", result)
    write_text(out_dir / "reproduction.md", table(result))
    log(table(result))
    log(f"results: {out_dir}")
    return result


def summarize(exp: Experiment, p: dict, comparison: dict) -> dict:
    """Per arm: final average accuracy with the paper's error bars (SEM or SD over seeds), per-task final accuracy."""
    out = {"experiment": exp.name, "section": exp.section, "benchmark": p["benchmark"], "dataset": p["dataset"],
           "seeds": p["seeds"], "spread": exp.spread, "scaled": p["scaled"], "arms": {},
           "diverged": comparison.get("diverged", [])}
    for label, s in comparison["strategies"].items():
        if not s["runs"]:  # every seed diverged: listed in "diverged", no statistics
            continue
        finals = np.array([r["accuracy_matrix"][-1] for r in s["runs"]])
        accs = [r["metrics"]["acc"] for r in s["runs"]]
        out["arms"][label] = {
            "hparams": s["hparams"], "acc_mean": float(np.mean(accs)), "acc_spread": spread(accs, exp.spread),
            "bwt_mean": s["metrics"]["bwt"]["mean"],
            "final_per_task_mean": finals.mean(0).tolist(),
            "final_per_task_spread": [spread(finals[:, j], exp.spread) for j in range(finals.shape[1])],
            "seconds_per_run": s["seconds_per_run"],
        }
    out["tasks"] = comparison["tasks"]
    return out


def table(summary: dict) -> str:
    pm = summary["spread"].upper()
    lines = [f"{summary['experiment']} on {summary['benchmark']}, {summary['seeds']} seed(s)"
             + (f" (quick: {'; '.join(summary['scaled'])})" if summary["scaled"] else ""), "",
             f"| arm | final average accuracy (mean +- {pm}) | BWT | s/run |", "|---|---|---|---|"]
    for label, a in summary["arms"].items():
        lines.append(f"| {label} | {a['acc_mean']:.4f} +- {a['acc_spread']:.4f} | {a['bwt_mean']:+.4f} "
                     f"| {a['seconds_per_run']:.1f} |")
    controls = summary.get("controls", {})
    if "joint" in controls:
        lines.append(f"| joint training (all tasks at once) | {controls['joint']['acc_mean']:.4f} | | |")
    if "scratch" in controls:
        per = ", ".join(f"{v:.3f}" for v in controls["scratch"]["per_task_mean"])
        lines.append(f"| from scratch per task (per-task accuracy) | {per} | | |")
    return "\n".join(lines) + "\n"


def draw_figures(exp: Experiment, summary: dict, stream: Stream, out_dir: Path) -> List[Path]:
    """Figs. 3-5 come with the comparison (fig3_per_task, fig4_average, fig5_omega_correlation); Fig. 6 is drawn here."""
    files = [f for f in out_dir.iterdir() if f.suffix in (".png", ".svg") and f.name.startswith("fig")]
    if 6 in exp.figures:
        bars = {label: {"mean": a["final_per_task_mean"], "err": a["final_per_task_spread"]}
                for label, a in summary["arms"].items()}
        if "scratch" in summary["controls"]:
            per_seed = np.array(summary["controls"]["scratch"]["per_seed"])
            bars["from scratch (single task)"] = {"mean": per_seed.mean(0).tolist(),
                                                  "err": [spread(per_seed[:, j], exp.spread)
                                                          for j in range(per_seed.shape[1])]}
        files += save(final_accuracy_figure(bars, stream.task_names, exp.spread), out_dir / "fig6_final_per_task")
    return sorted(files)
