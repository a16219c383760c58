"""`clframework bench` in a tiny setting: every entry appears in the printed table with positive numbers, and the
files written with --out hold the same rows."""
import json
import re

import pytest
import torch

from clframework.apps.bench import ENTRIES, BenchConfig, resolve
from clframework.apps.cli import main

pytest.importorskip("avalanche")

ROW = re.compile(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def test_bench_prints_every_entry(tmp_path, capsys):
    threads = torch.get_num_threads()
    # one thread: intra-op threads on a shared, busy 2-core machine make tiny steps many times slower
    code = main(["bench", "--quick", "--max-train", "96", "--batch-size", "32", "--threads", "1",
                 "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # restored
    assert code == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[m.group(1)] = [float(v) for v in m.groups()[1:]]
    assert sorted(rows) == sorted(ENTRIES)
    for entry, (seconds, ratio, acc, peak_mb, cpu) in rows.items():
        assert seconds > 0 and ratio > 0 and cpu > 0 and peak_mb >= 0, entry  # peak: RSS growth, never below the start
        assert 0 < acc <= 1, entry
    assert rows["floor"][1] == 1.0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["entry"] for r in saved["rows"]] == list(ENTRIES)
    assert saved["train_examples"] == [96, 96] and saved["train"]["epochs"] == 1
    targets = {t["target"] for t in saved["targets"]}
    assert {"naive <= 1.10x floor", "si accuracy above Avalanche's naive, si and ewc"} <= targets
    assert "| floor |" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("config, message", [
    (BenchConfig(entries=["si", "fast"]), "unknown bench entries"),
    (BenchConfig(entries=["si"]), "must include 'floor'"),
    (BenchConfig(repeats=0), "repeats must be >= 1"),
])
def test_bad_bench_settings_fail_before_training(config, message):
    with pytest.raises(ValueError, match=message):
        resolve(config)


def test_bench_study_times_jobs1_and_jobs2_on_one_grid(tmp_path, capsys):
    code = main(["bench", "--study", "--modes", "jobs1,jobs2", "--strategies", "naive,si", "--seeds", "2",
                 "--epochs", "1", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "study.json").read_text())
    rows = {r["mode"]: r for r in saved["rows"]}
    assert set(rows) == {"jobs1", "jobs2"} and saved["runs"] == 4
    assert rows["jobs2"]["jobs"] == 2 and rows["jobs2"]["threads_per_run"] == 1
    assert rows["jobs1"]["speedup"] == 1.0 and rows["jobs2"]["seconds"] > 0
    assert abs(rows["jobs2"]["speedup"] - rows["jobs1"]["seconds"] / rows["jobs2"]["seconds"]) < 1e-12
    assert rows["jobs2"]["same_matrices_as_jobs2"] is True
    assert len(rows["jobs2"]["matrices"]["si"]) == 2
    assert re.search(r"^jobs2\s+2\s+1\s+[\d.]+\s+[\d.]+x", out, re.M) and "jobs2 >= 1.5x jobs1" in out


def test_bad_study_bench_modes_fail_before_training():
    from clframework.apps.bench import StudyBenchConfig, run_study_bench

    with pytest.raises(ValueError, match="--modes takes jobs1"):
        run_study_bench(StudyBenchConfig(modes=["jobs2"]))
