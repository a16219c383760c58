"""--jobs: runs in a pool of spawned worker processes give the same results as the same runs one after another in
this process with the same per-run thread count; bad settings fail before training; the progress view."""
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
