"""Where a `--jobs N` study's CPU goes outside its runs, in CPU seconds (time.process_time; getrusage of the reaped
workers), so that it reads the same on a busy machine: the main process's phases (the stream, the pool's start, its
own runs, the summary), each worker's start-up (its initializer) and each run's CPU against its training's.

    python scripts/study_cpu.py [--jobs 2] [--seeds 3] [--strategies naive,si,ewc,er] [--tasks N]

The grid is `bench --study`'s (split Fashion-MNIST, 1 epoch, one thread per run, no output folder). Not a timing:
no wall seconds are reported.
"""
import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace

from clframework import parallel, study

_init_worker, _run_job = parallel._init_worker, study.run_job
LOG = os.environ.get("STUDY_CPU_LOG", "")


def note(**record) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **record}) + "\n")


def timed_init(*args):
    """The pool's initializer; process_time then counts the worker's whole start (interpreter, imports, stream)."""
    _init_worker(*args)
    note(init_cpu=time.process_time())


def timed_run_job(stream, job):
    start = time.process_time()
    out = _run_job(stream, job)
    note(run=job.label, cpu=time.process_time() - start, train_cpu=out.get("train_cpu_seconds"))
    return out


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="naive,si,ewc,er")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--log", default="study-cpu.jsonl")
    args = ap.parse_args()
    LOG = os.environ["STUDY_CPU_LOG"] = os.path.abspath(args.log)  # the workers read it from their environment
    open(LOG, "w").close()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import study_cpu  # the workers unpickle these functions by this module's name, not __main__'s

    from clframework.config import RunConfig
    from clframework.parallel import Backend

    phases = {}

    def phase(name, fn):
        def wrapped(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.process_time() - t
        return wrapped

    study.build_stream = phase("build_stream", study.build_stream)
    study.open_executor = phase("open_executor (enter: start the pool)", study.open_executor)
    parallel.Pool.__init__ = phase("Pool.__init__", parallel.Pool.__init__)
    parallel.Pool.map = phase("Pool.map (own runs + waiting + on_result)", parallel.Pool.map)
    parallel.Pool.close = phase("Pool.close", parallel.Pool.close)
    parallel._init_worker = study_cpu.timed_init
    study.run_job = study_cpu.timed_run_job
    base = RunConfig(args.strategies.split(",")[0], "split-fashion-mnist", epochs=1, tasks=args.tasks, device="cpu")
    # as `bench --study` does: one task per strategy first (the data loaded, this process's one-time costs paid)
    study.compare(args.strategies.split(","), "split-fashion-mnist", 1, base=replace(base, tasks=1), quiet=True,
                  backend=Backend(jobs=1, threads=1))
    phases.clear()
    open(LOG, "w").close()
    methods = []
    if hasattr(parallel, "start_method"):  # (before it existed, workers were always spawned)
        chosen = parallel.start_method
        parallel.start_method = lambda *a: methods.append(chosen(*a)) or methods[-1]
    start = time.process_time()
    summary = study.compare(args.strategies.split(","), "split-fashion-mnist", args.seeds, base=base, quiet=True,
                            backend=Backend(jobs=args.jobs, threads=1))
    parent = time.process_time() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = [json.loads(line) for line in open(LOG)]
    me = os.getpid()
    runs = {}
    for r in records:
        if "run" in r:
            runs.setdefault("parent" if r["pid"] == me else "worker", []).append(r)
    out = {"jobs": args.jobs, "start_method": methods, "parent_cpu_in_compare": round(parent, 2),
           "parent_phases": {k: round(v, 2) for k, v in phases.items()},
           "parent_runs": len(runs.get("parent", [])),
           "parent_runs_cpu": round(sum(r["cpu"] for r in runs.get("parent", [])), 2),
           "parent_runs_train_cpu": round(sum(r["train_cpu"] for r in runs.get("parent", [])), 2),
           "worker_runs": len(runs.get("worker", [])),
           "worker_runs_cpu": round(sum(r["cpu"] for r in runs.get("worker", [])), 2),
           "worker_runs_train_cpu": round(sum(r["train_cpu"] for r in runs.get("worker", [])), 2),
           "worker_init_cpu": [round(r["init_cpu"], 2) for r in records if "init_cpu" in r],
           "reaped_children_cpu": round(children.ru_utime + children.ru_stime, 2),
           "runs_in_order": [("parent " if r["pid"] == me else "worker ") + r["run"] for r in records if "run" in r]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
