"""Aggregation across seeds against numpy/scipy on fixed inputs; the table formats read back."""
import csv
import io

import numpy as np
import pytest
from scipy import stats

from clframework.evaluation import aggregate as A

VALUES = [0.91, 0.87, 0.95, 0.89]


def _run(seed, acc, bwt=-0.1, T=2):
    R = [[acc + 0.05, 0.5], [acc - 0.02, acc + 0.02]][:T]
    return {"seed": seed, "metrics": {"acc": acc, "bwt": bwt, "forgetting": -bwt, "fwt": 0.01 * seed},
            "accuracy_matrix": R, "average_seen": [R[0][0], (R[1][0] + R[1][1]) / 2], "wall_seconds": 2.0 + seed}


def test_describe_matches_numpy_and_scipy():
    d = A.describe(VALUES)
    assert d["mean"] == pytest.approx(np.mean(VALUES))
    assert d["sd"] == pytest.approx(np.std(VALUES, ddof=1))
    assert d["sem"] == pytest.approx(stats.sem(VALUES))
    assert d["n"] == 4


def test_describe_single_value_has_no_spread():
    assert A.describe([0.7]) == {"mean": 0.7, "sd": None, "sem": None, "n": 1}
    with pytest.raises(ValueError, match="non-empty"):
        A.describe([])


def test_cellwise_matches_numpy():
    rng = np.random.default_rng(0)
    mats = rng.uniform(size=(5, 3, 3))
    c = A.cellwise(mats.tolist())
    assert np.allclose(c["mean"], mats.mean(0))
    assert np.allclose(c["sd"], mats.std(0, ddof=1))
    assert np.allclose(c["sem"], stats.sem(mats, axis=0))
    assert A.cellwise([mats[0].tolist()])["sem"] is None


def test_paired_matches_scipy_ttest_rel_and_t_interval():
    a = {0: 0.95, 1: 0.97, 2: 0.93, 3: 0.96, 9: 0.5}  # seed 9 has no partner in b: ignored
    b = {3: 0.90, 2: 0.91, 1: 0.92, 0: 0.88}
    p = A.paired(a, b)
    x, y = np.array([0.95, 0.97, 0.93, 0.96]), np.array([0.88, 0.92, 0.91, 0.90])
    d = x - y
    assert p["seeds"] == [0, 1, 2, 3] and p["n"] == 4
    assert p["mean_diff"] == pytest.approx(d.mean())
    ref = stats.ttest_rel(x, y)
    assert p["t"] == pytest.approx(ref.statistic) and p["p_value"] == pytest.approx(ref.pvalue)
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((lo, hi))
    assert p["ci_low"] > 0  # A beats B on these inputs, and the interval says so
    assert A.paired(a, b, confidence=0.99)["ci_low"] < p["ci_low"]


def test_paired_small_or_degenerate_samples_say_why():
    one = A.paired({0: 0.9}, {0: 0.8})
    assert one["mean_diff"] == pytest.approx(0.1) and one["p_value"] is None and one["ci_low"] is None
    assert "--seeds 2" in one["note"]
    same = A.paired({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7})
    assert same["p_value"] is None and "no spread" in same["note"]
    with pytest.raises(ValueError, match="share none"):
        A.paired({0: 0.9}, {1: 0.9})


def _summary():
    runs = {"si": [_run(s, v) for s, v in enumerate([0.95, 0.97, 0.93])],
            "naive": [_run(s, v, bwt=-0.3) for s, v in enumerate([0.80, 0.84, 0.79])]}
    summary = {"benchmark": "toy", "seeds": [0, 1, 2], "strategies": {}}
    for name, rs in runs.items():
        summary["strategies"][name] = {**A.aggregate_runs(rs), "runs": rs,
                                       "seconds_per_run": float(np.mean([r["wall_seconds"] for r in rs]))}
    summary["paired"] = A.paired_table(runs)
    return runs, summary


def test_aggregate_runs_and_paired_table():
    runs, summary = _summary()
    si = summary["strategies"]["si"]
    assert si["metrics"]["acc"]["mean"] == pytest.approx(0.95)
    assert si["metrics"]["acc"]["sem"] == pytest.approx(stats.sem([0.95, 0.97, 0.93]))
    assert np.allclose(si["matrix"]["mean"], np.mean([r["accuracy_matrix"] for r in runs["si"]], axis=0))
    assert np.allclose(si["average_seen"]["mean"], np.mean([r["average_seen"] for r in runs["si"]], axis=0))
    rows = summary["paired"]
    assert [(r["a"], r["b"], r["metric"]) for r in rows] == [("si", "naive", m) for m in A.METRICS
                                                             if m in runs["si"][0]["metrics"]]
    acc_row = rows[0]
    assert acc_row["p_value"] == pytest.approx(stats.ttest_rel([0.95, 0.97, 0.93], [0.80, 0.84, 0.79]).pvalue)


def test_tables_read_back():
    _, summary = _summary()
    rows = A.head_to_head(summary)
    parsed = list(csv.DictReader(io.StringIO(A.table_csv(rows))))
    assert [r["strategy"] for r in parsed] == ["si", "naive"]
    assert float(parsed[0]["acc_mean"]) == pytest.approx(0.95)
    assert float(parsed[1]["bwt_sd"]) == pytest.approx(0.0)
    md = A.table_markdown(summary)
    assert "| si | 0.9500 ± " in md and "| si | naive | acc | +0.1400 |" in md
    console = A.format_console(summary)
    assert "naive" in console and "0.8100" in console
    assert "acc si - naive: +0.1400 over 3 paired seed(s); 95% CI [" in console
