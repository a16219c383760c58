"""`clframework report`: the comparison table of a real tiny study, checked against an independent computation from
its run folders' results.json (numpy mean and SEM, scipy's paired t-test); the paper's numbers beside a
reproduction's."""
import csv
import io
import json

import numpy as np
import pytest
from scipy import stats

from clframework.apps.cli import main

STRATEGIES = ["naive", "si", "ewc"]
METRICS = ["acc", "bwt", "fwt", "forgetting"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "cmp"
    assert main(["compare", "--strategies", ",".join(STRATEGIES), "--seeds", "3", "--tasks", "2", "--epochs", "1",
                 "--hidden", "16", "--quiet", "--out", str(out)]) == 0
    return out


def _expected(study, baseline=None, alpha=0.05):
    """From the run folders alone: per strategy and metric mean, SEM, best, reference and p-value."""
    values = {s: {m: {} for m in METRICS} for s in STRATEGIES}
    for s in STRATEGIES:
        for seed in range(3):
            res = json.loads((study / f"{s}-seed{seed}" / "results.json").read_text())
            for m in METRICS:
                values[s][m][seed] = res["metrics"][m]
    out = {}
    for m in METRICS:
        means = {s: np.mean(list(values[s][m].values())) for s in STRATEGIES}
        best = (min if m == "forgetting" else max)(means.values())
        ref = baseline or next(s for s in STRATEGIES if means[s] == best)
        for s in STRATEGIES:
            v = np.array([values[s][m][k] for k in range(3)])
            p = None
            if s != ref:
                d = v - np.array([values[ref][m][k] for k in range(3)])
                p = None if np.ptp(d) <= 1e-12 else stats.ttest_rel(v, [values[ref][m][k] for k in range(3)]).pvalue
            out[s, m] = {"mean": means[s], "sem": v.std(ddof=1) / np.sqrt(3), "best": means[s] == best, "ref": ref,
                         "p": p, "significant": p is not None and p < alpha}
    return out


def _csv(study, capsys, *args):
    capsys.readouterr()
    assert main(["report", str(study), "--format", "csv", *args]) == 0
    return {(r["strategy"], r["metric"]): r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}


@pytest.mark.parametrize("baseline,alpha", [(None, 0.05), ("naive", 0.999)])
def test_csv_matches_an_independent_computation(study, capsys, baseline, alpha):
    args = (["--baseline", baseline] if baseline else []) + ["--alpha", str(alpha)]
    got, want = _csv(study, capsys, *args), _expected(study, baseline, alpha)
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert float(g["mean"]) == pytest.approx(w["mean"], abs=1e-12)
        assert float(g["sem"]) == pytest.approx(w["sem"], abs=1e-12)
        assert (g["best"], g["reference"], g["significant"]) == (str(w["best"]), w["ref"], str(w["significant"]))
        assert (g["p_value"] == "") == (w["p"] is None)
        if w["p"] is not None:
            assert float(g["p_value"]) == pytest.approx(w["p"], rel=1e-9)
    if baseline:  # with a lax alpha every strategy that differs from the baseline on some seed is marked
        assert any(w["significant"] for w in want.values())


def test_markdown_and_latex_bold_the_best_and_mark_significance(study, capsys, tmp_path):
    want = _expected(study, "naive", 0.999)
    assert main(["report", str(study), "--baseline", "naive", "--alpha", "0.999", "--out",
                 str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| strategy")}
    for (s, m), w in want.items():
        cell = rows[s][METRICS.index(m)].strip(" |")
        text = f"{w['mean']:.4f} ± {w['sem']:.4f}"
        assert cell == (f"**{text}**" if w["best"] else text) + ("\\*" if w["significant"] else ""), (s, m)
    assert "paired t-test" in md and "the baseline naive" in md
    capsys.readouterr()
    assert main(["report", str(study), "--format", "latex", "--metrics", "acc"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}{lc}" in latex and r"\toprule" in latex and latex.count(r"\\") == 4  # head + 3 rows
    best = next(s for s in STRATEGIES if want[s, "acc"]["best"])
    row = next(line for line in latex.splitlines() if line.startswith(best + " &"))
    assert rf"\mathbf{{{want[best, 'acc']['mean']:.4f} \pm {want[best, 'acc']['sem']:.4f}}}" in row


def test_report_errors_name_the_problem(study, tmp_path, capsys):
    assert main(["report", str(study), "--baseline", "lwf"]) == 2
    assert "--baseline 'lwf' is not in this study; choose one of naive, si, ewc" in capsys.readouterr().err
    assert main(["report", str(study), "--metrics", "acc,speed"]) == 2
    assert "unknown metric(s) speed" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json in" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_tables_put_the_papers_result_beside_ours(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "split-mnist", "--dataset", "mnist-5k", "--seeds", "1", "--epochs", "1", "--arms",
                 "si,ewc,si:c=0.5", "--quiet", "--out", str(out)]) == 0
    saved = json.loads((out / "reproduction.json").read_text())
    assert {label: a["published"] for label, a in saved["arms"].items()} == {
        "SI (c=1)": "average stays close to 1 (Sec. 5.1, Fig. 3)",
        "EWC (exact Fisher)": "not in the paper (Sec. 5.1 has no EWC arm)",
        "SI (c=0.5)": "not in the paper (its arm: SI (c=1))"}
    row = next(line for line in (out / "reproduction.md").read_text().splitlines() if line.startswith("| SI (c=1) |"))
    ours = saved["arms"]["SI (c=1)"]["acc_mean"]
    assert row.startswith(f"| SI (c=1) | {ours:.4f} +- 0.0000 |")
    assert row.endswith("| average stays close to 1 (Sec. 5.1, Fig. 3) |")
    table = (out / "reproduction.md").read_text()
    assert "| paper (source) |" in table and "Zenke, Poole & Ganguli, ICML 2017" in table
    assert "this run is on mnist-5k" in table
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    md = capsys.readouterr().out
    assert md.splitlines()[0] == "| strategy | ACC | BWT | FWT | Forgetting | paper |"
    assert "| average stays close to 1 (Sec. 5.1, Fig. 3) |" in md


@pytest.fixture(scope="module")
def bounded_study(tmp_path_factory):
    """A class-incremental study with joint, the upper bound: its early rows score the untrained model."""
    out = tmp_path_factory.mktemp("report") / "bounded"
    assert main(["compare", "--strategies", "naive,er,joint", "--seeds", "2", "--tasks", "2", "--epochs", "1",
                 "--setting", "class", "--hidden", "16", "--quiet", "--out", str(out)]) == 0
    return out


def test_a_bound_is_marked_never_bolded_tested_or_tested_against(bounded_study, capsys):
    """Issue 30, item 2: report left joint unmarked, bold in every column (BWT +0.77 from its untrained early rows)
    and starred er and der as "differs from the best (joint)"."""
    rows = _csv(bounded_study, capsys)
    joint = {m: rows["joint", m] for m in METRICS}
    assert all(r["bound"] == "upper" and r["best"] == "False" and r["significant"] == "False" and r["p_value"] == ""
               and r["reference"] == "" for r in joint.values())
    assert {r["reference"] for (s, m), r in rows.items() if s != "joint" and m != "fwt"} <= {"naive", "er"}
    for m in ("acc", "bwt", "forgetting"):  # the best of the learners is bold
        learners = {s: float(rows[s, m]["mean"]) for s in ("naive", "er")}
        best = (min if m == "forgetting" else max)(learners.values())
        assert {s for s in learners if rows[s, m]["best"] == "True"} == {s for s, v in learners.items() if v == best}
    capsys.readouterr()
    assert main(["report", str(bounded_study)]) == 0
    md = capsys.readouterr().out
    row = next(line for line in md.splitlines() if line.startswith("| joint"))
    assert row.startswith("| joint [BOUND: upper] |") and "**" not in row and "\\*" not in row
    assert "joint: bound (reference points, not continual learners), never bolded or tested" in md
    assert main(["report", str(bounded_study), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    row = next(line for line in latex.splitlines() if line.startswith("joint"))
    assert r"\mathbf" not in row and "^{*}" not in row
    assert main(["report", str(bounded_study), "--baseline", "joint"]) == 2
    assert "--baseline 'joint' is a bound (upper), not a continual learner; choose one of naive, er" in \
        capsys.readouterr().err


def test_fwt_is_named_meaningless_in_class_il_and_left_unmarked(bounded_study, capsys):
    rows = _csv(bounded_study, capsys)
    fwt = [r for (s, m), r in rows.items() if m == "fwt"]
    assert fwt and all(r["meaningful"] == "False" and r["best"] == "False" and r["significant"] == "False"
                       for r in fwt)
    assert all(r["meaningful"] == "True" for (s, m), r in rows.items() if m != "fwt")
    capsys.readouterr()
    assert main(["report", str(bounded_study)]) == 0
    md = capsys.readouterr().out
    assert "FWT is not meaningful in the class-incremental setting (a task's classes score 0 before it is trained): " \
           "shown without marks" in md
    fwt_column = [line.split(" | ")[3] for line in md.splitlines() if line.startswith("| ")][2:]
    assert fwt_column and not any("**" in c or "\\*" in c for c in fwt_column)
