"""Load-independent cost counts of a strategy on split Fashion-MNIST (MLP 784-256-256, 5 two-class heads, batch 64,
Adam): torch.profiler operations and cProfile Python calls per training step of task 4 (after 3 short tasks, so every
penalty and 3 earlier heads are active), and the operations, matrix products and Python calls of its end-of-task work
on the full task (12,000 examples). Counts, not times: the load of a shared machine does not move them.

    python scripts/step_counts.py naive lwf si ewc mas              # this checkout
    python scripts/step_counts.py lwf ewc mas --at a512baf          # the strategies' files of an older commit
    python scripts/step_counts.py agem --at a512baf                 # (A-GEM's memory.py is this checkout's)
    python scripts/step_counts.py naive agem --foreach              # the Trainer's optimizer with foreach=True
"""
import argparse
import cProfile
import pstats
import subprocess
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.benchmarks import make_benchmark
from clframework.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def strategy_at(name: str, commit: str):
    """A fresh strategy `name` built from strategies/<name>.py as it was at `commit` (not registered)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:strategies/{name}.py"], check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("@register_strategy(", "@(lambda *a, **k: (lambda c: c))(")
    src = src.replace("from .ewc import", "from clframework.strategies.ewc import")
    src = src.replace("from .memory import", "from clframework.strategies.memory import")
    module = type(sys)(f"{name}_at_{commit}")
    sys.modules[module.__name__] = module  # (dataclasses look their module up there)
    exec(compile(src, f"{commit}:strategies/{name}.py", "exec"), module.__dict__)
    return getattr(module, {"lwf": "LwF", "si": "SI", "ewc": "EWC", "mas": "MAS", "agem": "AGEM"}[name])()


def _top(event) -> str:
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event.name


def counts(name: str, commit: str, stream, full_task) -> str:
    torch.manual_seed(0)
    model = mlp(784, stream.head_sizes, hidden=(256, 256))
    strategy = strategy_at(name, commit) if commit else make_strategy(name)
    trainer = Trainer(model, strategy, epochs=1, batch_size=64, quiet=True, device="cpu", seed=0)
    for i in range(3):
        trainer.train_task(stream.tasks[i], i)
    end, steps = strategy.on_task_end, len(stream.tasks[3].train_y) // 64
    strategy.on_task_end = lambda *a: None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_task(stream.tasks[3], 3)
    ops = len(prof.events()) / steps
    optimizer = sum(_top(e).startswith("Optimizer.step") for e in prof.events()) / steps
    calls = cProfile.Profile()
    calls.runcall(trainer.train_task, stream.tasks[3], 3)
    line = (f"{name}: {ops:.1f} ops ({optimizer:.1f} in the optimizer's step) and "
            f"{pstats.Stats(calls).total_calls / steps:.1f} Python calls per step")
    if name in ("ewc", "mas"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            end(model, full_task, 3)
        events = prof.events()
        products = sum(e.name in ("aten::mm", "aten::addmm", "aten::bmm") for e in events)
        calls = cProfile.Profile()
        calls.runcall(end, model, full_task, 3)
        line += (f"; end of task ({len(full_task.train_y)} examples): {len(events)} ops, {products} matrix products, "
                 f"{pstats.Stats(calls).total_calls} Python calls")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("strategies", nargs="+")
    parser.add_argument("--at", default="", help="a commit whose strategies/<name>.py to count instead")
    parser.add_argument("--foreach", action="store_true", help="the Trainer's optimizer with foreach=True")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.foreach:
        make = Recipe.make_optimizer

        def foreach(self, params):
            optimizer = make(self, params)
            for group in optimizer.param_groups:
                group["foreach"] = True
            return optimizer

        Recipe.make_optimizer = foreach
    full = make_benchmark("split-fashion-mnist")
    stream = shrink(full, 4, 640)
    for name in args.strategies:
        print(counts(name, args.at if name != "naive" else "", stream, full.tasks[3]), flush=True)


if __name__ == "__main__":
    main()
