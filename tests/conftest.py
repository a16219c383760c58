import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the tests' local Ray instances on the loopback address only (Ray reads this as it is imported; see start_ray)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _share_the_cores() -> int:
    """With `-n N` (pytest-xdist), worker i keeps every Nth of this process's cores from the ith on: torch's threads,
    clframework's cores() (so --jobs and a study's threads per run) and every process a test starts see that share.
    N workers then never run more threads than there are cores: an OpenMP thread waiting for a busy core spins, and
    on 2 cores, 2 workers of 2 torch threads each took about twice the CPU time of 1 thread each for the same tests.
    Without -n: all cores, at most 2 threads, as before."""
    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if n > 1 and worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
        mine = sorted(os.sched_getaffinity(0))
        if len(mine) >= n:
            os.sched_setaffinity(0, mine[int(worker[2:]) % n::n])
            return len(os.sched_getaffinity(0))
        return 1
    return 2


def pytest_configure(config):
    """In each process that runs tests, before any test module imports torch: its share of the cores. Not in the
    pytest-xdist controller, which runs none (and so need not import torch, 1-2 CPU s)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        import torch

        torch.set_num_threads(_share_the_cores())


def pytest_collection_modifyitems(items):
    """The slow tests first: with `-n 2 --dist worksteal` (setup.cfg) the last tests left, which an idle worker takes
    from the busy one, are then short ones, and neither worker ends long after the other on one long test. Those on
    the local Ray instance at the very front: the first worker runs them back to back, long before any stealing, so
    Ray starts once (split over two workers, it started twice: about 5 s more, and 5 s for the second test's cold
    Ray workers)."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, "local_ray" not in item.fixturenames))


@pytest.fixture(scope="session")
def mnist_stream():
    """Two tasks of the embedded split MNIST (real data), shared by the tests that train."""
    from clframework.benchmarks import make_benchmark

    return make_benchmark("split-mnist-5k").subset([0, 1])


@pytest.fixture
def scratch_registry(monkeypatch):
    """The strategy registry with the built-ins loaded; whatever a test registers is undone after it."""
    from clframework.plugin import STRATEGIES

    STRATEGIES.names()
    monkeypatch.setattr(STRATEGIES, "_entries", dict(STRATEGIES._entries))
    return STRATEGIES


@pytest.fixture
def cli(capsys, monkeypatch):
    """`clframework ARGS` in this process, as a finished process reads: returncode, stdout, stderr. `env` and `cwd`
    hold for the call. For what needs no process of its own (a real signal, a file-size limit, a fresh registry or
    import state do): it saves the seconds an interpreter takes to import torch."""
    from clframework.apps.cli import main

    def run(*args, env=None, cwd=None):
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            if cwd is not None:
                m.chdir(cwd)
            capsys.readouterr()
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
            out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture(scope="session")
def python():
    """`python ARGV` as a real process of its own, forked from one that has imported torch and clframework already
    (tests/forkserver.py): for what needs a process (a real kill -9, wandb's settings read once per process) but not
    a fresh import of torch."""
    from forkserver import ForkServer

    with ForkServer(["torch", "clframework.study", "clframework.strategies", "clframework.apps.cli",
                     "clframework.evaluation.plots"]) as server:  # most runs write their figures: matplotlib here once
        yield server


@pytest.fixture(scope="session")
def docs_python():
    """The fork server the documents' examples run in (tests/test_docs.py): it has imported what any document's
    examples import and parsed their data once, for every document this pytest process runs, not once per document
    (3-6 s each). Each block still runs in a child of its own, in its document's folder and environment."""
    from forkserver import ForkServer
    from test_docs import DOCS, preload

    with ForkServer(preload(sorted(DOCS.glob("*.md")))) as server:
        yield server
