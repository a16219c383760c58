"""GPU speed of the training step: the plain step against the opt-in fast step, in one run with a deadline.

Measures, each in the plain step (float32, eager) and in the fast one (`--precision bf16` and `--compile
reduce-overhead`, i.e. torch.compile replaying CUDA graphs):

1. the paper's full permuted arm: SI c = 0.1, xi = 0.1, MLP 784-2000-2000-10, 10 tasks x 20 epochs x 235 minibatches
   of 256 (47,000 Adam steps, the optimizer kept across tasks), on generated data of permuted MNIST's shape (the
   time of a step does not depend on the pixel values);
2. one epoch of ResNet-18 (`resnet18` of the model registry) on 50,000 generated CIFAR-shaped images, minibatch 32.

Each measurement stops when the deadline comes near; a measurement stopped part-way is marked partial and its
whole-arm time extrapolated from the steps it did. Writes OUT/gpu_speed.json and OUT/gpu_speed.md, with the GPU's
name, torch and CUDA versions.

    python scripts/gpu_speed.py OUT [--deadline SECONDS] [--modes plain,fast] [--dry-run]

--dry-run: tiny sizes on the CPU, fast = bf16 only (compiling on a CPU takes minutes); tests/test_fast_step.py runs
it so.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from clframework import Trainer, make_strategy
from clframework.benchmarks.stream import Task
from clframework.models import build_model

FULL = {"arm": {"tasks": 10, "train": 60_000, "epochs": 20, "batch": 256, "hidden": (2000, 2000)},
        "resnet": {"train": 50_000, "batch": 32}}
DRY = {"arm": {"tasks": 2, "train": 512, "epochs": 1, "batch": 64, "hidden": (64, 64)},
       "resnet": {"train": 32, "batch": 16}}
MODES = {"plain": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": "reduce-overhead"},
         "fast": {"precision": "bf16", "compile": "reduce-overhead"}}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads)"


def generated_tasks(n_tasks: int, n: int, shape, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [Task(f"t{k}", torch.rand((n, *shape), generator=gen), torch.randint(classes, (n,), generator=gen),
                 torch.rand((16, *shape), generator=gen), torch.randint(classes, (16,), generator=gen),
                 tuple(range(classes))) for k in range(n_tasks)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_tasks(trainer: Trainer, tasks, steps_per_task: int, stop_at: float) -> dict:
    """Train task after task until done or until the next task would pass `stop_at` (perf_counter); the seconds
    of each finished task, and the whole run's seconds (extrapolated per step when stopped part-way)."""
    seconds, curve = [], []
    for i, task in enumerate(tasks):
        if seconds and time.perf_counter() + max(seconds) > stop_at:
            break
        sync(trainer.device)
        start = time.perf_counter()
        curve = trainer.train_task(task, i)
        sync(trainer.device)
        seconds.append(time.perf_counter() - start)
    done = len(seconds)
    steady = seconds[1:] or seconds  # the first task includes compiling (and CUDA graph capture)
    total_steps = steps_per_task * len(tasks)
    return {"task_seconds": seconds, "tasks_done": done, "tasks": len(tasks), "partial": done < len(tasks),
            "seconds": sum(seconds) if done == len(tasks) else sum(seconds) + (len(tasks) - done) * max(steady),
            "ms_per_step_steady": 1e3 * sum(steady) / (steps_per_task * len(steady)), "steps": total_steps,
            "final_loss": curve[-1]["loss"] if curve else None}


def permuted_arm(mode: dict, sizes: dict, device: torch.device, stop_at: float) -> dict:
    tasks = generated_tasks(sizes["tasks"], sizes["train"], (784,), 10, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", (784,), [10], hidden=sizes["hidden"])
    trainer = Trainer(model, make_strategy("si", c=0.1, xi=0.1), epochs=sizes["epochs"], batch_size=sizes["batch"],
                      reset_optimizer=False, device=str(device), quiet=True, **mode)
    steps = sizes["epochs"] * -(-sizes["train"] // sizes["batch"])
    return timed_tasks(trainer, tasks, steps, stop_at)


def resnet_epoch(mode: dict, sizes: dict, device: torch.device, stop_at: float) -> dict:
    """One epoch, in two halves (so that the second half times the step without compiling)."""
    half = sizes["train"] // 2
    tasks = generated_tasks(2, half, (3, 32, 32), 10, seed=1)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), [10])
    trainer = Trainer(model, make_strategy("naive"), epochs=1, batch_size=sizes["batch"], reset_optimizer=False,
                      device=str(device), quiet=True, **mode)
    return timed_tasks(trainer, tasks, -(-half // sizes["batch"]), stop_at)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--deadline", type=float, default=480.0, help="seconds for everything (default 480)")
    p.add_argument("--modes", default=None, help=f"comma-separated of {', '.join(MODES)} (default plain,fast; "
                                                 f"--dry-run: plain,bf16)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    args = p.parse_args(argv)
    start = time.perf_counter()
    stop_at = start + args.deadline - 15  # kept for writing the files
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    modes = (args.modes or ("plain,bf16" if args.dry_run else "plain,fast")).split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    sizes = DRY if args.dry_run else FULL
    result = {"device": device_name(device), "dry_run": args.dry_run, "sizes": sizes,
              "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "python": platform.python_version(), "modes": {m: MODES[m] for m in modes}, "permuted_arm": {},
              "resnet18_epoch": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for what, measure, key in (("permuted_arm", permuted_arm, "arm"), ("resnet18_epoch", resnet_epoch, "resnet")):
        for m in modes:
            if time.perf_counter() > stop_at:
                result[what][m] = {"skipped": "deadline"}
                continue
            try:
                result[what][m] = measure(MODES[m], sizes[key], device, stop_at)
            except Exception as exc:  # noqa: BLE001 - a failing mode is recorded, the others still run
                result[what][m] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{what} {m}: {json.dumps(result[what][m])}", flush=True)
    result["seconds"] = time.perf_counter() - start
    (args.out / "gpu_speed.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_speed.md").write_text(table(result))
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = [f"on {result['device']}{' (dry run: tiny sizes)' if result['dry_run'] else ''}", "",
             "| measurement | mode | seconds | ms per step (after the first task) | tasks done | final loss |",
             "|---|---|---:|---:|---|---:|"]
    for what in ("permuted_arm", "resnet18_epoch"):
        for m, r in result[what].items():
            if "seconds" not in r:
                lines.append(f"| {what} | {m} | {r.get('error') or r.get('skipped')} | | | |")
                continue
            est = " (extrapolated)" if r["partial"] else ""
            loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
            lines.append(f"| {what} | {m} | {r['seconds']:.1f}{est} | {r['ms_per_step_steady']:.3f} | "
                         f"{r['tasks_done']}/{r['tasks']} | {loss} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
