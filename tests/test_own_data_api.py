"""Own-data friction (issue 20 item 7): benchmark options from the CLI, compare() taking run's settings, and streams
of your own carrying their training protocol (no unrelated benchmark to name)."""
import json

import pytest

from clframework.benchmarks import Protocol
from clframework import RunConfig, compare, run

CLI = ["-m", "clframework"]  # `python -m clframework`, run by the `python` fixture


@pytest.mark.slow
def test_cli_option_sets_benchmark_options_typed_and_recorded(tmp_path, python):
    out = tmp_path / "perm"
    proc = python.run(CLI + ["run", "--strategy", "naive", "--benchmark", "permuted-mnist-5k", "--option",
                                 "n_tasks=2", "permutation_seed=3", "--epochs", "1", "--hidden", "16", "--quiet",
                                 "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "results.json").read_text())
    assert len(result["tasks"]) == 2
    assert result["config"]["benchmark_options"] == {"n_tasks": 2, "permutation_seed": 3}
    proc = python.run(CLI + ["run", "--strategy", "naive", "--option", "n_tasks=2", "--out", str(tmp_path / "x")])
    assert proc.returncode == 2 and "benchmark 'split-mnist-5k' has no option 'n_tasks'" in proc.stderr, proc.stderr
    assert "accepted: setting" in proc.stderr and not (tmp_path / "x").exists()
    proc = python.run(CLI + ["run", "--strategy", "naive", "--option", "setting", "--out", str(tmp_path / "y")])
    assert proc.returncode == 2 and "--option expects KEY=VALUE (for example --option n_tasks=3)" in proc.stderr


def test_compare_takes_runs_settings(tmp_path):
    summary = compare(["naive"], "split-mnist-5k", seeds=1, quiet=True, tasks=2, epochs=1, hidden=[16],
                      optimizer="sgd", lr=0.05)
    assert len(summary["tasks"]) == 2 and summary["strategies"]["naive"]["runs"][0]["metrics"]["acc"] > 0.5
    config = summary["provenance"]["api_call"]["configs"]["naive"]
    assert (config["tasks"], config["epochs"], config["hidden"], config["optimizer"], config["lr"]) == \
        (2, 1, [16], "sgd", 0.05)
    with pytest.raises(TypeError, match=r"compare\(\) got unknown setting\(s\) \['epoch'\]"):
        compare(["naive"], "split-mnist-5k", seeds=1, epoch=1)


@pytest.mark.slow
def test_a_stream_of_your_own_trains_by_its_own_protocol(tmp_path, mnist_stream):
    stream = mnist_stream.subset([0, 1])
    stream.protocol = Protocol(hidden=(16,), epochs=1, batch_size=32, optimizer="sgd", lr=0.05,
                               strategy_hparams={"si": {"c": 0.5}})
    result = run(RunConfig("si"), tmp_path / "own", quiet=True, stream=stream)
    config = result.config
    assert (config["hidden"], config["epochs"], config["batch_size"], config["optimizer"], config["protocol"]) == \
        ([16], 1, 32, "sgd", "own")
    assert result.hparams["c"] == 0.5 and result.benchmark == stream.name
    # the run's own fields still win over the stream's protocol; the holdout and first() keep the protocol
    assert run(RunConfig("naive", epochs=2, tasks=1), quiet=True, stream=stream).config["epochs"] == 2
    summary = compare(["naive", "si"], seeds=1, quiet=True, stream=stream)
    assert summary["protocol"] == "own" and summary["benchmark"] == stream.name
    plain = mnist_stream.subset([0, 1])  # no protocol: Protocol()'s defaults
    assert run(RunConfig("naive", epochs=1, hidden=[8]), quiet=True, stream=plain).config["batch_size"] == \
        Protocol().batch_size


def test_no_benchmark_and_no_stream_says_what_to_give():
    with pytest.raises(ValueError, match="the run has no benchmark: name a registered one"):
        run(RunConfig("naive"))
    with pytest.raises(ValueError, match="benchmark options \\['n_tasks'\\] need a registered benchmark"):
        RunConfig("naive", benchmark_options={"n_tasks": 2}, protocol=Protocol()).resolved()
