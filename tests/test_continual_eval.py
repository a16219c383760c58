"""Continual evaluation (--eval-every): the curves leave the training untouched, score fixed seeded subsets, agree
with the end-of-task evaluator, continue exactly on resume; bad settings fail before training."""
import copy
import json

import pytest
import torch
from torch import nn

from clframework import Trainer, make_strategy, mlp
from clframework.benchmarks import make_benchmark
from clframework.evaluation.continual import ContinualEvaluator
from clframework import RunConfig, run


def _small(stream, train=192, test=100):
    """The stream with each task cut to a seeded sample of its examples: a few optimizer steps per task."""
    def pick(ex, k):
        return ex.take(torch.randperm(len(ex), generator=torch.Generator().manual_seed(0))[:k])

    stream.tasks = [t.with_splits(train=pick(t.examples("train"), train), test=pick(t.examples("test"), test))
                    for t in stream.tasks]
    return stream


@pytest.fixture(scope="module")
def class_stream():
    return _small(make_benchmark("split-mnist-5k", setting="class").subset([0, 1, 2]))


class BNNet(nn.Module):
    """A single-head net with BatchNorm and dropout: evaluation must change neither running stats nor the RNG."""

    def __init__(self, outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(32, outputs))

    def forward(self, x):
        return self.body(x)


def _fit(stream, strategy="naive", model=None, states=None, resume=None, **kw):
    torch.manual_seed(0)
    model = model or BNNet(stream.head_sizes[0])
    extra = dict(checkpoint_every=4, on_checkpoint=lambda s: states.append(copy.deepcopy(s))) if states is not None \
        else {}
    trainer = Trainer(model, make_strategy(strategy), epochs=2, seed=0, quiet=True, device="cpu", batch_size=64,
                      **extra, **kw)
    return trainer, trainer.fit(stream, resume=resume)


@pytest.mark.parametrize("strategy", ["naive", "er"])
def test_evaluating_during_training_changes_nothing_of_the_training(class_stream, strategy):
    plain, a = _fit(class_stream, strategy)
    watched, b = _fit(class_stream, strategy, eval_every=3, eval_subset=30)
    assert a.accuracy_matrix == b.accuracy_matrix and a.curves == b.curves
    assert a.task_il_matrix == b.task_il_matrix
    for (name, x), (_, y) in zip(plain.model.state_dict().items(), watched.model.state_dict().items()):
        assert torch.equal(x, y), name  # BatchNorm's running statistics included
    assert a.continual_eval is None and b.continual_eval["points"]


def test_points_steps_boundaries_and_seen_tasks(class_stream):
    _, res = _fit(class_stream, eval_every=2, eval_subset=40)
    ce = res.continual_eval
    steps_per_task = 2 * -(-len(class_stream.tasks[0].train_y) // 64)  # 2 epochs of ceil(n / 64) steps
    assert ce["boundaries"] == [steps_per_task * (i + 1) for i in range(3)]
    assert ce["sizes"] == [40, 40, 40] and ce["every"] == 2 and ce["subset"] == 40
    steps = [p["step"] for p in ce["points"]]
    expected = sorted({0, *ce["boundaries"], *range(2, ce["boundaries"][-1], 2)})
    assert steps == expected  # step 0, every 2nd step, each boundary once
    for p in ce["points"]:
        ends = ce["boundaries"]
        trained = next(i for i, e in enumerate(ends) if p["step"] < e) if p["step"] < ends[-1] else 2
        assert p["task"] == trained and len(p["accuracy"]) == trained + 1 == len(p["task_il_accuracy"])
        assert all(a * 40 == round(a * 40) for a in p["accuracy"])  # counts over 40 examples


def test_full_split_points_at_boundaries_equal_the_accuracy_matrix(class_stream):
    """Independent check of the batched, concatenated scoring: at each boundary the curve (whole split) equals the
    end-of-task evaluator's row on the tasks seen so far, class-IL and task-IL."""
    _, res = _fit(class_stream, eval_every=4)
    ce = res.continual_eval
    at = {p["step"]: p for p in ce["points"]}
    for i, end in enumerate(ce["boundaries"]):
        seen = i + 1
        assert at[end]["accuracy"][:seen] == pytest.approx(res.accuracy_matrix[i][:seen], abs=1e-12)
        assert at[end]["task_il_accuracy"][:seen] == pytest.approx(res.task_il_matrix[i][:seen], abs=1e-12)
    assert res.task_il_matrix[-1] != res.accuracy_matrix[-1]  # class setting: the masking matters


def test_subsets_are_fixed_seeded_and_sized(class_stream):
    a = ContinualEvaluator(class_stream, torch.device("cpu"), subset=30, seed=1)
    b = ContinualEvaluator(class_stream, torch.device("cpu"), subset=30, seed=1)
    c = ContinualEvaluator(class_stream, torch.device("cpu"), subset=30, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert any(not torch.equal(x, y) for x, y in zip(a.indices, c.indices))
    assert all(len(set(x.tolist())) == 30 for x in a.indices) and a.sizes == [30, 30, 30]
    model = BNNet(class_stream.head_sizes[0])
    model.body[4].eval()  # a module its owner keeps in eval mode stays so
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    first, again = a.evaluate(model, 2), a.evaluate(model, 2)
    assert torch.equal(first, again) and first.shape == (3, 2)
    assert model.training and not model.body[4].training and model.body[2].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_multi_head_task_setting():
    stream = _small(make_benchmark("split-mnist-5k").subset([0, 1]))
    torch.manual_seed(0)
    model = mlp(784, stream.head_sizes, hidden=(16,))
    res = Trainer(model, make_strategy("naive"), epochs=1, quiet=True, device="cpu", eval_every=2).fit(stream)
    last = res.continual_eval["points"][-1]
    assert last["accuracy"] == pytest.approx(res.accuracy_matrix[-1], abs=1e-12)
    assert last["accuracy"] == last["task_il_accuracy"]  # one head per task: task-IL is class-IL


def test_resume_mid_task_continues_the_curve_exactly(class_stream):
    states = []
    _, whole = _fit(class_stream, "er", states=states, eval_every=3, eval_subset=30)
    mid = next(s for s in states if s["epoch_in_flight"] is not None and s["position"]["task"] == 1)
    assert mid["progress"]["eval_points"] and mid["progress"]["eval_points"][-1]["step"] <= mid["global_step"]
    _, again = _fit(class_stream, "er", resume=mid, eval_every=3, eval_subset=30)
    assert again.continual_eval == whole.continual_eval
    assert again.accuracy_matrix == whole.accuracy_matrix


@pytest.mark.parametrize("settings, words", [
    (dict(eval_every=0), "--eval-every (eval_every) must be an integer >= 1"),
    (dict(eval_every=-5), "got -5"),
    (dict(eval_every=10, eval_subset=0), "--eval-subset (eval_subset) must be an integer >= 1"),
    (dict(eval_subset=10), "needs --eval-every"),
])
def test_bad_settings_fail_before_training(settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        RunConfig("naive", "split-mnist-5k", **settings).resolved()
    with pytest.raises(ValueError, match="must be an integer|needs"):
        Trainer(mlp(784, [2], hidden=(4,)), make_strategy("naive"), **settings)


def test_subset_larger_than_a_split_names_the_sizes(tmp_path, mnist_stream):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--eval-subset 500 is larger than task '.*''s test split \(\d+ examples; "
                                         r"2 of 2 tasks .*give at most \d+"):
        run(RunConfig("naive", eval_every=5, eval_subset=500, epochs=1, device="cpu"), out, quiet=True,
            stream=mnist_stream)
    assert not out.exists()  # nothing written


def test_cli_run_writes_curves_and_metrics(tmp_path, cli):
    out = tmp_path / "r"
    done = cli("run", "--strategy", "naive", "--benchmark", "split-mnist-5k", "--tasks", "2", "--epochs", "1",
               "--hidden", "16", "--eval-every", "10", "--eval-subset", "50", "--out", out, "--quiet",
               "--plots", "none", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "results.json").read_text())
    ce = res["continual_eval"]
    assert ce["every"] == 10 and ce["sizes"] == [50, 50] and len(ce["boundaries"]) == 2
    assert {"min_acc", "wc_acc", "wf10", "wp10", "lca10", "a_auc"} <= set(res["metrics"])
    bad = cli("run", "--strategy", "naive", "--benchmark", "split-mnist-5k", "--eval-every", "0",
              "--out", tmp_path / "bad")
    assert bad.returncode != 0 and "--eval-every (eval_every) must be an integer >= 1" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_continual_evaluation_guide_runs_and_holds_what_it_says(tmp_path, docs_python):
    """docs/continual-evaluation.md: its compare writes the new columns, paired tests, figure and curves; its Python
    example prints the points it states."""
    from test_docs import DOCS, run_document

    run_document(DOCS / "continual-evaluation.md", tmp_path, docs_python)
    study = tmp_path / "ce-study"
    summary = json.loads((study / "summary.json").read_text())
    for name in ("naive", "er"):
        assert {"min_acc", "wc_acc", "wf10", "wp10", "lca10", "a_auc"} <= set(summary["strategies"][name]["metrics"])
    assert {p["metric"] for p in summary["paired"]} >= {"acc", "bwt", "min_acc", "wc_acc"}
    table = (study / "table.md").read_text()
    assert "| min-ACC |" in table and "| ACC |" in table and "| BWT |" in table
    assert (study / "fig_continual.png").stat().st_size > 0
    run = json.loads((study / "er-seed1" / "results.json").read_text())
    assert run["continual_eval"]["every"] == 10 and run["continual_eval"]["sizes"] == [100, 100]


@pytest.mark.slow
def test_eval_cost_script_dry_run(tmp_path):
    """scripts/eval_cost.py --dry-run: its files, the three modes, and equal matrices with and without evaluation."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "eval_cost.py"
    spec = importlib.util.spec_from_file_location("eval_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--dry-run", "--device", "cpu", "--strategies", "naive", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "eval_cost.json").read_text())
    row = record["strategies"]["naive"]
    assert set(row["seconds"]) == {"off", "every_50", "every_1"} and row["same_matrix"]
    assert row["points"]["every_1"] > row["points"]["every_50"] > 0 and record["dry_run"]
    assert "| naive | every_1 |" in (tmp_path / "eval_cost.md").read_text()


def test_cli_compare_refuses_a_subset_larger_than_the_split_before_training(tmp_path, cli):
    out = tmp_path / "cmp"
    done = cli("compare", "--strategies", "naive,er", "--benchmark", "split-mnist-5k", "--seeds", "1",
               "--eval-every", "5", "--eval-subset", "100000", "--out", out, "--quiet")
    assert done.returncode != 0
    assert "--eval-subset 100000 is larger than task '0-1''s test split" in done.stderr and "give at most" in done.stderr
    assert not out.exists()


def test_tasks_read_from_disk_are_scored_like_in_memory_ones(tmp_path):
    """An image-folder stream (examples read through its dataset, not held on the device): the whole-split curve at
    the last boundary equals the end-of-task evaluator's row."""
    import fake_folders

    from clframework.benchmarks import make_benchmark as make

    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=10, size=8)
    stream = make("split-imagefolder", data_root=str(root), setting="class")
    assert not stream.tasks[0].in_memory
    torch.manual_seed(0)
    model = mlp(3 * 8 * 8, stream.head_sizes, hidden=(8,))
    res = Trainer(model, make_strategy("naive"), epochs=2, batch_size=8, quiet=True, device="cpu",
                  eval_every=2).fit(stream)
    last = res.continual_eval["points"][-1]
    assert last["accuracy"] == pytest.approx(res.accuracy_matrix[-1], abs=1e-12)
    assert last["task_il_accuracy"] == pytest.approx(res.task_il_matrix[-1], abs=1e-12)
