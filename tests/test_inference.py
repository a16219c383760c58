"""`clframework.load(run_dir).predict` on real tiny runs: the stream's stored uint8 examples and the model inputs
give the same predictions, whose accuracy is the run's own; a wrong shape or dtype is an error naming what it takes."""
import json

import numpy as np
import pytest
import torch

from clframework import load
from clframework.benchmarks import split
from clframework.benchmarks.scenarios import from_tensors
from clframework.evaluation.plots import Figures
from clframework import RunConfig, run

NO_FIGURES = Figures(runs=False, study=False)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_stream):
    out = tmp_path_factory.mktemp("inference") / "run"
    run(RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16], device="cpu"), out, quiet=True,
        stream=mnist_stream, figures=NO_FIGURES)
    return out


def test_predict_takes_the_stored_uint8_examples_as_the_model_inputs(mnist_run, mnist_stream):
    trained = load(mnist_run)
    res = json.loads((mnist_run / "results.json").read_text())
    assert (res["config"]["stored_dtype"], res["config"]["decode"]) == ("uint8", {"scale": 255.0, "mean": [],
                                                                                  "std": []})
    for j, task in enumerate(mnist_stream):
        raw = task.examples("test").raw()
        assert raw.dtype == torch.uint8
        from_raw = trained.predict(raw, task=j)
        assert torch.equal(from_raw, trained.predict(task.test_x, task=j))
        truth = torch.tensor(task.classes)[task.test_y]
        accuracy = (from_raw == truth).sum().item() / len(truth)
        assert accuracy == pytest.approx(res["accuracy_matrix"][-1][j], abs=1e-12)


def test_predict_names_what_it_takes_for_a_wrong_shape_or_dtype(mnist_run, mnist_stream):
    trained = load(mnist_run)
    raw = mnist_stream[0].examples("test").raw()
    takes = r"predict takes float32 model inputs of shape \[N, 1, 28, 28\], or the stream's stored uint8 examples"
    for x, got in ((raw.long(), "got torch.int64"), (raw.double(), "got torch.float64"),
                   (raw.flatten(1), r"got shape \[200, 784\]$"), (raw[0], r"got shape \[1, 28, 28\] \(one example: "
                                                                          r"x.unsqueeze\(0\)\)"),
                   (raw.numpy(), r"got a ndarray \(torch.as_tensor converts it\)")):
        with pytest.raises(ValueError, match=f"{takes} of that shape; {got}"):
            trained.predict(x, task=0)
    assert isinstance(raw.numpy(), np.ndarray)


def test_results_of_an_older_version_take_model_inputs_and_say_why_not_stored_ones(mnist_run, mnist_stream, tmp_path):
    res = json.loads((mnist_run / "results.json").read_text())
    for key in ("stored_dtype", "decode"):
        del res["config"][key]
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps(res))
    (old / "model.pt").write_bytes((mnist_run / "model.pt").read_bytes())
    trained, task = load(old), mnist_stream[1]
    assert torch.equal(trained.predict(task.test_x, task=1), load(mnist_run).predict(task.test_x, task=1))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(results.json of an older clframework records no stored "
                                         r"form: decode with task.inputs\(raw\)\)"):
        trained.predict(task.examples("test").raw(), task=1)


def _own_decode(raw):
    return raw.float() / 255


def test_a_decode_of_your_own_is_named_and_its_inputs_are_taken(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.randint(0, 256, (80, 6), generator=g, dtype=torch.uint8), torch.arange(80) % 4,
                        torch.randint(0, 256, (40, 6), generator=g, dtype=torch.uint8), torch.arange(40) % 4,
                        decode=_own_decode)
    stream = split(data, 2, setting="class")
    run(RunConfig("naive", epochs=1, hidden=[8], device="cpu"), tmp_path / "r", quiet=True, stream=stream,
        figures=NO_FIGURES)
    trained, task = load(tmp_path / "r"), stream[1]
    assert trained.config["decode"] == f"{__name__}:_own_decode"
    assert set(trained.predict(task.test_x).tolist()) <= {0, 1, 2, 3}
    own = f"{__name__}:_own_decode"
    with pytest.raises(ValueError, match=rf"predict takes float32 model inputs of shape \[N, 6\]; got torch.uint8 "
                                         rf"\(the stream decodes its uint8 examples with {own}, which load cannot "
                                         rf"rebuild: pass what it makes of them, task.inputs\(raw\)\)"):
        trained.predict(task.examples("test").raw())


# ---- issue 30, item 1: load predicts with the module that produced the recorded scores -----------------------------

def _every_strategy():
    from clframework.plugin import STRATEGIES

    return STRATEGIES.names()


SMALL = {"gdumb": {"memory_size": 60, "fit_epochs": 2}, "icarl": {"memory_size": 40}}


@pytest.fixture(scope="module")
def class_il_stream(mnist_stream):
    """Two class-incremental tasks of real MNIST, 300 training and 100 test examples each (a few seconds a run)."""
    import dataclasses

    from clframework.benchmarks import make_benchmark

    stream = make_benchmark("split-mnist-5k", setting="class").subset([0, 1])
    g = torch.Generator().manual_seed(0)
    pick = lambda ex, n: ex.take(torch.randperm(len(ex), generator=g)[:n])  # noqa: E731
    return dataclasses.replace(stream, tasks=[t.with_splits(train=pick(t.examples("train"), 300),
                                                            test=pick(t.examples("test"), 100))
                                              for t in stream.tasks])


@pytest.mark.parametrize("strategy", _every_strategy())
def test_predict_gives_the_recorded_accuracy_for_every_strategy(strategy, class_il_stream, tmp_path):
    """GDumb's scores come from a network retrained on its memory and iCaRL's from the nearest mean of exemplars:
    load predicted with the stream network instead (GDumb [0.43, 0.015] against the recorded [0.985, 0.885])."""
    out = tmp_path / strategy
    run(RunConfig(strategy, "split-mnist-5k", hparams=SMALL.get(strategy, {}), epochs=1, hidden=[16], device="cpu"),
        out, quiet=True, stream=class_il_stream, figures=NO_FIGURES)
    recorded = json.loads((out / "results.json").read_text())["accuracy_matrix"][-1]
    trained, labels = load(out), torch.tensor([c for task in class_il_stream for c in task.classes])
    for j, task in enumerate(class_il_stream):
        truth = labels[task.test_y]  # one head over every class
        accuracy = (trained.predict(task.test_x) == truth).sum().item() / len(truth)
        assert accuracy == pytest.approx(recorded[j], abs=1e-12), (j, accuracy, recorded)


def test_a_scorer_that_cannot_be_rebuilt_is_refused_naming_why(class_il_stream, tmp_path):
    out = tmp_path / "icarl"
    run(RunConfig("icarl", "split-mnist-5k", hparams={"memory_size": 40}, epochs=1, hidden=[16], device="cpu"),
        out, quiet=True, stream=class_il_stream, figures=NO_FIGURES)
    record = torch.load(out / "scorer.pt", weights_only=True)
    record["probe_scores"] = record["probe_scores"] + 1  # scores the rebuilt module does not give
    torch.save(record, out / "scorer.pt")
    with pytest.raises(ValueError, match=r"its scores came from strategy 'icarl''s eval_model, not from model.pt, and "
                                         r"the module rebuilt here scores 16 recorded test examples otherwise"):
        load(out)
    (out / "strategy.pt").unlink()
    with pytest.raises(ValueError, match=r"its scorer cannot be rebuilt here \(FileNotFoundError"):
        load(out)


def test_the_stream_network_in_place_of_gdumbs_scorer_is_refused(class_il_stream, tmp_path):
    """The proof that load rebuilt the scorer tells the stream network (what load used before) from GDumb's
    retrained one, though both have the run's architecture; a tolerance for another device's arithmetic (1% in
    norm) does not blur them."""
    out = tmp_path / "gdumb"
    run(RunConfig("gdumb", "split-mnist-5k", hparams=SMALL["gdumb"], epochs=1, hidden=[16], device="cpu"), out,
        quiet=True, stream=class_il_stream, figures=NO_FIGURES)
    record = torch.load(out / "scorer.pt", weights_only=True)
    record["state"] = torch.load(out / "model.pt", weights_only=True)
    torch.save(record, out / "scorer.pt")
    with pytest.raises(ValueError, match="the module rebuilt here scores 16 recorded test examples otherwise"):
        load(out)
