"""Where a study's runs execute: one after another in this process, in a pool of local worker processes
(`--jobs N`), or as Ray tasks on a local instance or a cluster (`--ray [ADDRESS]`).

A run is a picklable payload handed, with the study's shared stream, to a module-level function. `--jobs N` is this
process and N - 1 workers (see Pool). The stream is prepared once: forked workers share this process's pages of it,
spawned ones memory-map one file of it (so N workers do not hold N copies) and Ray tasks read one object from Ray's
store. Each worker uses `threads` torch threads, so a run's results equal those
of the same run alone in one process with that thread count.

torch is imported where a run needs it, not at import: `--jobs`, `--threads` and `--ray` are checked before it loads
(a command's argument errors answer at once).
"""
from __future__ import annotations

import importlib
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

RAY_LOCAL = "local"  # `--ray` with no address: start a local Ray instance


def cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a Slurm allocation), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_jobs(value) -> int:
    """`--jobs`: a positive integer, or `auto` = one job per two cores (at least 1)."""
    if str(value).strip().lower() == "auto":
        return max(1, cores() // 2)
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1 or str(jobs) != str(value).strip():
        raise ValueError(f"--jobs expects a positive integer or 'auto', got {value!r}")
    return jobs


# The default torch threads of a run when --threads is not given: the one place the rule lives (README, "Speed";
# docs/performance.md has the measurement command). A run gets at most its share of the cores (all of them alone,
# one each with --jobs N on N cores, one per Ray task); within that share, a model under MANY_THREADS_FROM weights
# trains on one thread: its matrix products are too small for a second thread to gain much, and an OpenMP thread
# waiting for a core that other work holds spins (issue 29: a small DER++ run took 22 s on one thread, 370 s on
# two, on a loaded machine).
MANY_THREADS_FROM = 2_000_000


def default_threads(parameters: int, share: int) -> int:
    """Torch threads for a run of a model with `parameters` weights that may use `share` cores."""
    return max(1, share) if parameters >= MANY_THREADS_FROM else 1


@contextmanager
def run_threads(threads: Optional[int], model):
    """Train with `threads` torch threads (--threads), else default_threads for this model within the share this
    process was given (the executor's threads per run; a process of its own: its cores)."""
    if threads is None:
        import torch

        share = min(torch.get_num_threads(), cores())
        threads = default_threads(sum(p.numel() for p in model.parameters()), share)
    with _threads(threads):
        yield threads


@dataclass(frozen=True)
class Backend:
    """How to execute a study. threads: torch threads per run (--threads; default: the run's share of the cores,
    one thread for a small model: default_threads);
    ray: None (no Ray), RAY_LOCAL, or a cluster address such as `auto` or `10.0.0.1:6379`; gpus_per_run: the GPU
    share each Ray task asks for (None: 1 where the cluster has GPUs and the device is not the CPU)."""

    jobs: int = 1
    threads: Optional[int] = None
    ray: Optional[str] = None
    gpus_per_run: Optional[float] = None

    def __post_init__(self):
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads per run must be >= 1, got {self.threads}")
        if self.ray is not None and self.jobs != 1:
            raise ValueError("give either --jobs or --ray, not both (Ray schedules the runs on its own workers)")
        if self.jobs > 1:
            chosen_start_method()

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or self.ray is not None

    def threads_per_run(self) -> int:
        """A run's share of the cores: --threads, else for Ray 1 (Ray packs tasks by CPU), else the cores divided
        among the jobs (within it, default_threads chooses by the model's size)."""
        if self.threads:
            return self.threads
        return 1 if self.ray is not None else max(1, cores() // self.jobs)


def plugin_modules(factories: Iterable[Callable]) -> List[Tuple[str, Optional[str]]]:
    """(module name, file) of each non-built-in factory, for worker processes to import before they run; a factory
    defined in the main script cannot be imported by a worker, so that is an error before any training."""
    out = []
    for factory in factories:
        name = factory.__module__
        if name.startswith("clframework.") or any(name == m for m, _ in out):
            continue
        if name == "__main__":
            raise ValueError(f"{factory.__qualname__} is defined in the main script; runs in worker processes "
                             f"(--jobs, --ray) need it in an importable module or a --plugin file")
        out.append((name, getattr(sys.modules.get(name), "__file__", None)))
    return out


_imported: set = set()


def _import_plugins(plugins: Sequence[Tuple[str, Optional[str]]]) -> None:
    from .registry import import_plugin

    for name, file in plugins:
        if name in _imported:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            if file is None:
                raise
            import_plugin(file)
        _imported.add(name)


@contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_died(index: int, why: str, final: bool):
    if final:
        raise WorkerDied(why)


class WorkerDied(RuntimeError):
    """A worker process died (killed, out of memory) while running a payload, for the second time."""


class Executor:
    """Runs payloads with `fn(shared, payload)`; `map` calls `on_result(index, result)` in this process as each run
    finishes (in completion order) and returns the results in payload order. Open with `open_executor`.

    A payload whose worker process dies (`kill -9`, the out-of-memory killer) is run once more (`fn` must then
    continue from the payload's own checkpoint: a study's runs resume); `on_lost(index, why, final)` is told each
    time, and on the second death (final) returns the result that stands for the payload."""

    def map(self, fn: Callable, payloads: Sequence[Any], on_result: Callable[[int, Any], None] = lambda i, r: None,
            on_lost: Callable[[int, str, bool], Any] = _worker_died):
        raise NotImplementedError


class InProcess(Executor):
    def __init__(self, shared, threads: int):
        self.shared, self.threads = shared, threads

    def map(self, fn, payloads, on_result=lambda i, r: None, on_lost=_worker_died):
        results = []
        with _threads(self.threads):
            for i, payload in enumerate(payloads):
                results.append(fn(self.shared, payload))
                on_result(i, results[-1])
        return results


_SHARED: Any = None  # a pool worker's copy of the study's shared object (memory-mapped tensors)


def _die_with(parent: int) -> None:
    """End this worker (SIGKILL: nothing more is written) as soon as the main process is gone, killed or not: a
    worker outliving it would keep writing into a folder whose lock looks stale (issue 19)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="clframework-parent-watch").start()


def _init_worker(path: Optional[str], threads: int, plugins, parent: int, shared=None) -> None:
    """A worker's start: `shared` itself where it was forked (this process's copy-on-write pages of the parent's),
    else the file at `path`, memory-mapped."""
    global _SHARED
    import torch
    from tqdm import tqdm

    _die_with(parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a forked worker's: not the parent's Ctrl-C handler
    # tqdm's default lock is a multiprocessing one, registered with the parent's resource tracker: a killed worker
    # would leave it behind, and the tracker warn of a "leaked semaphore" at exit; a worker's bars need no such lock
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    # an optimizer's step imports torch._dynamo (torch/optim/optimizer.py, _use_grad), which costs about as much as
    # torch itself (python -X importtime): here, not in the worker's first run, so that run's seconds are its own and
    # the main process, which has it loaded, takes runs meanwhile
    import torch._dynamo  # noqa: F401

    _import_plugins(plugins)
    _SHARED = shared if path is None else torch.load(path, mmap=True, weights_only=False)


def _call(fn, payload, index: int, folder: str):
    """Run one payload, first noting its index under this worker's pid: if the worker dies, the main process can
    tell whose run it was (the pool itself only says that some worker died)."""
    Path(folder, f"running-{os.getpid()}").write_text(str(index))
    return fn(_SHARED, payload)


class WorkersFailed(RuntimeError):
    """--jobs workers died while starting twice: the study stops (its finished runs are kept)."""


def _death(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (kill -9 or the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


def _gather(submitted: dict, on_result, results: list, cancel: Callable[[], None], get: Callable, ready: Callable):
    """Collect results as they complete; the first failure cancels what has not started and is raised here."""
    pending = set(submitted)
    while pending:
        done, pending = ready(pending)
        for handle in done:
            try:
                result = get(handle)
            except BaseException:
                cancel()
                raise
            i = submitted[handle]
            results[i] = result
            on_result(i, result)
    return results


START_METHOD = "CLFRAMEWORK_WORKER_START"  # `spawn` or `fork`: how --jobs workers start, instead of start_method's


def chosen_start_method() -> Optional[str]:
    """CLFRAMEWORK_WORKER_START's value, checked (Backend checks it before a study starts)."""
    chosen = os.environ.get(START_METHOD, "").strip()
    if chosen not in ("", "spawn", "fork"):
        raise ValueError(f"{START_METHOD}={chosen!r}: use spawn or fork, or unset it for the default")
    return chosen or None


def start_method(threads: int, device: str) -> str:
    """How --jobs workers start. `fork` copies this process, which has torch, clframework and the stream loaded: a
    worker is ready at once, where a spawned one first imports all of that (seconds, a core's time that the study
    loses). It is chosen only where it is safe: Linux (macOS's system libraries are not fork-safe, Windows has no
    fork), a CPU study with CUDA not initialised here (a forked child cannot use CUDA), one torch thread per worker
    (GNU OpenMP's thread pool does not survive a fork: a child that enters a parallel region after this process did
    may hang; with one thread it never enters one) and no other thread here (a child would inherit the locks it
    held: _main_thread_alone). Everywhere else `spawn`. The environment variable CLFRAMEWORK_WORKER_START chooses
    one of them regardless."""
    chosen = chosen_start_method()
    if chosen:
        return chosen
    import torch

    from .trainer import select_device

    safe = (sys.platform == "linux" and threads == 1 and select_device(device).type == "cpu"
            and not torch.cuda.is_initialized() and _main_thread_alone())
    return "fork" if safe else "spawn"


def _main_thread_alone() -> bool:
    """No thread here but the main one, and tqdm's monitor (a bar starts it): the only lock it takes is tqdm's, which
    a worker replaces (_init_worker)."""
    from tqdm._monitor import TMonitor

    return all(t is threading.main_thread() or isinstance(t, TMonitor) for t in threading.enumerate())


class Pool(Executor):
    """`jobs` runs side by side: this process, which trains too, and jobs - 1 worker processes (forked or spawned:
    start_method), each with `threads` torch threads.

    The runs wait in one queue here: a worker is sent its next run only when it has finished the last (the pool's
    own read-ahead would hold a run that this process, already idle, could have taken), from the front of the
    queue; this process takes its runs from the back. A spawned worker pays seconds of start-up before its first run;
    meanwhile this process is already training."""

    def __init__(self, shared, jobs: int, threads: int, plugins, folder: str, device: str = "auto"):
        import torch

        self.method = start_method(threads, device)
        if self.method == "fork":
            path = None  # the workers inherit `shared`
        else:
            path = os.path.join(folder, "shared.pt")
            torch.save(shared, path)  # once; every worker memory-maps it
        self.shared, self.threads, self.folder, self.workers = shared, threads, folder, jobs - 1
        self.start = lambda: ProcessPoolExecutor(
            max_workers=self.workers, mp_context=torch.multiprocessing.get_context(self.method),
            initializer=_init_worker, initargs=(path, threads, plugins, os.getpid(),
                                                shared if self.method == "fork" else None))
        self.pool = self.start()

    def _round(self, fn, payloads, todo: List[int], here: bool, on_result, results: list):
        """Run `todo` once: the workers take from the queue's front, this process (if `here`) from its back. Returns
        the runs left unfinished by a broken pool (a worker died) and the pool's worker processes; the other runs'
        results are reported."""
        # reentrant: a run that finishes before its callback is added has the callback called here, lock held
        waiting, lock, finished = deque(todo), threading.RLock(), queue.Queue()
        state = {"sent": 0, "broken": False}

        def send(done=None) -> None:
            """The next run to a worker: at the start, and (in the pool's thread) as each finishes."""
            with lock:
                if waiting and not state["broken"]:
                    i = waiting.popleft()
                    try:
                        future = self.pool.submit(_call, fn, payloads[i], i, self.folder)
                    except (BrokenProcessPool, RuntimeError):  # broken, or shut down by an error here
                        waiting.appendleft(i)
                        state["broken"] = True
                    else:
                        state["sent"] += 1
                        future.index = i
                        future.add_done_callback(send)
            if done is not None:
                finished.put(done)  # after the next run is sent: whoever reads it sees a settled queue

        broken, received = [], 0

        def receive(future) -> None:
            nonlocal received
            received += 1
            try:
                result = future.result()
            except BrokenProcessPool:
                broken.append(future.index)
                return
            results[future.index] = result
            on_result(future.index, result)

        try:
            for _ in range(self.workers):
                send()
            from .checkpoint import lock_in_workers

            workers = dict(self.pool._processes)  # started by the submits
            lock_in_workers(list(workers))
            if here:
                with _threads(self.threads):
                    while True:
                        while not finished.empty():
                            receive(finished.get())
                        with lock:
                            if not waiting or state["broken"]:  # a broken pool's runs go to new workers at once
                                break
                            i = waiting.pop()
                        results[i] = fn(self.shared, payloads[i])
                        on_result(i, results[i])
            while True:
                with lock:
                    if received == state["sent"] and (not waiting or state["broken"]):
                        break
                receive(finished.get())
        except BaseException:
            with lock:
                waiting.clear()  # nothing more is sent
            raise
        return broken + list(waiting), workers

    def map(self, fn, payloads, on_result=lambda i, r: None, on_lost=_worker_died):
        """A worker that dies breaks the whole ProcessPoolExecutor (its other workers are terminated too): the runs
        finished so far are kept, the dead worker's run is charged one death, and every unfinished run goes to a
        new pool (workers only), continuing from its checkpoint; a run charged twice is given up (on_lost's
        result)."""
        results, deaths, todo = [None] * len(payloads), [0] * len(payloads), list(range(len(payloads)))
        starts = 0  # pools whose workers died while starting
        here = True  # this process trains too (not the retries: a run that killed its worker stays in a worker)
        while todo:
            broken, workers = self._round(fn, payloads, todo, here, on_result, results)
            here = False
            if not broken:
                return results
            self.pool.shutdown(wait=True)  # the broken pool has terminated its other workers: wait for them
            for p in workers.values():
                p.join(5)
            # the pool terminated its other workers with SIGTERM; a worker that died otherwise names its run
            died = {pid: p.exitcode for pid, p in workers.items() if p.exitcode not in (0, -signal.SIGTERM)}
            running = {pid: Path(self.folder, f"running-{pid}") for pid in died}
            if not any(f.exists() for f in running.values()):  # it died starting (e.g. importing): no run to retry
                why = ", ".join(sorted({_death(code) for code in died.values()}))
                starts += 1
                if starts == 2:
                    raise WorkersFailed(f"--jobs worker processes died while starting, twice ({why}); the runs "
                                        f"finished so far are kept: once the cause is fixed (memory, a plugin's "
                                        f"import), continue with the same command plus --resume")
                warnings.warn(f"a --jobs worker process died while starting ({why}); the workers are started again")
                todo, self.pool = broken, self.start()
                continue
            dead = {int(f.read_text()): _death(died[pid]) for pid, f in running.items() if f.exists()}
            todo = []
            for i in broken:
                if i in dead:
                    deaths[i] += 1
                    if deaths[i] == 2:
                        results[i] = on_lost(i, dead[i], True)
                        on_result(i, results[i])
                        continue
                    on_lost(i, dead[i], False)
                todo.append(i)
            self.pool = self.start()
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop the workers now (Ctrl-C, an error): their runs' checkpoints are written atomically, so a kill loses
        at most the steps since the last one, and --resume continues from there."""
        for process in list((self.pool._processes or {}).values()):  # None once the pool broke
            process.kill()


_RAY_SHARED: dict = {}  # a Ray worker's copy of the study's shared object, by object id (reused by later tasks)


def _ray_call(fn, shared_ref: list, payload, threads: int, plugins):
    """The ref arrives wrapped in a list, so Ray does not fetch and unpickle the stream again for every task."""
    import ray
    import torch

    torch.set_num_threads(threads)
    _import_plugins(plugins)
    key = shared_ref[0].hex()
    if key not in _RAY_SHARED:
        _RAY_SHARED.clear()
        _RAY_SHARED[key] = ray.get(shared_ref[0])
    return fn(_RAY_SHARED[key], payload)


def ray_module():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'clframework[ray]'") from None
    return ray


# What a fresh Ray worker imports before its first run can train: torch, and torch._dynamo, which every optimizer
# step imports (torch/optim/optimizer.py, _use_grad) and which costs about as much again; and our run's code. A
# local instance's workers import them as they start (Ray's `preload_python_modules`), while this process loads the
# stream; on a cluster, start it with `RAY_preload_python_modules=torch,torch._dynamo,clframework.study ray start`.
RAY_PRELOAD = ("torch", "torch._dynamo", "clframework.study")


def start_ray(address: str, **options) -> None:
    """Start a local Ray instance (RAY_LOCAL; `options`: ray.init's, e.g. num_cpus) or connect to a cluster.

    A local instance listens on the loopback address only, where Ray is imported here first: nothing outside this
    machine needs it. Ray's switch for that is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read as Ray is imported (its
    `_node_ip_address="127.0.0.1"` is rewritten to the machine's address)."""
    if address == RAY_LOCAL and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = ray_module()
    if address == RAY_LOCAL:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _system_config={"preload_python_modules": list(RAY_PRELOAD)}, **options)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False, **options)


@contextmanager
def ray_started(backend: "Backend", **options):
    """Ray started (where the study uses it and nothing started it yet; `options` as start_ray's) before the caller
    loads its stream, so that the workers' imports overlap that; stopped on exit if started here."""
    if backend.ray is None or ray_module().is_initialized():
        yield
        return
    start_ray(backend.ray, **options)
    try:
        yield
    finally:
        ray_module().shutdown()


class RayTasks(Executor):
    """Each run a Ray task asking for `threads` CPUs (and a GPU share where the cluster has GPUs), on the Ray that
    `ray_started` started or connected to; Ray retries a task whose worker died (max_retries), and the driver receives
    every result."""

    def __init__(self, shared, threads: int, plugins, gpus: Optional[float], device: str):
        ray = self.ray = ray_module()
        if gpus is None:
            gpus = 1.0 if device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.threads, self.plugins = threads, plugins
        self.remote = ray.remote(_ray_call).options(num_cpus=threads, num_gpus=gpus, max_retries=3)
        self.shared = ray.put(shared)

    def map(self, fn, payloads, on_result=lambda i, r: None, on_lost=_worker_died):
        ray = self.ray
        submitted = {self.remote.remote(fn, [self.shared], p, self.threads, self.plugins): i
                     for i, p in enumerate(payloads)}

        def get(ref):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the run's own exception, as raised in the worker
                raise exc.as_instanceof_cause() from None

        return _gather(submitted, on_result, [None] * len(payloads),
                       cancel=lambda: [ray.cancel(r) for r in submitted], get=get,
                       ready=lambda pending: [set(x) for x in ray.wait(list(pending), num_returns=1)])


@contextmanager
def open_executor(backend: Backend, shared, plugins=(), device: str = "auto"):
    """An Executor for `backend` holding `shared` (the stream) once; closed (workers stopped) on exit."""
    threads = backend.threads_per_run()
    if backend.ray is not None:
        with ray_started(backend):
            yield RayTasks(shared, threads, list(plugins), backend.gpus_per_run, device)
    elif backend.jobs > 1:
        with tempfile.TemporaryDirectory(prefix="clframework-study-") as folder:
            ex = Pool(shared, backend.jobs, threads, list(plugins), folder, device)
            try:
                yield ex
            except BaseException:
                ex.abort()
                raise
            finally:
                ex.close()
    else:
        yield InProcess(shared, threads)
