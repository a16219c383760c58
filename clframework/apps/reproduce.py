"""The runs that reproduce the papers' experiments (the experiments themselves, as data: paper.py).

Each experiment lists its benchmark per dataset, the arms it compares (label, strategy, hyperparameters, training
overrides), its number of seeds and error bars, its controls and figures, and what `--quick` scales down.
Fine-tuning arms run SI with c = 0: the same training as naive fine-tuning, but the path integral omega is recorded,
which the paper's Fig. 5 compares against SI's. `arms` picks and orders arms and controls by key, and may override an
arm's hyperparameters (`si:c=0.02`); the table, Fig. 4 and the JSON are rewritten after every run, so a long
reproduction stopped part-way keeps what it finished.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from clframework.benchmarks.registry import BENCHMARKS
from clframework.benchmarks.stream import Stream, Task
from clframework.evaluation.aggregate import mean_cpu_seconds
from clframework.evaluation.evaluator import evaluate_stream
from clframework.evaluation.plots import average_figure, final_accuracy_figure, save
from clframework.evaluation.results import write_json, write_text

from .. import provenance
from ..checkpoint import OutputFolder
from ..augment import make_augment
from ..config import RunConfig, augment_seed, model_for, recipe_of
from ..models import model_name
from ..recipe import RECIPE_FIELDS
from ..parallel import Backend, Executor, open_executor, ray_started
from ..plugin import STRATEGIES, make_strategy
from ..progress import StudyProgress
from ..runner import DEFAULT_CHECKPOINT_EVERY
from ..study import STUDY_FIGURES, compare_configs, study_plugins, write_plan
from ..trainer import Trainer, seed_everything, select_device
from .paper import (DER_ORDER, EXPERIMENTS, NOT_IN_PAPER, PAPER_SOURCE, Arm, Experiment,  # noqa: F401 (re-exported)
                    _published, check_request, der_table_arms, select_arms)


def spread(values, kind: str) -> float:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return 0.0
    sd = float(v.std(ddof=1))
    return sd / math.sqrt(len(v)) if kind == "sem" else sd


def plan(name: str, dataset: Optional[str] = None, quick: bool = False, seeds: Optional[int] = None,
         epochs: Optional[int] = None, data_root: Optional[str] = None, arms: Optional[Sequence[str]] = None,
         device: str = "auto", model=None, augment: Optional[str] = None,
         recipe: Optional[Dict[str, object]] = None, buffer: Optional[int] = None) -> dict:
    """Resolve an experiment into concrete run configurations (checked) and a list of what --quick scaled and
    what `recipe` (optimizer recipe values, RunConfig fields) changed from the paper's protocol."""
    exp, dataset, buffer = check_request(name, dataset, buffer)
    missing: List[str] = []
    if exp.arms_for is not None:
        registered = set(STRATEGIES.names())
        all_arms = exp.arms_for(dataset, buffer)
        missing = [a.strategy for a in all_arms if a.strategy not in registered]
        exp = replace(exp, arms=tuple(a for a in all_arms if a.strategy in registered))
    chosen, controls = select_arms(exp, arms)
    benchmark = exp.benchmarks[dataset]
    options: Dict[str, object] = {**exp.options, **({"data_root": data_root} if data_root else {})}
    overrides: Dict[str, object] = {}
    scaled: List[str] = []
    n_seeds = exp.seeds
    if quick:
        entry = BENCHMARKS.get(benchmark)
        protocol = entry.extra["protocol"]
        for key, value in {**exp.quick, **exp.quick_for.get(dataset, {})}.items():
            if key == "seeds":
                scaled.append(f"seeds {exp.seeds} -> {value}")
                n_seeds = value
            elif key in entry.params:  # a benchmark option, such as the number of tasks
                options[key] = value
                scaled.append(f"{key} {entry.params[key].default} -> {value}")
            elif getattr(protocol, key) != value:
                overrides[key] = value
                scaled.append(f"{key} {getattr(protocol, key)} -> {value}")
    if seeds is not None:  # an explicit --seeds / --epochs replaces what --quick chose, and is reported as such
        scaled = [s for s in scaled if not s.startswith("seeds ")]
        if seeds != exp.seeds:
            scaled.append(f"seeds {exp.seeds} -> {seeds} (--seeds)")
        n_seeds = seeds
    if epochs is not None:
        scaled = [s for s in scaled if not s.startswith("epochs ")]
        paper_epochs = BENCHMARKS.get(benchmark).extra["protocol"].epochs
        if epochs != paper_epochs:
            scaled.append(f"epochs {paper_epochs} -> {epochs} (--epochs)")
        overrides["epochs"] = epochs
    paper = BENCHMARKS.get(benchmark).extra["protocol"]
    for key, value in (("model", model), ("augment", augment)):
        if value is not None:
            overrides[key] = value
            if model_name(value) != getattr(paper, key):
                scaled.append(f"{key} {getattr(paper, key)} -> {model_name(value)} (--{key})")
    for key, value in (recipe or {}).items():
        if key not in RECIPE_FIELDS:
            raise ValueError(f"{key!r} is not part of the optimizer recipe ({', '.join(RECIPE_FIELDS)})")
        if value != getattr(paper, key):
            scaled.append(f"{key} {getattr(paper, key)} -> {value} (--{key.replace('_', '-')})")
        overrides[key] = value
    configs = {}
    known = {f.name for f in fields(RunConfig)}
    for arm in chosen:
        train = {k: v for k, v in arm.train.items() if k in known}
        scaled += [f"{arm.label}: {k} {v} not applied (no such training setting in this version)"
                   for k, v in arm.train.items() if k not in known]
        cfg = RunConfig(strategy=arm.strategy, benchmark=benchmark, hparams=dict(arm.hparams),
                        benchmark_options=dict(options), device=device, **{**train, **overrides})
        cfg.resolved()  # every error before any training
        configs[arm.label] = cfg
    return {"experiment": exp, "benchmark": benchmark, "dataset": dataset, "configs": configs, "seeds": n_seeds,
            "scaled": scaled, "benchmark_options": options, "controls": controls, "buffer": buffer,
            "published": {**{a.label: a.published for a in chosen if a.published},
                          **{c: exp.published_controls[c] for c in controls if c in exp.published_controls}}, "not_registered": missing}


def train_alone(stream: Stream, config: RunConfig, seed: int, tasks: List[Task], quiet: bool) -> List[float]:
    """A fresh network trained on `tasks` only (controls: from scratch per task, or all tasks jointly)."""
    train = config.resolved()["train"]
    seed_everything(seed)
    trainer = Trainer(model_for(config, train, stream), make_strategy("naive"), epochs=train["epochs"],
                      batch_size=train["batch_size"], **recipe_of(train),
                      reset_optimizer=True, device=config.device, seed=seed, quiet=quiet,
                      augment=make_augment(train["augment"], stream.input_shape, seed=augment_seed(seed),
                                           decode=stream.tasks[0].decode))
    for i, task in enumerate(tasks):
        trainer.train_task(task, i)
    return evaluate_stream(trainer.model, stream, trainer.device)


@dataclass(frozen=True)
class ControlJob:
    """One control run: `scratch` trains task `task` alone on a fresh network; `joint` trains all tasks at once."""

    label: str
    kind: str
    config: RunConfig
    seed: int
    task: int = 0
    quiet: bool = True


def control_job(stream: Stream, job: ControlJob) -> dict:
    """A worker's side of a control: the trained network's accuracy on every task (scratch: on its own task)."""
    start = time.perf_counter()
    if job.kind == "scratch":
        accs = [train_alone(stream, job.config, job.seed, [stream[job.task]], job.quiet)[job.task]]
    else:  # every task's data at once (one shared head)
        joint = Task("joint", torch.cat([t.examples("train").raw() for t in stream]),  # stored form, decoded per
                     torch.cat([t.train_y for t in stream]), stream[0].examples("test"), None,  # minibatch
                     stream[0].classes, 0, decode=stream[0].decode)
        accs = train_alone(stream, job.config, job.seed, [joint], job.quiet)
    return {"accuracies": accs, "seconds": time.perf_counter() - start}


def control_jobs(controls: Sequence[str], stream: Stream, config: RunConfig, seeds: int,
                 quiet: bool) -> List[ControlJob]:
    jobs = []
    if "scratch" in controls:  # each task on a fresh network, scored on that task
        jobs += [ControlJob(f"from scratch: task {t.name} seed {s}", "scratch", config, s, j, quiet)
                 for s in range(seeds) for j, t in enumerate(stream.tasks)]
    if "joint" in controls:
        jobs += [ControlJob(f"joint training seed {s}", "joint", config, s, 0, quiet) for s in range(seeds)]
    return jobs


def run_controls(executor: Executor, jobs: List[ControlJob], n_tasks: int, progress: StudyProgress) -> dict:
    def done(i: int, result: dict) -> None:
        progress.finished(jobs[i].label, float(np.mean(result["accuracies"])), result["seconds"])

    results = executor.map(control_job, jobs, done)
    out = {}
    scratch = [r["accuracies"][0] for j, r in zip(jobs, results) if j.kind == "scratch"]
    if scratch:
        per_seed = [scratch[i:i + n_tasks] for i in range(0, len(scratch), n_tasks)]
        out["scratch"] = {"per_task_mean": np.mean(per_seed, 0).tolist(), "per_seed": per_seed}
    joint = [r["accuracies"] for j, r in zip(jobs, results) if j.kind == "joint"]
    if joint:
        out["joint"] = {"acc_mean": float(np.mean([np.mean(r) for r in joint])), "per_seed": joint}
    return out


def device_name(device: str = "auto") -> str:
    """The hardware the runs used, for the record: the GPU's name, else the CPU's."""
    dev = select_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def curves_of(runs: Dict[str, List[dict]]) -> Dict[str, List[dict]]:
    """Each arm's runs' continual-evaluation curves (results.json's continual_eval), where they have one."""
    return {label: [r["continual_eval"] for r in rs if r.get("continual_eval")] for label, rs in runs.items()}


class _Progress:
    """Rewrites the table, JSON and Fig. 4 after every finished run, marked partial, so that a reproduction stopped
    part-way (a time limit, a lost machine) keeps every run it finished (each run's own folder has the rest).
    Called by compare_configs in this process as each run's results arrive (also from --jobs/--ray workers).
    log: where a line per finished run goes, or None where the study's progress view shows that line already."""

    def __init__(self, exp: Experiment, p: dict, out_dir: Path, device: str, log, figures):
        self.exp, self.p, self.out_dir, self.device, self.log, self.figures = exp, p, out_dir, device, log, figures
        self.runs: Dict[str, List[dict]] = {}

    def __call__(self, label: str, seed: int, result: dict) -> None:
        run = {k: v for k, v in result.items() if not k.startswith("_")}
        self.label = label
        self.runs.setdefault(self.label, []).append(run)
        done = sum(map(len, self.runs.values()))
        summary = summarize(self.exp, self.p, self.runs, result["tasks"], self.device, curves=curves_of(self.runs))
        summary["partial"] = f"{done} of {len(self.p['configs']) * self.p['seeds']} runs"
        write_json(self.out_dir / "reproduction.json", summary)
        write_text(self.out_dir / "reproduction.md", table(summary))
        if self.figures.study:
            save(average_figure(self.runs), self.out_dir / "fig4_average", self.figures.formats)
        if self.log is not None:
            self.log(f"[{done}/{len(self.p['configs']) * self.p['seeds']}] {self.label} seed {run['seed']}: "
                     f"ACC {run['metrics']['acc']:.4f}, {run['wall_seconds']:.1f} s")


def reproduce(name: str, out_dir: Path, dataset: Optional[str] = None, quick: bool = False,
              seeds: Optional[int] = None, epochs: Optional[int] = None, data_root: Optional[str] = None,
              quiet: bool = False, log=print, arms: Optional[Sequence[str]] = None, device: str = "auto",
              recipe: Optional[Dict[str, object]] = None, *,
              resume: bool = False, overwrite: bool = False, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
              backend: Optional[Backend] = None, progress: Optional[StudyProgress] = None,
              checkpoint_dir: Optional[Path] = None, callbacks_for=None, summary_callbacks: Sequence = (),
              figures=STUDY_FIGURES, model=None, augment: Optional[str] = None,
              buffer: Optional[int] = None) -> dict:
    """Run every arm for every seed (a head-to-head comparison), the controls, and draw the paper's figures.

    `callbacks_for(config)` gives each arm's run more callbacks (W&B loggers); `summary_callbacks` see the
    comparison's summary. model, augment: replace the protocol's (a registered model, "module:factory" or a callable).
    recipe: optimizer recipe values replacing the paper's (e.g. {"optimizer": "sgd"}), listed with what was scaled.
    buffer: the memory size of a table that reports several (der-table: 200, 500, 5120; default 500); its run also
    writes ledger.md, the table's rows for docs/ledger.md.

    resume: finished arm runs are kept and interrupted ones continue from their checkpoints; the controls (short
    from-scratch trainings) run again. backend: where the runs execute (parallel.py). figures: the paper's figures
    as PNG by default; each run's own only if asked."""
    p = plan(name, dataset, quick, seeds, epochs, data_root, arms, device, model, augment, recipe, buffer)
    exp: Experiment = p["experiment"]
    out_dir = Path(out_dir)
    own_progress = progress is None
    progress = progress or StudyProgress(f"reproduce {name}", quiet)
    backend = backend or Backend()
    try:
        with OutputFolder(out_dir, resume=resume, overwrite=overwrite), ray_started(backend):
            return _reproduce(exp, p, out_dir, quiet, log, resume, checkpoint_every, device, backend,
                              progress, checkpoint_dir, callbacks_for, summary_callbacks, figures)
    finally:
        if own_progress:
            progress.close()


def _reproduce(exp: "Experiment", p: dict, out_dir: Path, quiet: bool, log, resume: bool,
               checkpoint_every: int, device: str, backend: Backend, study: StudyProgress, checkpoint_dir,
               callbacks_for=None, summary_callbacks: Sequence = (), figures=STUDY_FIGURES) -> dict:
    hardware = device_name(device)
    log(f"reproducing {exp.name} ({exp.section}) on {p['benchmark']}, {p['seeds']} seed(s), "
        f"arms {', '.join(p['configs'])}" + (f", controls {', '.join(p['controls'])}" if p["controls"] else "")
        + f"; on {hardware}")
    if p["scaled"]:
        log("scaled from the paper's protocol: " + "; ".join(p["scaled"]))
    if p.get("not_registered"):
        log(f"not run (no such strategy registered here): {', '.join(p['not_registered'])}")
    configs = list(p["configs"].values())
    stream = BENCHMARKS.create(p["benchmark"], **p["benchmark_options"])
    controls = control_jobs(p["controls"], stream, configs[0], p["seeds"], quiet or backend.parallel)
    study.add(len(controls))  # compare_configs adds the arms' runs
    write_plan(out_dir, "reproduce", p["benchmark"], configs, p["seeds"], len(stream), len(configs) * p["seeds"])
    plugins = study_plugins(configs) if backend.parallel else []
    on_run = _Progress(exp, p, out_dir, hardware, log if study.quiet else None, figures)
    with open_executor(backend, stream, plugins, configs[0].device) as ex:
        comparison = compare_configs(p["configs"], p["seeds"], out_dir, quiet, resume=resume,
                                     checkpoint_every=checkpoint_every, backend=backend, progress=study,
                                     checkpoint_dir=checkpoint_dir, executor=ex, on_run=on_run, figures=figures,
                                     callbacks_for=((lambda label, seed: callbacks_for(replace(p["configs"][label],
                                                                                             seed=seed)))
                                                    if callbacks_for else None))
        runs = {label: s["runs"] for label, s in comparison["strategies"].items()}
        curves = curves_of(on_run.runs)
        result = summarize(exp, p, runs, comparison["tasks"], hardware, comparison.get("diverged"), curves)
        result["controls"] = run_controls(ex, controls, len(stream), study)
    result["figures"] = [str(f.relative_to(out_dir)) for f in draw_figures(exp, result, stream, out_dir, figures,
                                                                           curves)]
    write_json(out_dir / "reproduction.json", result)
    write_text(out_dir / "reproduction.md", table(result))
    if exp.ledger:
        write_text(out_dir / "ledger.md", ledger_rows(result))
    for cb in summary_callbacks:  # after every figure is drawn (Fig. 6 too): the W&B summary run shows them all
        cb.on_summary(comparison, out_dir)
    log(table(result))
    log(f"results: {out_dir}")
    return result


def task_gaps(curve: dict) -> List[dict]:
    """For every task but the last: its accuracy at the end of its training, its lowest while the next task trains
    (and how many steps after the boundary it first gets there), and at the end of the next task: the stability
    gap is the drop, then the recovery. Empty for a curve with fewer than two tasks."""
    ends = curve["boundaries"]
    gaps = []
    for j in range(len(ends) - 1):
        acc = [(pt["step"], pt["accuracy"][j]) for pt in curve["points"] if len(pt["accuracy"]) > j]
        low, low_step = min((a, s) for s, a in acc if ends[j] < s <= ends[j + 1])
        gaps.append({"task": j + 1, "at_end": [a for s, a in acc if s <= ends[j]][-1], "min_next": low,
                     "steps_to_min": low_step - ends[j], "end_next": [a for s, a in acc if s <= ends[j + 1]][-1]})
    return gaps


def summarize(exp: Experiment, p: dict, runs: Dict[str, List[dict]], tasks: List[str], device: str,
              diverged: Optional[List[dict]] = None, curves: Optional[Dict[str, List[dict]]] = None) -> dict:
    """Per arm: final average accuracy with the paper's error bars (SEM or SD over seeds), per-task final accuracy;
    with continual evaluation, min-ACC and WC-ACC likewise, and the stability gap at each boundary (`task_gaps`,
    averaged over the seeds) from `curves`, the runs' continual_eval records."""
    out = {"experiment": exp.name, "section": exp.section, "benchmark": p["benchmark"], "dataset": p["dataset"],
           "seeds": p["seeds"], "spread": exp.spread, "scaled": p["scaled"], "device": device, "arms": {},
           "diverged": diverged or [], "buffer": p.get("buffer"), "command": provenance.command()}
    if exp.ledger:
        out["joint_published"] = _published(p["dataset"], "joint", None)
    out.update({f"{c}_published": p["published"][c] for c in p["controls"] if c in p["published"]})
    if exp.published_source:
        out["published_source"] = {"source": exp.published_source,
                                   "dataset": exp.paper_dataset or next(iter(exp.benchmarks))}
    for label, arm_runs in runs.items():
        if not arm_runs:  # every seed diverged: listed in "diverged", no statistics
            continue
        finals = np.array([r["accuracy_matrix"][-1] for r in arm_runs])
        accs = [r["metrics"]["acc"] for r in arm_runs]
        out["arms"][label] = {
            "hparams": p["configs"][label].resolved()["hparams"], "acc_mean": float(np.mean(accs)),
            "acc_spread": spread(accs, exp.spread), "bwt_mean": float(np.mean([r["metrics"]["bwt"] for r in arm_runs])),
            "final_per_task_mean": finals.mean(0).tolist(),
            "final_per_task_spread": [spread(finals[:, j], exp.spread) for j in range(finals.shape[1])],
            "seconds_per_run": float(np.mean([r["wall_seconds"] for r in arm_runs])),
            "train_seconds_per_run": float(np.mean([r["train_seconds"] for r in arm_runs])),
            "cpu_seconds_per_run": mean_cpu_seconds(arm_runs),
            "published": p.get("published", {}).get(label, ""),
            "protocol": {k: v for k, v in p["configs"][label].resolved()["train"].items()},
        }
        for key in ("min_acc", "wc_acc"):
            values = [r["metrics"][key] for r in arm_runs if key in r["metrics"]]
            if values:
                out["arms"][label].update({f"{key}_mean": float(np.mean(values)),
                                           f"{key}_spread": spread(values, exp.spread)})
        per_seed = [g for c in (curves or {}).get(label, []) if (g := task_gaps(c))]
        if per_seed:
            out["arms"][label]["gaps"] = [
                {"task": seeds[0]["task"], **{k: float(np.mean([g[k] for g in seeds]))
                                              for k in ("at_end", "min_next", "steps_to_min", "end_next")},
                 "min_next_spread": spread([g["min_next"] for g in seeds], exp.spread)}
                for seeds in zip(*per_seed)]
    out["tasks"] = tasks
    return out


def table(summary: dict) -> str:
    """The reproduction's table: our result per arm and control beside the paper's (with its source)."""
    pm = summary["spread"].upper()
    source = summary.get("published_source")
    paper = (any(a.get("published") for a in summary["arms"].values()) or summary.get("joint_published")
             or summary.get("scratch_published"))
    paper_head = (" paper (source) |" if source else " paper (%, source) |") if paper else ""
    lines = [f"{summary['experiment']} on {summary['benchmark']}, {summary['seeds']} seed(s)"
             + (f" (quick: {'; '.join(summary['scaled'])})" if summary["scaled"] else "")
             + (f", on {summary['device']}" if summary.get("device") else "")
             + (f" (PARTIAL: {summary['partial']} finished)" if summary.get("partial") else ""), "",
             f"| arm | final average accuracy (mean +- {pm}) | BWT | CPU s/run | wall s/run |{paper_head}",
             "|---|---|---|---|---|" + ("---|" if paper_head else "")]
    for label, a in summary["arms"].items():
        cpu = a.get("cpu_seconds_per_run")
        lines.append(f"| {label} | {a['acc_mean']:.4f} +- {a['acc_spread']:.4f} | {a['bwt_mean']:+.4f} "
                     f"| {'-' if cpu is None else f'{cpu:.1f}'} | {a['seconds_per_run']:.1f} |"
                     + (f" {a.get('published') or '-'} |" if paper_head else ""))
    controls = summary.get("controls", {})
    if "joint" in controls:
        lines.append(f"| joint training (all tasks at once) | {controls['joint']['acc_mean']:.4f} | | | |"
                     + (f" {summary.get('joint_published') or '-'} |" if paper_head else ""))
    if "scratch" in controls:
        per = ", ".join(f"{v:.3f}" for v in controls["scratch"]["per_task_mean"])
        lines.append(f"| from scratch per task (per-task accuracy) | {per} | | | |"
                     + (f" {summary.get('scratch_published') or '-'} |" if paper_head else ""))
    continual = {label: a for label, a in summary["arms"].items() if "min_acc_mean" in a}
    if continual:
        lines += ["", f"| arm | min-ACC (mean +- {pm}) | WC-ACC (mean +- {pm}) |", "|---|---|---|"]
        lines += [f"| {label} | {a['min_acc_mean']:.4f} +- {a['min_acc_spread']:.4f} | "
                  f"{a['wc_acc_mean']:.4f} +- {a['wc_acc_spread']:.4f} |" for label, a in continual.items()]
        gapped = {label: a["gaps"] for label, a in continual.items() if a.get("gaps")}
        if gapped:
            n = max(len(g) for g in gapped.values())
            lines += ["", "The stability gap at each boundary (mean over seeds): task j's accuracy at the end of its "
                          "training -> its lowest while task j+1 trains (+- " + pm + "; steps after the boundary) -> "
                          "at the end of task j+1", "",
                      "| arm | " + " | ".join(f"task {j + 1} during task {j + 2}" for j in range(n)) + " |",
                      "|---|" + "---|" * n]
            lines += [f"| {label} | " + " | ".join(
                f"{g['at_end']:.3f} -> {g['min_next']:.3f} +- {g['min_next_spread']:.3f} ({g['steps_to_min']:.1f}) "
                f"-> {g['end_next']:.3f}" for g in gaps) + " |" for label, gaps in gapped.items()]
    if source:
        lines += ["", f"paper: {source['source']}."]
        if summary.get("dataset") != source["dataset"] or summary["scaled"]:
            lines.append(f"The paper ran on {source['dataset']} with its full protocol; this run is on "
                         f"{summary.get('dataset')}" + (", scaled down (above)" if summary["scaled"] else "")
                         + ": compare the shape of the results, not the digits.")
    return "\n".join(lines) + "\n"


def ledger_rows(summary: dict) -> str:
    """docs/ledger.md's rows for this table: protocol, method, buffer, the published number with its source, ours
    (final class-incremental accuracy in %, mean +- SEM over the seeds run, scaled settings named) and the command."""
    command = summary.get("command") or "(Python API)"
    scaled = f" [scaled: {'; '.join(summary['scaled'])}]" if summary["scaled"] else ""
    n = summary["seeds"]
    lines = ["| protocol | method | buffer | published (source) | ours: mean +- SEM (seeds) | command |",
             "|---|---|---|---|---|---|"]
    for label, a in summary["arms"].items():
        buffer = a["hparams"].get("memory_size", "-")
        ours = f"{100 * a['acc_mean']:.2f} +- {100 * a['acc_spread']:.2f} ({n}){scaled}"
        lines.append(f"| {summary['dataset']} | {label.split(' ')[0]} | {buffer} | {a.get('published') or '-'} "
                     f"| {ours} | `{command}` |")
    joint = summary.get("controls", {}).get("joint")
    if joint:
        accs = [float(np.mean(r)) for r in joint["per_seed"]]
        lines.append(f"| {summary['dataset']} | joint (bound) | - | {summary.get('joint_published') or '-'} "
                     f"| {100 * float(np.mean(accs)):.2f} +- {100 * spread(accs, 'sem'):.2f} ({len(accs)}){scaled} "
                     f"| `{command}` |")
    return "\n".join(lines) + "\n"


def continual_figure(curves: Dict[str, List[dict]], tasks: Sequence[str]):
    """De Lange et al.'s Fig. 2 layout for every task: one panel per task, its accuracy against optimizer steps from
    its training's start, one line per arm (mean over seeds, which share their steps), task boundaries dashed."""
    from matplotlib.figure import Figure

    T = len(tasks)
    fig = Figure(figsize=(3.2 * T, 3.2), layout="constrained")
    axes = fig.subplots(1, T, sharey=True, squeeze=False)[0]
    for k, (label, runs) in enumerate(curves.items()):
        if not runs:
            continue
        ends = runs[0]["boundaries"]
        for j, ax in enumerate(axes):
            steps = [pt["step"] for pt in runs[0]["points"] if len(pt["accuracy"]) > j]
            values = np.mean([[pt["accuracy"][j] for pt in r["points"] if len(pt["accuracy"]) > j] for r in runs], 0)
            ax.plot(steps, values, linewidth=1, color=f"C{k}", label=label if j == 0 else None)
            if k == 0:
                for end in ends[:-1]:
                    ax.axvline(end, color="0.6", linestyle="--", linewidth=0.8)
    for j, ax in enumerate(axes):
        ax.set_title(f"task {j + 1} ({tasks[j]})", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("test accuracy")
    fig.legend(loc="outside lower center", ncol=min(5, len(curves)), fontsize=8)
    return fig


def draw_figures(exp: Experiment, summary: dict, stream: Stream, out_dir: Path, figures=STUDY_FIGURES,
                 curves: Optional[Dict[str, List[dict]]] = None) -> List[Path]:
    """Figs. 3-5 come with the comparison (fig3_per_task, fig4_average, fig5_omega_correlation); Fig. 6 is drawn
    here, and the stability gap's Fig. 2 (every task's accuracy at every step) from the runs' curves."""
    files = [f for f in out_dir.iterdir() if f.suffix in (".png", ".svg") and f.name.startswith("fig")]
    if 2 in exp.figures and figures.study and curves and any(curves.values()):
        files += save(continual_figure(curves, stream.task_names), out_dir / "fig2_continual_accuracy",
                      figures.formats)
    if 6 in exp.figures and figures.study:
        bars = {label: {"mean": a["final_per_task_mean"], "err": a["final_per_task_spread"]}
                for label, a in summary["arms"].items()}
        if "scratch" in summary["controls"]:
            per_seed = np.array(summary["controls"]["scratch"]["per_seed"])
            bars["from scratch (single task)"] = {"mean": per_seed.mean(0).tolist(),
                                                  "err": [spread(per_seed[:, j], exp.spread)
                                                          for j in range(per_seed.shape[1])]}
        files += save(final_accuracy_figure(bars, stream.task_names, exp.spread), out_dir / "fig6_final_per_task",
                      figures.formats)
    return sorted(files)
