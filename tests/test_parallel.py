"""--jobs: runs in a pool of forked or spawned worker processes give the same results as the same runs one after
another in this process with the same per-run thread count; bad settings fail before training; the progress view;
which process takes which run."""
import json
import subprocess
import sys
import time

import pytest

from clframework.apps.cli import main
from clframework import RunConfig, compare
from clframework.parallel import Backend, parse_jobs
from clframework.registry import import_plugin

PLUGIN = '''
from clframework.plugin import register_strategy
from clframework.strategies.naive import Naive


@register_strategy("plugin-naive")
class PluginNaive(Naive):
    """Naive fine-tuning registered by a plugin file (worker processes must import it too)."""
'''


def _matrices(summary):
    return {name: [r["accuracy_matrix"] for r in s["runs"]] for name, s in summary["strategies"].items()}


@pytest.mark.slow
def test_jobs_2_gives_the_matrices_of_jobs_1(tmp_path, capsys, scratch_registry):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    import_plugin(str(plugin))
    base = RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16])
    strategies = ["naive", "si", "plugin-naive"]
    one, two = (_matrices(compare(strategies, "split-mnist-5k", seeds=2, base=base, quiet=True,
                                  backend=Backend(jobs=jobs, threads=1))) for jobs in (1, 2))
    assert set(one) == set(strategies) and all(len(runs) == 2 for runs in one.values())
    assert one == two  # bit for bit: same seeds, same thread count, same arithmetic
    assert one["si"] != one["naive"] and one["naive"][0] != one["naive"][1]  # the grid compares something
    assert capsys.readouterr().err == ""  # quiet: no bar, no per-run line


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs expects a positive integer or 'auto'"),
    (["--jobs", "two"], "--jobs expects a positive integer or 'auto'"),
    (["--jobs", "2", "--ray"], "either --jobs or --ray"),
    (["--threads", "0"], "threads per run must be >= 1"),
])
def test_bad_study_settings_fail_before_training(tmp_path, capsys, args, message):
    assert main(["compare", "--quiet", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_strategy_defined_in_the_main_script_is_an_error_with_jobs():
    from clframework.parallel import plugin_modules

    def factory():
        pass

    factory.__module__ = "__main__"
    with pytest.raises(ValueError, match="importable module or a --plugin file"):
        plugin_modules([factory])


def test_jobs_auto_is_one_job_per_two_cores(monkeypatch):
    import clframework.parallel as P

    for n, jobs in ((1, 1), (2, 1), (3, 1), (32, 16)):
        monkeypatch.setattr(P, "cores", lambda n=n: n)
        assert parse_jobs("auto") == jobs
        assert Backend(jobs=jobs).threads_per_run() == max(1, n // jobs)


@pytest.mark.slow
def test_compare_jobs_2_progress_lines_and_run_folders(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "clframework", "compare", "--strategies", "naive,si", "--seeds", "1", "--epochs", "1",
           "--hidden", "16", "--jobs", "2", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import = time.perf_counter() - start  # what the first output must not wait for
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stderr.read(1)
    first_seconds = time.perf_counter() - start
    err = (first + proc.stderr.read()).decode()
    proc.wait()
    assert proc.returncode == 0, err
    # within a second; on a machine so busy that importing torch takes seconds, well before torch could load
    assert first_seconds < max(1.0, torch_import / 2), f"first output after {first_seconds:.2f} s"
    assert "compare: preparing" in err and "2/2" in err  # the overall bar: runs done / total
    summary = json.loads((out / "summary.json").read_text())
    for name in ("naive", "si"):  # one line per finished run: label, ACC, seconds
        acc = summary["strategies"][name]["runs"][0]["metrics"]["acc"]
        assert f"{name} seed 0: ACC {acc:.4f} (" in err
        res = json.loads((out / f"{name}-seed0" / "results.json").read_text())  # written by a worker
        assert res["accuracy_matrix"] == summary["strategies"][name]["runs"][0]["accuracy_matrix"]


def test_per_run_bar_names_strategy_seed_and_task(mnist_stream, capsys, monkeypatch):
    from clframework.models import mlp
    from clframework.plugin import make_strategy
    from clframework.trainer import Trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bars are drawn on a terminal only (issue 31, item 8)
    trainer = Trainer(mlp(784, [2] * 5, [16]), make_strategy("naive"), epochs=1, label="si seed 3")
    trainer.train_task(mnist_stream[1], 1)
    assert "si seed 3 task 2 2-3" in capsys.readouterr().err


def test_default_threads_one_for_a_small_model_else_the_share():
    """The rule in one place (parallel.default_threads): a model under MANY_THREADS_FROM weights trains on one thread
    whatever its share of the cores; a larger one on its whole share."""
    import torch

    from clframework.parallel import MANY_THREADS_FROM, default_threads, run_threads

    assert default_threads(MANY_THREADS_FROM - 1, 8) == 1 and default_threads(MANY_THREADS_FROM, 8) == 8
    assert default_threads(MANY_THREADS_FROM, 0) == 1
    before = torch.get_num_threads()
    small = torch.nn.Linear(4, 2)
    with run_threads(None, small) as n:
        assert n == 1 == torch.get_num_threads()
    with run_threads(3, small) as n:
        assert n == 3 == torch.get_num_threads()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("argv", [["run", "--strategy", "si"], ["compare"], ["tune", "--strategy", "si"],
                                  ["reproduce", "split-mnist"], ["bench"]])
def test_every_training_command_takes_threads(argv):
    from clframework.apps.cli import build_parser

    assert build_parser().parse_args([*argv, "--threads", "3"]).threads == 3
    assert build_parser().parse_args(argv).threads is None


def test_a_runs_provenance_records_the_threads_it_trained_with(mnist_stream):
    from clframework import RunConfig, run

    cfg = RunConfig("naive", epochs=1, hidden=[8])
    assert run(cfg, stream=mnist_stream.subset([0]), quiet=True).provenance["threads"] == 1  # small: one thread
    assert run(cfg, stream=mnist_stream.subset([0]), quiet=True, threads=2).provenance["threads"] == 2


# ---- how workers start (parallel.start_method) and which process takes which run ----------------------------------

SAME_GRID = '''
import json
import os

import torch

from clframework import RunConfig, compare, parallel
from clframework.parallel import Backend

torch.set_num_threads(2)  # this process has used OpenMP's thread pool before it forks: its workers must not hang
torch.rand(1000, 1000).mul_(2).sum()
openmp_threads = len(os.listdir("/proc/self/task")) - 1 if os.path.isdir("/proc/self/task") else 0
used = []
pick = parallel.start_method
parallel.start_method = lambda *a: used.append(pick(*a)) or used[-1]
base = RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16], tasks=2, device="cpu")
matrices = [{n: [r["accuracy_matrix"] for r in s["runs"]] for n, s in compare(
    ["naive", "si", "ewc"], "split-mnist-5k", seeds=2, base=base, quiet=True,
    backend=Backend(jobs=jobs, threads=1))["strategies"].items()} for jobs in (1, 2)]
print(json.dumps({"one": matrices[0], "two": matrices[1], "used": used, "openmp_threads": openmp_threads}))
'''


@pytest.mark.slow
@pytest.mark.parametrize("env, method", [({}, "fork" if sys.platform == "linux" else "spawn"),
                                         ({"CLFRAMEWORK_WORKER_START": "spawn"}, "spawn")])
def test_forked_and_spawned_workers_give_the_matrices_of_jobs_1(python, env, method):
    """A process of its own (no Python thread but its main one, as a command's): by default its workers are forked on
    Linux, even after this process ran torch on two OpenMP threads, and train the same numbers as the runs in turn,
    bit for bit, as spawned ones do."""
    proc = python.run(["-c", SAME_GRID], env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["used"] == [method] and (out["openmp_threads"] >= 1 or sys.platform != "linux")
    assert out["one"] == out["two"] and len(out["one"]) == 3 and all(len(m) == 2 for m in out["one"].values())
    assert out["one"]["si"] != out["one"]["naive"] and out["one"]["naive"][0] != out["one"]["naive"][1]


def test_workers_are_forked_only_where_it_is_safe(monkeypatch):
    import threading

    from tqdm._monitor import TMonitor

    import clframework.parallel as P

    alone = P._main_thread_alone
    monitor = object.__new__(TMonitor)  # tqdm's monitor thread (a bar starts it): the one other thread allowed
    other = threading.Thread(target=lambda: None)
    for threads, expected in (([], True), ([monitor], True), ([other], False), ([monitor, other], False)):
        monkeypatch.setattr(threading, "enumerate", lambda t=threads: [threading.main_thread(), *t])
        assert alone() is expected
    monkeypatch.undo()

    monkeypatch.delenv(P.START_METHOD, raising=False)
    monkeypatch.setattr(P, "_main_thread_alone", lambda: True)
    assert P.start_method(1, "cpu") == ("fork" if sys.platform == "linux" else "spawn")
    assert P.start_method(2, "cpu") == "spawn"  # GNU OpenMP's pool: only one thread per forked worker
    monkeypatch.setattr(P, "_main_thread_alone", lambda: False)
    assert P.start_method(1, "cpu") == "spawn"
    monkeypatch.setenv(P.START_METHOD, "fork")
    assert P.start_method(2, "cpu") == "fork"  # asked for
    monkeypatch.setenv(P.START_METHOD, "forkserver")
    with pytest.raises(ValueError, match="CLFRAMEWORK_WORKER_START='forkserver': use spawn or fork"):
        Backend(jobs=2)
    Backend(jobs=1)  # no workers: not read


GATES = '''
import os
import time
from pathlib import Path

from clframework import register_strategy
from clframework.strategies.naive import Naive

GATE = Path(os.environ["GATE"])


class Noted(Naive):
    """Writes GATE/NAME (its process's pid) as its run starts."""

    def on_task_start(self, model, task_index):
        super().on_task_start(model, task_index)
        if task_index == 0:
            (GATE / type(self).__name__).write_text(str(os.getpid()))


def wait_for(name: str) -> bool:
    deadline = time.time() + 30
    while not (GATE / name).exists() and time.time() < deadline:
        time.sleep(0.01)
    return (GATE / name).exists()


@register_strategy("gate-a")
class A(Noted):
    """The first run (a worker's): it goes on once gate-b has started, wherever (GATE/seen: it had)."""

    def on_task_start(self, model, task_index):
        super().on_task_start(model, task_index)
        if task_index == 0 and wait_for("B"):
            (GATE / "seen").touch()


@register_strategy("gate-b")
class B(Noted):
    pass


@register_strategy("gate-c")
class C(Noted):
    """The main process's first run: it goes on once the worker has started gate-a."""

    def on_task_start(self, model, task_index):
        super().on_task_start(model, task_index)
        if task_index == 0:
            wait_for("A")
'''


@pytest.mark.slow
def test_a_run_is_sent_to_a_worker_only_when_it_is_free(tmp_path, python):
    """The worker takes gate-a from the queue's front and holds it until gate-b has started; the main process takes
    gate-c from the back, waits until the worker is in gate-a, then takes gate-b itself: no run waits behind a busy
    worker while the main process is free (the pool's own read-ahead held gate-b there, and the study's tail)."""
    (tmp_path / "gates.py").write_text(GATES)
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = python.run(["-m", "clframework", "compare", "--strategies", "gate-a,gate-b,gate-c", "--seeds", "1",
                       "--benchmark", "split-mnist-5k", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet",
                       "--device", "cpu", "--jobs", "2", "--threads", "1", "--plugin", "gates",
                       "--out", str(tmp_path / "cmp")], cwd=tmp_path, env={"GATE": str(gate)})
    assert proc.returncode == 0, proc.stderr
    pids = {name: int((gate / name).read_text()) for name in "ABC"}
    assert pids["B"] == pids["C"] != pids["A"] and (gate / "seen").exists(), pids
