"""A study with `--ray` and no instance running starts its own local Ray instance (on 127.0.0.1) before it loads
the stream, whose workers import torch and torch._dynamo as they start, and stops it at the end. Apart from
test_ray.py, whose instance lives for its whole module."""
import pytest

ray = pytest.importorskip("ray")

from clframework import RunConfig, compare  # noqa: E402
from clframework.parallel import Backend, cores, ray_started  # noqa: E402

pytestmark = pytest.mark.slow  # starts real local Ray instances


def test_a_study_starts_its_own_local_instance_and_stops_it_with_the_runs_it_would_give_here():
    assert not ray.is_initialized()
    base = RunConfig("naive", "split-mnist-5k", epochs=1, tasks=2, hidden=[16])
    here = compare(["naive", "si"], "split-mnist-5k", seeds=1, base=base, quiet=True, backend=Backend(threads=1))
    on_ray = compare(["naive", "si"], "split-mnist-5k", seeds=1, base=base, quiet=True,
                     backend=Backend(ray="local", threads=1))
    assert not ray.is_initialized()  # stopped by the study that started it
    for name in ("naive", "si"):
        assert [r["accuracy_matrix"] for r in on_ray["strategies"][name]["runs"]] == \
            [r["accuracy_matrix"] for r in here["strategies"][name]["runs"]]


def test_the_local_instance_is_on_loopback_and_its_workers_have_torch_before_their_first_task():
    def first_task():  # what the worker had imported before this task arrived
        import sys

        return [m for m in ("torch", "torch._dynamo", "clframework.study") if m in sys.modules]

    with ray_started(Backend(ray="local", threads=1)):
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert ray.get(ray.remote(num_cpus=1)(first_task).remote()) == ["torch", "torch._dynamo", "clframework.study"]
        with ray_started(Backend(ray="local", threads=1)):  # already running: left as it is
            pass
        assert ray.is_initialized()
    assert not ray.is_initialized()


def test_the_study_bench_times_ray_on_the_instance_that_ray_starts_and_stops_it(tmp_path):
    """A dry run of `bench --study` with its ray mode, tiny: the local instance started as `--ray` starts it (timed
    apart), the runs' matrices those of jobs 1, and the instance stopped after."""
    import json

    from clframework.apps.cli import main

    code = main(["bench", "--study", "--benchmark", "split-mnist-5k", "--modes", "jobs1,ray", "--strategies", "naive",
                 "--seeds", "2", "--tasks", "1", "--capacity-steps", "0", "--out", str(tmp_path)])
    assert code == 0 and not ray.is_initialized()
    rows = {r["mode"]: r for r in json.loads((tmp_path / "study.json").read_text())["rows"]}
    assert rows["ray"]["ray_start_seconds"] > 0 and rows["ray"]["workers"] == "ray"
    assert rows["ray"]["same_matrices_as_jobs1"] is True and rows["ray"]["processes"] == cores()  # Ray's CPUs
