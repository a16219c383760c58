"""--ray on a real local Ray instance (bound to 127.0.0.1, 2 CPUs): the same per-run matrices as in this process,
results written by the driver, and a run whose worker process is killed (SIGKILL) retried by Ray from its
checkpoint."""
import json

import pytest

ray = pytest.importorskip("ray")

from clframework import RunConfig, compare  # noqa: E402
from clframework.parallel import Backend  # noqa: E402
from clframework.registry import import_plugin  # noqa: E402

pytestmark = pytest.mark.slow  # starts a real local Ray instance

DIES_ONCE = '''
import os
import signal
from pathlib import Path

from clframework.plugin import register_strategy
from clframework.strategies.naive import Naive


@register_strategy("dies-once")
class DiesOnce(Naive):
    """Naive fine-tuning whose process kills itself (SIGKILL) when task 2 starts, unless `marker` exists."""

    def __init__(self, marker: str = ""):
        self.marker = marker

    def on_task_start(self, model, task_index):
        if task_index == 1 and self.marker and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
'''

BASE = RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    yield
    ray.shutdown()


def _matrices(summary):
    return {name: [r["accuracy_matrix"] for r in s["runs"]] for name, s in summary["strategies"].items()}


def test_ray_gives_the_matrices_of_a_run_in_process_and_the_driver_writes_the_folders(local_ray, tmp_path):
    here = compare(["naive", "si"], "split-mnist-5k", seeds=2, base=BASE, quiet=True, backend=Backend(threads=1))
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    on_ray = compare(["naive", "si"], "split-mnist-5k", seeds=2, base=BASE, quiet=True, out_dir=out,
                     checkpoint_dir=checkpoints, backend=Backend(ray="local", threads=1))
    assert _matrices(on_ray) == _matrices(here)
    assert json.loads((out / "summary.json").read_text())["strategies"]["si"]["runs"][1]["accuracy_matrix"] == \
        _matrices(here)["si"][1]
    for run in ("naive-seed0", "si-seed1"):
        written = json.loads((out / run / "results.json").read_text())  # by the driver, from the returned results
        kept = json.loads((checkpoints / run / "results.json").read_text())  # by the worker, next to its model
        assert written["accuracy_matrix"] == kept["accuracy_matrix"]
        assert (out / run / "matrix.csv").is_file() and (checkpoints / run / "model.pt").is_file()


def test_a_killed_worker_is_retried_by_ray_and_continues_from_its_checkpoint(local_ray, tmp_path, scratch_registry):
    plugin = tmp_path / "dies_once.py"
    plugin.write_text(DIES_ONCE)
    import_plugin(str(plugin))
    marker = tmp_path / "killed"
    hparams = {"dies-once": {"marker": str(marker)}}
    out = tmp_path / "out"
    on_ray = compare(["dies-once"], "split-mnist-5k", seeds=1, base=BASE, hparams=hparams, quiet=True, out_dir=out,
                     backend=Backend(ray="local", threads=1))
    assert marker.exists()  # a worker process did die with SIGKILL
    result = json.loads((out / "dies-once-seed0" / "results.json").read_text())
    assert result["resumed_from"]["task"] == 1  # the retry continued after task 1's checkpoint
    uninterrupted = compare(["dies-once"], "split-mnist-5k", seeds=1, base=BASE, hparams=hparams, quiet=True,
                            backend=Backend(threads=1))  # the marker exists now: no death
    assert _matrices(on_ray) == _matrices(uninterrupted)
