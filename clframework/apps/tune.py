"""Hyperparameter search as the paper did it: pick by accuracy on a validation hold-out, report test accuracy of the
chosen value only (every grid point's test accuracy is never looked at)."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from clframework.benchmarks.registry import BENCHMARKS
from clframework.benchmarks.scenarios import holdout
from clframework.evaluation.results import write_json

from ..experiment import RunConfig, run
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
         out_dir: Optional[Path] = None, quiet: bool = False, log=print) -> dict:
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    configs = [replace(base, hparams={**base.hparams, **point}, evaluate_on="valid") for point in points]
    resolved = [c.resolved()["hparams"] for c in configs]  # every grid point checked before training
    stream = holdout(BENCHMARKS.create(base.benchmark, **base.benchmark_options), validation, seed=0)
    results = []
    for point, cfg, hp in zip(points, configs, resolved):
        accs = [run(replace(cfg, seed=s), None, quiet, stream=stream)["metrics"]["acc"] for s in range(seeds)]
        results.append({"point": {k: hp[k] for k in keys}, "valid_acc_mean": float(np.mean(accs)),
                        "valid_accs": accs})
        log(f"  {results[-1]['point']}: validation accuracy {results[-1]['valid_acc_mean']:.4f}")
    best = max(range(len(results)), key=lambda i: results[i]["valid_acc_mean"])
    chosen = replace(configs[best], evaluate_on="test")
    tests = [run(replace(chosen, seed=s), None, quiet, stream=stream)["metrics"]["acc"] for s in range(seeds)]
    out = {"strategy": base.strategy, "benchmark": base.benchmark, "validation_fraction": validation,
           "seeds": seeds, "grid": {k: [results[i]["point"][k] for i in range(len(results))] for k in keys},
           "results": results, "chosen": results[best]["point"], "test_acc_mean": float(np.mean(tests)),
           "test_accs": tests}
    log(f"chosen {out['chosen']} (best validation accuracy {results[best]['valid_acc_mean']:.4f}); "
        f"its test accuracy {out['test_acc_mean']:.4f}")
    if out_dir is not None:
        write_json(Path(out_dir) / "tune.json", out)
    return out
