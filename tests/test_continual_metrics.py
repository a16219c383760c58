"""The continual-evaluation metrics against a curve worked out by hand (values in the comments), WF/WP against a
transcription of the authors' windowed algorithm, and their place in compare's table and paired tests."""
import random
from collections import deque

import pytest

from clframework.evaluation import metrics as M
from clframework.evaluation.aggregate import format_console, head_to_head, paired_table, table_markdown

# three tasks, 4 steps each, evaluated every 2 steps; task 2's subset twice as large
CURVE = {"every": 2, "sizes": [10, 10, 20], "boundaries": [4, 8, 12], "points": [
    {"step": 0, "task": 0, "accuracy": [0.1]},
    {"step": 2, "task": 0, "accuracy": [0.6]},
    {"step": 4, "task": 1, "accuracy": [0.9, 0.2]},       # boundary: end of task 0, step 0 of task 1
    {"step": 6, "task": 1, "accuracy": [0.5, 0.7]},
    {"step": 8, "task": 2, "accuracy": [0.7, 0.8, 0.0]},  # boundary
    {"step": 10, "task": 2, "accuracy": [0.4, 0.6, 0.5]},
    {"step": 12, "task": 2, "accuracy": [0.6, 0.7, 0.9]},  # the end
]}


def test_min_acc_and_wc_acc_by_hand():
    # task 0 after step 4: 0.5, 0.7, 0.4, 0.6 -> 0.4; task 1 after step 8: 0.6, 0.7 -> 0.6; the last task has none
    assert M.min_acc(CURVE) == pytest.approx((0.4 + 0.6) / 2)
    # (1/T) a_T + (1 - 1/T) min-ACC with a_T = 0.9 at the end
    assert M.wc_acc(CURVE) == pytest.approx(0.9 / 3 + 2 / 3 * 0.5)


def test_windowed_forgetting_and_plasticity_by_hand():
    # tracked: task 0 at every point (0.1 0.6 0.9 0.5 0.7 0.4 0.6); task 1 after step 4 (0.7 0.8 0.6 0.7);
    # task 2 after step 8 (0.5 0.9)
    # w = 2 (neighbours): drops 0.4 (0.9->0.5), 0.2 (0.8->0.6), 0; rises 0.5 (0.1->0.6), 0.1, 0.4
    assert M.windowed_forgetting(CURVE, 2) == pytest.approx((0.4 + 0.2 + 0) / 3)
    assert M.windowed_plasticity(CURVE, 2) == pytest.approx((0.5 + 0.1 + 0.4) / 3)
    # w = 3 (two apart too): task 0's rise 0.1->0.9 = 0.8; drops unchanged
    assert M.windowed_forgetting(CURVE, 3) == pytest.approx((0.4 + 0.2 + 0) / 3)
    assert M.windowed_plasticity(CURVE, 3) == pytest.approx((0.8 + 0.1 + 0.4) / 3)
    assert M._largest_change([0.9, 0.1, 0.8], 3, +1) == pytest.approx(0.7)  # see _authors_window


def test_lca_and_anytime_accuracy_by_hand():
    # beta = 1: each task's first two points from its step 0: (0.1, 0.6), (0.2, 0.7), (0.0, 0.5)
    assert M.learning_curve_area(CURVE, beta=1) == pytest.approx((0.35 + 0.45 + 0.25) / 3)
    # beta = 10 takes every point of a task's training: task 0 (0.1 0.6 0.9), task 1 (0.2 0.7 0.8), task 2
    # (0.0 0.5 0.9)
    assert M.learning_curve_area(CURVE) == pytest.approx((1.6 / 3 + 1.7 / 3 + 1.4 / 3) / 3)
    # A_AUC: steps 2..12, pooled over the tasks begun before the step (task 2 weighs 20 examples):
    # 0.6, 0.9, (0.5+0.7)/2, (0.7+0.8)/2, (4+6+10)/40, (6+7+18)/40
    assert M.anytime_accuracy(CURVE) == pytest.approx((0.6 + 0.9 + 0.6 + 0.75 + 0.5 + 0.775) / 6)


def _authors_window(values, w, sign):
    """The authors' algorithm (Mattdl/ContinualEvaluation @ bae2a583, src/eval/continual_eval_metrics.py,
    WindowedForgettingPluginMetric): a deque of the last w values; after each append, the largest delta between an
    earlier and a later value in it, maxed into a running value that starts at 0. Written again here from that
    description, with its pruning for forgetting (skip a start lower than an earlier one: it cannot give a larger
    drop). For plasticity the pruning is left out: in the authors' code it skips the low starts, which give the
    largest rises (window 0.9, 0.1, 0.8 scores 0 there, not 0.7; docs/fidelity.md)."""
    window, best = deque(), 0.0
    for v in values:
        window.append(v)
        if len(window) > w:
            window.popleft()
        delta, top = float("-inf"), float("-inf")
        for i, a in enumerate(window):
            if sign < 0 and a < top:
                continue
            top = max(top, a)
            for b in list(window)[i + 1:]:
                delta = max(delta, (a - b) if sign < 0 else (b - a))
        if len(window) > 1:
            best = max(best, delta)
    return best


@pytest.mark.parametrize("w", [2, 3, 5, 10])
def test_window_matches_the_authors_algorithm_on_random_curves(w):
    rng = random.Random(w)
    for _ in range(200):
        values = [rng.random() for _ in range(rng.randint(1, 25))]
        assert M._largest_change(values, w, -1) == pytest.approx(_authors_window(values, w, -1))
        assert M._largest_change(values, w, +1) == pytest.approx(_authors_window(values, w, +1))


def test_one_task_and_no_periodic_point():
    one = {"every": 100, "sizes": [5], "boundaries": [3], "points": [
        {"step": 0, "task": 0, "accuracy": [0.2]}, {"step": 3, "task": 0, "accuracy": [0.8]}]}
    assert M.min_acc(one) != M.min_acc(one)  # nan: no earlier task
    assert M.wc_acc(one) == pytest.approx(0.8)  # T = 1: the accuracy itself
    assert M.anytime_accuracy(one) != M.anytime_accuracy(one)  # nan: no step is a multiple of 100
    assert set(M.continual_summary(one)) == {"wc_acc", "wf10", "wp10", "lca10"}  # the undefined ones left out
    assert set(M.continual_summary(CURVE)) == {"min_acc", "wc_acc", "wf10", "wp10", "lca10", "a_auc"}


def _summary(values):
    """A compare summary of two strategies x three seeds whose runs carry the given min_acc per seed."""
    strategies = {}
    for name, per_seed in values.items():
        runs = [{"seed": s, "metrics": {"acc": 0.5, "min_acc": v}} for s, v in enumerate(per_seed)]
        from clframework.evaluation.aggregate import describe
        strategies[name] = {"runs": runs, "seconds_per_run": 1.0, "cpu_seconds_per_run": 1.0,
                            "metrics": {"acc": describe([0.5] * 3), "min_acc": describe(per_seed)}}
    return {"benchmark": "b", "seeds": [0, 1, 2], "strategies": strategies,
            "paired": paired_table({n: s["runs"] for n, s in strategies.items()})}


def test_compare_table_and_paired_tests_carry_the_continual_metrics():
    summary = _summary({"er": [0.6, 0.7, 0.65], "naive": [0.1, 0.3, 0.15]})
    row = head_to_head(summary)[0]
    assert row["min_acc_mean"] == pytest.approx(0.65) and "wf10_mean" not in row  # only the metrics runs have
    pair = next(p for p in summary["paired"] if p["metric"] == "min_acc")
    assert pair["mean_diff"] == pytest.approx((0.5 + 0.4 + 0.5) / 3) and pair["p_value"] is not None
    assert "| min-ACC |" in table_markdown(summary)
    console = format_console(summary).splitlines()
    at = console.index("during training (--eval-every), mean over seeds:")
    assert console[at + 1].split() == ["strategy", "min-ACC"]
    assert console[at + 2].split() == ["er", "0.6500"]
    assert console[at + 3].split() == ["naive", f"{(0.1 + 0.3 + 0.15) / 3:.4f}"]
    plain = _summary({"er": [0.6, 0.7, 0.65], "naive": [0.1, 0.3, 0.15]})
    for s in plain["strategies"].values():
        s["metrics"].pop("min_acc")
    assert "min-ACC" not in table_markdown(plain) and "min_acc_mean" not in head_to_head(plain)[0]
    assert "during training" not in format_console(plain)
