"""`clframework reproduce stability-gap` (De Lange et al., ICLR 2023): its protocol against the authors' config
(mattdl/ContinualEvaluation, commit bae2a58), the gap at every boundary against a hand computation, and a quick run end
to end on the embedded MNIST subset."""
import json

import pytest

from clframework.apps.cli import main
from clframework.apps.reproduce import plan, table, task_gaps


@pytest.mark.parametrize("dataset,subset", [("mnist-5k", None), ("mnist", 1000)])
def test_the_protocol_is_the_authors_split_mnist_config(dataset, subset):
    """reproduce/configs/splitmnist_ER.yaml and main.py's defaults: MLP 400-400, SGD lr 0.01 momentum 0.9, minibatch
    256, 10 epochs, class-incremental, evaluation every iteration on 1000 examples per task, 5 seeds; ER with a
    class-balanced memory of 2000. mnist-5k has 200 test examples per task: all of them are scored."""
    p = plan("stability-gap", dataset)
    assert p["seeds"] == 5 and p["benchmark_options"]["setting"] == "class"
    assert list(p["configs"]) == ["ER (memory 2000)", "fine-tuning", "A-GEM (memory 2000)", "LwF", "EWC"]
    for cfg in p["configs"].values():
        train = cfg.resolved()["train"]
        assert (train["hidden"], train["optimizer"], train["lr"], train["momentum"], train["batch_size"],
                train["epochs"]) == ([400, 400], "sgd", 0.01, 0.9, 256, 10)
        assert cfg.eval_every == 1 and cfg.eval_subset == subset
    er = p["configs"]["ER (memory 2000)"].resolved()
    assert er["strategy"] == "replay" and er["hparams"] == {"memory_size": 2000, "selection": "class-balanced"}
    assert plan("stability-gap", "mnist-5k", quick=True)["scaled"] == ["epochs 10 -> 2", "seeds 5 -> 2"]


def test_task_gaps_by_hand():
    curve = {"boundaries": [3, 6, 9], "points": [
        {"step": 0, "task": 0, "accuracy": [0.1]}, {"step": 1, "task": 0, "accuracy": [0.6]},
        {"step": 2, "task": 0, "accuracy": [0.8]}, {"step": 3, "task": 0, "accuracy": [0.9, 0.0]},
        {"step": 4, "task": 1, "accuracy": [0.4, 0.5]}, {"step": 5, "task": 1, "accuracy": [0.3, 0.7]},
        {"step": 6, "task": 1, "accuracy": [0.7, 0.9, 0.0]}, {"step": 7, "task": 2, "accuracy": [0.2, 0.1, 0.6]},
        {"step": 8, "task": 2, "accuracy": [0.5, 0.1, 0.7]}, {"step": 9, "task": 2, "accuracy": [0.6, 0.4, 0.8]}]}
    # task 1: 0.9 at its end (step 3); lowest during task 2 (steps 4-6) 0.3 at step 5, 2 steps after the boundary;
    # 0.7 at the end of task 2 (step 6). Its drop in task 3 (0.2) is not task 2's gap. Task 2: 0.9 at step 6;
    # lowest during task 3 (steps 7-9) 0.1, first at step 7 (1 step after); 0.4 at step 9. Task 3 is the last.
    assert task_gaps(curve) == [
        {"task": 1, "at_end": 0.9, "min_next": 0.3, "steps_to_min": 2, "end_next": 0.7},
        {"task": 2, "at_end": 0.9, "min_next": 0.1, "steps_to_min": 1, "end_next": 0.4}]
    assert task_gaps({"boundaries": [3], "points": curve["points"][:4]}) == []


def test_gap_table_has_a_column_per_boundary():
    gap = {"task": 1, "at_end": 0.99, "min_next": 0.25, "min_next_spread": 0.05, "steps_to_min": 4.5,
           "end_next": 0.9}
    arm = {"acc_mean": 0.5, "acc_spread": 0.1, "bwt_mean": -0.2, "seconds_per_run": 1.0, "min_acc_mean": 0.2,
           "min_acc_spread": 0.01, "wc_acc_mean": 0.3, "wc_acc_spread": 0.02,
           "gaps": [gap, {**gap, "task": 2, "min_next": 0.0, "min_next_spread": 0.0}]}
    text = table({"experiment": "stability-gap", "benchmark": "b", "seeds": 2, "scaled": [], "spread": "sd",
                  "arms": {"ER": arm}})
    assert "| arm | task 1 during task 2 | task 2 during task 3 |" in text
    assert "| ER | 0.990 -> 0.250 +- 0.050 (4.5) -> 0.900 | 0.990 -> 0.000 +- 0.000 (4.5) -> 0.900 |" in text
    assert "| ER | 0.2000 +- 0.0100 | 0.3000 +- 0.0200 |" in text


def test_stability_gap_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "sg"
    assert main(["reproduce", "stability-gap", "--quick", "--seeds", "1", "--epochs", "1", "--arms", "er",
                 "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "reproduction.json").read_text())
    er = result["arms"]["ER (memory 2000)"]
    assert 0 <= er["min_acc_mean"] <= 1 and 0 <= er["wc_acc_mean"] <= 1
    assert [g["task"] for g in er["gaps"]] == [1, 2, 3, 4]  # split MNIST's five tasks: four boundaries
    assert all(g["min_next"] <= min(g["at_end"], g["end_next"]) for g in er["gaps"])
    assert "fig2_continual_accuracy.png" in result["figures"] and (out / "fig2_continual_accuracy.png").exists()
    run = json.loads((out / "er-memory-2000-seed0" / "results.json").read_text())
    assert run["config"]["setting"] == "class" and run["continual_eval"]["every"] == 1
    assert abs(run["metrics"]["min_acc"] - er["min_acc_mean"]) < 1e-12
    table = (out / "reproduction.md").read_text()
    assert "| ER (memory 2000) |" in table and "min-ACC" in table and "mattdl/ContinualEvaluation" in table
    assert "| arm | task 1 during task 2 | task 2 during task 3 | task 3 during task 4 | task 4 during task 5 |" in table
