"""Subprocess for the kill -9 tests: one small run, optionally paused at a chosen moment so the test can kill it.

usage: resume_driver.py STRATEGY OUT RESUME(0|1) [PAUSE]
PAUSE: step:N (after the N-th optimizer step of this process), task:K (when task K starts, i.e. right after the
checkpoint of task K-1), fisher (inside EWC's end-of-task Fisher). On reaching it the driver creates OUT.paused and
sleeps, so the test can `kill -9` it exactly there. Prints the accuracy matrix, the epoch curves and the continual
evaluation's curve (every 3 steps) as JSON when it finishes.
"""
import json
import sys
import time
from pathlib import Path

import torch

import clframework.strategies.ewc as ewc
from clframework.benchmarks import make_benchmark
from clframework import RunConfig, run
from clframework.plugin import STRATEGIES

torch.set_num_threads(1)
strategy, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
pause = sys.argv[4] if len(sys.argv) > 4 else ""


def wait_here():
    Path(out + ".paused").write_text("")
    time.sleep(120)


cls = STRATEGIES.get(strategy).factory
if pause.startswith("step:"):
    target, seen = int(pause[5:]), [0]
    original_after = cls.on_after_step

    def on_after_step(self, model):
        original_after(self, model)
        seen[0] += 1
        if seen[0] == target:
            wait_here()

    cls.on_after_step = on_after_step
elif pause.startswith("task:"):
    task, original_start = int(pause[5:]), cls.on_task_start

    def on_task_start(self, model, task_index):
        if task_index == task:
            wait_here()
        original_start(self, model, task_index)

    cls.on_task_start = on_task_start
elif pause == "fisher":
    original_fisher = ewc.fisher_diagonal

    def fisher_diagonal(*args, **kwargs):
        wait_here()
        return original_fisher(*args, **kwargs)

    ewc.fisher_diagonal = fisher_diagonal

stream = make_benchmark("split-mnist-5k").subset([0, 1, 2])
cfg = RunConfig(strategy, "split-mnist-5k", epochs=2, hidden=[16], seed=3, device="cpu", dropout=0.25, eval_every=3,
                eval_subset=40)
res = run(cfg, Path(out) if out != "-" else None, quiet=True, stream=stream, resume=resume, checkpoint_every=5)
print(json.dumps({"matrix": res.accuracy_matrix, "curves": res.curves, "continual": res.continual_eval}))
