"""A study: several labelled configurations, each for the same seeds (0..N-1, or named), run on one shared stream (in
turn, in worker processes or on Ray), each run written to its own folder, aggregated head to head into summary.json."""
from __future__ import annotations

import traceback
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from clframework.benchmarks.registry import BENCHMARKS
from clframework.evaluation import aggregate as A  # its scipy only once a summary needs it
from clframework.evaluation.continual import check_subset
from clframework.evaluation.figures import Figures
from clframework.evaluation.results import read_json, write_json, write_text

from . import provenance
from .callbacks import prepare_study
from .checkpoint import CHECKPOINT, CONFIG, RESULTS, STUDY, OutputFolder, load_checkpoint
from .config import RunConfig, build_stream, check_study, overrides, protocol_source, with_stream_protocol
from .parallel import Backend, Executor, open_executor, plugin_modules, ray_started
from .plugin import STRATEGIES
from .progress import StudyProgress
from .registry import RegistryError
from .runner import DEFAULT_CHECKPOINT_EVERY, data_source, run_in_study_folder, write_run
from .seeds import Seeds, seed_list
from .trainer import TrainerCallback, TrainingDiverged, TrainingFailed, select_device


STUDY_FIGURES = Figures(runs=False)  # a study's default: its own figures, not one set per run


def slug(label: str, keep: str = "_") -> str:
    """A folder name for a label such as "SI (c=0.1)" -> "si-c-0-1"; a strategy id keeps its underscores (er_ace)."""
    return "-".join("".join(ch if ch.isalnum() or ch in keep else " " for ch in label.lower()).split())


def run_folder(label: str, seed: int, *roots: Optional[Path]) -> str:
    """A study's run folder, `<slug(label)>-seed<k>` (`er_ace-seed0`). A study made before ids kept their
    underscores has `er-ace-seed0`: where one of `roots` holds that folder and not the new one, it is used (resumed
    and read in place)."""
    new, old = f"{slug(label)}-seed{seed}", f"{slug(label, keep='')}-seed{seed}"
    if old != new and any(r is not None and (r / old).is_dir() and not (r / new).exists() for r in roots):
        return old
    return new


def compare(strategies: Sequence[str], benchmark: Optional[str] = None, seeds: Seeds = 3,
            out_dir: Optional[Path] = None, quiet: bool = False, base: Optional[RunConfig] = None, hparams: Optional[Dict[str, dict]] = None,
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


def compare_configs(configs: Dict[str, RunConfig], seeds: Seeds, out_dir: Optional[Path] = None, quiet: bool = False,
                    callbacks_for=None, *, resume: bool = False, overwrite: bool = False,
                    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, stream=None,
                    summary_callbacks: Sequence = (), backend: Optional[Backend] = None,
                    progress: Optional[StudyProgress] = None, checkpoint_dir: Optional[Path] = None,
                    executor: Optional[Executor] = None,
                    on_run: Optional[Callable[[str, int, dict], None]] = None,
                    figures: Figures = STUDY_FIGURES) -> dict:
    """Run each labelled configuration (all on one benchmark) for each seed (seeds: a count N, 0..N-1, or the seeds
    themselves, e.g. [0, 3, 7]) and aggregate them head to head.

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
    seed_list(seeds)  # a count >= 1 or the seeds named: ValueError before anything is built
    seeds = seeds if isinstance(seeds, int) else list(seeds)
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
    with ray_started(backend):
        stream = build_stream(first, stream)  # data errors before the folder is touched
        stream.validate()
        for cfg in configs.values():  # a strategy that cannot run on the stream: before the first run
            check_subset(stream, cfg.eval_subset, cfg.evaluate_on)
        check_study(list(configs.values()), stream, checkpoint_every)
        own_progress = progress is None
        progress = progress or StudyProgress("compare", quiet)
        args = (configs, seeds, quiet, callbacks_for, checkpoint_every, stream, started, summary_callbacks, label,
                backend, plugins, progress, executor, on_run, figures)
        return in_study_folders(lambda *folders: _compare(*args, *folders), out_dir, checkpoint_dir, resume,
                                overwrite, progress if own_progress else None)


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
        res = run_in_study_folder(job.config, job.out_dir, job.quiet, job.callbacks, stream, job.resume,
                                  job.checkpoint_every, job.label, job.benchmark or job.config.benchmark, job.figures,
                                  job.threads)
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


def write_plan(out_dir: Path, kind: str, benchmark: str, configs: Sequence[RunConfig], seeds: Seeds, tasks: int,
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
               "seeds": seed_list(seeds), "strategies": {}, "diverged": [], "failed": []}
    api_call = {"function": "clframework.compare", "seeds": seeds,
                "configs": {label: cfg.as_record() for label, cfg in configs.items()}}
    record = provenance.collect(api_call, {label: overrides(cfg) for label, cfg in configs.items()},
                                str(select_device(first.device)), started, data_source(stream))
    pairs = [(name, seed) for name in configs for seed in seed_list(seeds)]
    folders = [run_folder(name, seed, out_dir, runs_root) for name, seed in pairs]
    if resume and runs_root is not None:
        _refuse_a_subset(out_dir, runs_root, set(folders))
    if out_dir is not None and not (out_dir / STUDY).exists():  # reproduce wrote its own plan
        write_plan(out_dir, "compare", benchmark, list(configs.values()), seeds, len(stream), len(pairs))
    jobs = [RunJob(f"{name} seed {seed}", replace(configs[name], seed=seed),
                   runs_root / folder if runs_root is not None else None,
                   tuple(callbacks_for(name, seed)) if callbacks_for else (), quiet or backend.parallel,
                   # a run retried after its worker died finds its own checkpoint: it must continue from it
                   resume or backend.parallel, checkpoint_every, benchmark, figures, backend.threads)
            for (name, seed), folder in zip(pairs, folders)]
    result_dirs = [out_dir / folder if out_dir is not None else None for folder in folders]
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
