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

from ..checkpoint import OutputFolder
from ..experiment import DEFAULT_CHECKPOINT_EVERY, RunConfig, _run, build_stream, slug
from ..trainer import TrainingDiverged
from ..registry import RegistryError


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


def tune(base: RunConfig, grid: Dict[str, List[str]], validation: float = 0.1, seeds: int = 1,
         out_dir: Optional[Path] = None, quiet: bool = False, log=print, *, resume: bool = False,
         overwrite: bool = False, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, callbacks_for=None) -> dict:
    """With out_dir, every run keeps its own folder (`valid-<point>-seed<k>/`, `test-<point>-seed<k>/`) as it
    finishes, so an interrupted search continues with resume=True. A diverging grid point scores no validation
    accuracy and cannot be chosen (tune["diverged"] lists it). `callbacks_for(config)` gives each run its
    callbacks (W&B loggers)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if not 0 < validation < 1:
        raise ValueError(f"--validation must be a fraction in (0, 1), got {validation}")
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    configs = [replace(base, hparams={**base.hparams, **point}, evaluate_on="valid") for point in points]
    resolved = [c.resolved()["hparams"] for c in configs]  # every grid point checked before training
    stream = holdout(build_stream(base), validation, seed=0)
    stream.validate()  # data errors before the folder is touched
    if out_dir is None:
        return _tune(base, keys, configs, resolved, stream, seeds, None, quiet, log, False, checkpoint_every,
                     callbacks_for)
    with OutputFolder(out_dir, resume=resume, overwrite=overwrite):
        return _tune(base, keys, configs, resolved, stream, seeds, Path(out_dir), quiet, log, resume,
                     checkpoint_every, callbacks_for)


def _tune(base, keys, configs, resolved, stream, seeds, out_dir, quiet, log, resume, checkpoint_every,
          callbacks_for) -> dict:
    validation = stream.info["validation"]["fraction"]
    diverged = []

    def one(cfg: RunConfig, split: str, point: dict, seed: int) -> Optional[float]:
        name = slug("-".join(f"{k}-{v}" for k, v in point.items()))
        run_dir = out_dir / f"{split}-{name}-seed{seed}" if out_dir is not None else None
        try:
            res = _run(cfg, cfg.resolved(), run_dir, quiet, callbacks_for(cfg) if callbacks_for else (), stream,
                       resume, checkpoint_every, f"{base.strategy} {point} seed {seed} ({split})")
        except TrainingDiverged as exc:
            log(f"clframework: {exc}")
            diverged.append({"point": point, "seed": seed, "split": split, "diverged_at": exc.result["diverged_at"]})
            return None
        return res.metrics["acc"]

    results = []
    for cfg, hp in zip(configs, resolved):
        point = {k: hp[k] for k in keys}
        accs = [one(replace(cfg, seed=s), "valid", point, s) for s in range(seeds)]
        ok = [a for a in accs if a is not None]
        results.append({"point": point, "valid_acc_mean": float(np.mean(ok)) if len(ok) == len(accs) else None,
                        "valid_accs": accs})
        mean = results[-1]["valid_acc_mean"]
        log(f"  {point}: " + (f"validation accuracy {mean:.4f}" if mean is not None else "diverged"))
    candidates = [i for i, r in enumerate(results) if r["valid_acc_mean"] is not None]
    if not candidates:
        raise ValueError(f"every grid point diverged ({len(results)} tried); try smaller values or a lower --lr")
    best = max(candidates, key=lambda i: results[i]["valid_acc_mean"])
    chosen = replace(configs[best], evaluate_on="test")
    tests = [one(replace(chosen, seed=s), "test", results[best]["point"], s) for s in range(seeds)]
    finished = [t for t in tests if t is not None]
    out = {"strategy": base.strategy, "benchmark": base.benchmark, "validation_fraction": validation,
           "seeds": seeds, "grid": {k: [results[i]["point"][k] for i in range(len(results))] for k in keys},
           "results": results, "chosen": results[best]["point"],
           "test_acc_mean": float(np.mean(finished)) if finished else None, "test_accs": tests, "diverged": diverged}
    test_text = f"{out['test_acc_mean']:.4f}" if finished else "none (every test run diverged)"
    log(f"chosen {out['chosen']} (best validation accuracy {results[best]['valid_acc_mean']:.4f}); "
        f"its test accuracy {test_text}")
    if out_dir is not None:
        write_json(out_dir / "tune.json", out)
    return out
