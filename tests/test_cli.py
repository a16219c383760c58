"""The command line end to end on the embedded real data: list, run (results.json) and compare (summary.json)."""
import json
import subprocess
import sys

from clframework.apps.cli import main
from clframework.evaluation import metrics


def test_list_shows_strategies_hyperparameters_and_benchmarks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "si" in out and "c=1.0, xi=0.001" in out and "ewc_lambda=100.0" in out
    for defaults in ("mas_lambda=1.0", "alpha=1.0, temperature=2.0", "memory_size=200, selection='reservoir'",
                     "memory_size=200, sample_size=256, selection='reservoir'"):
        assert defaults in out
    assert "split-mnist-5k" in out and "data on this machine" in out


def test_run_writes_results_json(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "clframework", "run", "--strategy", "si", "--benchmark",
                           "split-mnist-5k", "--set", "c=0.5", "--epochs", "1", "--seed", "4", "--out", str(out),
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["strategy"] == "si" and res["benchmark"] == "split-mnist-5k" and res["seed"] == 4
    assert res["hparams"] == {"c": 0.5, "xi": 0.001, "clamp": True, "omega_from_total_loss": False}
    assert res["config"]["epochs"] == 1 and res["config"]["batch_size"] == 64 and res["config"]["hidden"] == [256, 256]
    assert res["tasks"] == ["0-1", "2-3", "4-5", "6-7", "8-9"]
    R = res["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert res["metrics"]["acc"] == metrics.acc(R) and res["metrics"]["bwt"] == metrics.bwt(R)
    assert res["metrics"]["forgetting"] == metrics.forgetting(R)
    assert R[0][0] > 0.9  # digits 0 vs 1 after one epoch on real data
    assert 0 < res["train_seconds"] <= res["wall_seconds"]


def test_compare_writes_summary_json(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--strategies", "naive,si", "--seeds", "2", "--epochs", "1", "--out", str(out),
                 "--quiet", "--set", "si.c=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"naive", "si"}
    si = summary["strategies"]["si"]
    accs = [r["metrics"]["acc"] for r in si["runs"]]
    assert [r["seed"] for r in si["runs"]] == [0, 1]
    assert abs(si["acc_mean"] - sum(accs) / 2) < 1e-12
    assert abs(si["acc_sem"] - abs(accs[0] - accs[1]) / 2) < 1e-12  # SEM of two values: |a - b| / 2
    assert si["hparams"]["c"] == 2.0
    table = capsys.readouterr().out
    assert "naive" in table and "+-" in table
    assert (out / "si-seed1" / "results.json").is_file()
