"""Hyperparameter search as the paper did it: pick by accuracy on a validation hold-out, report test accuracy of the
chosen value only (every grid point's test accuracy is never looked at)."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from clframework.benchmarks.scenarios import holdout
from clframework.evaluation.results import write_json

from ..config import RunConfig, build_stream, check_study, with_stream_protocol
from ..parallel import Backend, open_executor, ray_started
from ..progress import StudyProgress
from ..registry import RegistryError
from ..runner import DEFAULT_CHECKPOINT_EVERY
from ..seeds import Seeds, seed_list
from ..study import STUDY_FIGURES, RunJob, in_study_folders, run_folder, run_study, study_plugins, write_plan


def parse_grid(items: Sequence[str]) -> Dict[str, List[str]]:
    """`["c=0.01,0.1", "xi=0.1"]` -> {"c": ["0.01", "0.1"], "xi": ["0.1"]}."""
    grid: Dict[str, List[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise RegistryError(f"--grid expects KEY=V1,V2,... (for example c=0.001,0.01,0.1,1), got {item!r}")
        grid[key.strip()] = vals
    if not grid:
        raise RegistryError("give at least one --grid KEY=V1,V2,...")
    return grid


def tune(base: RunConfig, grid: Dict[str, List[str]], validation: float = 0.1, seeds: Seeds = 1,
         out_dir: Optional[Path] = None, quiet: bool = False, log=print, *, resume: bool = False,
         overwrite: bool = False, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, backend: Optional[Backend] = None,
         progress: Optional[StudyProgress] = None, checkpoint_dir: Optional[Path] = None, callbacks_for=None,
         figures=STUDY_FIGURES, stream=None) -> dict:
    """With out_dir, every run keeps its own folder (`valid-<point>-seed<k>/`, `test-<point>-seed<k>/`) as it
    finishes, so an interrupted search continues with resume=True. A diverging grid point scores no validation
    accuracy and cannot be chosen (tune["diverged"] lists it). `callbacks_for(config)` gives each run its
    callbacks (W&B loggers). backend: where the runs execute (parallel.py). figures: a search has no study figures;
    each run's own are written only if asked (`Figures(runs=True)`). stream: a stream of your own (trained by the
    base's benchmark protocol if it names one, else by the stream's own). seeds: per grid point, a count N (0..N-1)
    or the seeds themselves."""
    seed_list(seeds)  # a count >= 1 or the seeds named: ValueError now
    seeds = seeds if isinstance(seeds, int) else list(seeds)
    if not 0 < validation < 1:
        raise ValueError(f"--validation must be a fraction in (0, 1), got {validation}")
    base = with_stream_protocol(base, stream)
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    configs = [replace(base, hparams={**base.hparams, **point}, evaluate_on="valid") for point in points]
    resolved = [c.resolved()["hparams"] for c in configs]  # every grid point checked before training
    backend = backend or Backend()
    with ray_started(backend):
        stream = holdout(build_stream(base, stream), validation, seed=0)
        stream.validate()  # data errors before the folder is touched
        check_study(configs, stream, checkpoint_every)
        plugins = study_plugins(configs) if backend.parallel else []
        own_progress = progress is None
        progress = progress or StudyProgress(f"tune {base.strategy}", quiet)
        args = (base, keys, configs, resolved, stream, seeds, quiet, log, checkpoint_every, backend, plugins,
                progress, callbacks_for, figures)
        return in_study_folders(lambda *folders: _tune(*args, *folders), out_dir, checkpoint_dir, resume, overwrite,
                                progress if own_progress else None)


def _tune(base, keys, configs, resolved, stream, seeds, quiet, log, checkpoint_every, backend, plugins, progress,
          callbacks_for, figures, out_dir, runs_root, resume) -> dict:
    validation = stream.info["validation"]["fraction"]
    diverged, named = [], seed_list(seeds)
    n = len(named)

    def jobs(split: str, cfg: RunConfig, point: dict):
        """The seeds of one grid point on one split, with their folders in the runs root and in out_dir."""
        label = "-".join([split] + [f"{k}-{v}" for k, v in point.items()])
        folder = [run_folder(label, s, out_dir, runs_root) for s in named]
        return ([RunJob(f"{base.strategy} {point} seed {s} ({split})", replace(cfg, seed=s),
                        runs_root / f if runs_root is not None else None,
                        tuple(callbacks_for(replace(cfg, seed=s))) if callbacks_for else (), quiet or backend.parallel,
                        resume or backend.parallel, checkpoint_every, figures=figures, threads=backend.threads)
                 for s, f in zip(named, folder)],
                [out_dir / f if out_dir is not None else None for f in folder])

    def accuracies(split: str, point: dict, results: List[dict]) -> List[Optional[float]]:
        for seed, res in zip(named, results):
            if "_diverged" in res:
                diverged.append({"point": point, "seed": seed, "split": split,
                                 "diverged_at": res["_diverged"]["diverged_at"]})
        return [None if "_diverged" in res else res["metrics"]["acc"] for res in results]

    points = [{k: hp[k] for k in keys} for hp in resolved]
    valid = [jobs("valid", cfg, point) for cfg, point in zip(configs, points)]
    progress.add(len(points) * n + n)  # the chosen value's test runs included
    if out_dir is not None:
        write_plan(out_dir, "tune", base.benchmark or stream.name, configs, seeds, len(stream), len(points) * n + n)
    with open_executor(backend, stream, plugins, base.device) as ex:
        done = run_study(ex, [j for js, _ in valid for j in js], progress, [d for _, ds in valid for d in ds])
        results = []
        for i, point in enumerate(points):
            accs = accuracies("valid", point, done[i * n:(i + 1) * n])
            ok = [a for a in accs if a is not None]
            results.append({"point": point, "valid_acc_mean": float(np.mean(ok)) if len(ok) == len(accs) else None,
                            "valid_accs": accs})
            mean = results[-1]["valid_acc_mean"]
            log(f"  {point}: " + (f"validation accuracy {mean:.4f}" if mean is not None else "diverged"))
        candidates = [i for i, r in enumerate(results) if r["valid_acc_mean"] is not None]
        if not candidates:
            raise ValueError(f"every grid point diverged ({len(results)} tried); try smaller values or a lower --lr")
        best = max(candidates, key=lambda i: results[i]["valid_acc_mean"])
        test_jobs, test_dirs = jobs("test", replace(configs[best], evaluate_on="test"), points[best])
        tests = accuracies("test", points[best], run_study(ex, test_jobs, progress, test_dirs))
    finished = [t for t in tests if t is not None]
    out = {"strategy": base.strategy, "benchmark": base.benchmark or stream.name, "validation_fraction": validation,
           "seeds": seeds, "grid": {k: [results[i]["point"][k] for i in range(len(results))] for k in keys},
           "results": results, "chosen": results[best]["point"],
           "test_acc_mean": float(np.mean(finished)) if finished else None, "test_accs": tests, "diverged": diverged}
    test_text = f"{out['test_acc_mean']:.4f}" if finished else "none (every test run diverged)"
    log(f"chosen {out['chosen']} (best validation accuracy {results[best]['valid_acc_mean']:.4f}); "
        f"its test accuracy {test_text}")
    if out_dir is not None:
        write_json(out_dir / "tune.json", out)
    return out
