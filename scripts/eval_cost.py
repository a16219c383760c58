"""The added cost of continual evaluation (--eval-every): the same runs with and without it, in one process.

For each strategy (default naive, er, derpp) on split Fashion-MNIST at its protocol (MLP 256-256, 10 epochs of
minibatches of 64 per task, 5 tasks): a run without continual evaluation, one with `--eval-every 50 --eval-subset
1000`, and one with `--eval-every 1 --eval-subset 1000`, `--repeats` times in a rotating order (so that a drift of
the machine's speed spreads over the three). Reports the median seconds of each and the ratios to the run without:
`train` is the trainer's training time (its steps and the evaluations between them), `wall` the whole run (the
boundary evaluations, the end-of-task accuracy matrix and the model's construction included). Checks that each
evaluated run's accuracy matrix equals the plain run's (the evaluation must not change the training).

    python scripts/eval_cost.py [--out DIR] [--device auto] [--repeats 3] [--strategies naive,er,derpp]
                                [--every 50] [--subset 1000] [--no-every-1] [--epochs E] [--tasks N]
                                [--max-train N] [--dry-run]

--dry-run: 2 tasks of 256 training examples, 1 epoch, 1 repeat, subset 200, to check the script (its figures mean
nothing). Writes
OUT/eval_cost.json and OUT/eval_cost.md (default OUT: eval-cost/), with the device, torch version and command.
Run it on a quiet machine: the figures are timings.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from clframework.benchmarks import make_benchmark
from clframework import RunConfig, run
from clframework.trainer import select_device


def measure(strategy: str, stream, args, every, subset) -> dict:
    """One run (no folder); its training and wall seconds, its matrix and its number of evaluation points."""
    cfg = RunConfig(strategy, args.benchmark, epochs=args.epochs, tasks=args.tasks, device=args.device, seed=0,
                    eval_every=every, eval_subset=subset if every else None)
    if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()):
        torch.cuda.synchronize()
    start = time.perf_counter()
    res = run(cfg, quiet=True, stream=stream)
    seconds = time.perf_counter() - start
    points = len(res.continual_eval["points"]) if res.continual_eval else 0
    return {"train": res.train_seconds, "wall": seconds, "matrix": res.accuracy_matrix, "points": points}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("eval-cost"))
    p.add_argument("--device", default="auto")
    p.add_argument("--benchmark", default="split-fashion-mnist")
    p.add_argument("--strategies", default="naive,er,derpp")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--subset", type=int, default=1000)
    p.add_argument("--no-every-1", action="store_true", help="skip the --eval-every 1 runs")
    p.add_argument("--epochs", type=int, help="epochs per task (default: the benchmark's protocol)")
    p.add_argument("--tasks", type=int, help="the first N tasks only (default: all)")
    p.add_argument("--max-train", type=int, help="a seeded sample of N training examples per task (default: all)")
    p.add_argument("--dry-run", action="store_true", help="tiny settings: checks the script, figures mean nothing")
    args = p.parse_args(argv)
    if args.dry_run:
        args.tasks, args.epochs, args.repeats, args.subset, args.max_train = 2, 1, 1, 200, 256
    stream = make_benchmark(args.benchmark)
    if args.tasks:
        stream = stream.first(args.tasks)
    if args.max_train:
        gen = torch.Generator().manual_seed(0)
        stream.tasks = [t.with_splits(train=t.examples("train").take(
            torch.randperm(t.n("train"), generator=gen)[:args.max_train])) for t in stream.tasks]
    modes = {"off": None, f"every_{args.every}": args.every}
    if not args.no_every_1:
        modes["every_1"] = 1
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:  # every setting checked before the first timing
        RunConfig(s, args.benchmark, eval_every=1, eval_subset=args.subset).resolved()
    measure(strategies[0], stream, args, None, None)  # warm-up (imports, allocator, first kernels): not timed
    rows = {}
    for s in strategies:
        times = {m: [] for m in modes}
        same = True
        points = {}
        for r in range(args.repeats):
            names = list(modes)
            for m in names[r % len(names):] + names[:r % len(names)]:
                got = measure(s, stream, args, modes[m], args.subset)
                times[m].append(got)
                points[m] = got["points"]
            base = times["off"][-1]["matrix"]
            same = same and all(times[m][-1]["matrix"] == base for m in modes)
        med = {m: {k: statistics.median(t[k] for t in times[m]) for k in ("train", "wall")} for m in modes}
        rows[s] = {"seconds": med, "points": points, "same_matrix": same,
                   "ratio": {m: {k: med[m][k] / med["off"][k] for k in ("train", "wall")} for m in modes if m != "off"},
                   "runs": {m: [{k: t[k] for k in ("train", "wall")} for t in times[m]] for m in modes}}
        print(f"{s}: " + ", ".join(f"{m} {med[m]['wall']:.1f} s" for m in modes), file=sys.stderr)
    device = select_device(args.device)
    record = {"command": " ".join(["python", "scripts/eval_cost.py"] + (argv if argv is not None else sys.argv[1:])),
              "benchmark": args.benchmark, "tasks": len(stream), "epochs": args.epochs or "protocol",
              "max_train": args.max_train,
              "every": args.every, "subset": args.subset, "repeats": args.repeats, "dry_run": args.dry_run,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "strategies": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Cost of continual evaluation on {args.benchmark} ({record['device']}, torch {torch.__version__})", "",
             f"`{record['command']}`; median of {args.repeats} repeat(s); ratio: seconds with / without", "",
             "| strategy | mode | points | train s | wall s | train ratio | wall ratio | same matrix |",
             "|---|---|---|---|---|---|---|---|"]
    for s, row in rows.items():
        for m in modes:
            sec, ratio = row["seconds"][m], row["ratio"].get(m)
            rt = f"{ratio['train']:.3f} | {ratio['wall']:.3f}" if ratio else "- | -"
            lines.append(f"| {s} | {m} | {row['points'].get(m, 0)} | {sec['train']:.2f} | {sec['wall']:.2f} | {rt} | "
                         f"{'yes' if row['same_matrix'] else 'NO'} |")
    (args.out / "eval_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["same_matrix"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
