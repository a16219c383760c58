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


DISPLAY = {"naive": "Fine-tuning", "si": "SI", "ewc": "EWC"}


@pytest.mark.parametrize("scale", ["percent", "fraction"])
def test_markdown_and_latex_bold_the_best_and_mark_significance(study, capsys, tmp_path, scale):
    want = _expected(study, "naive", 0.999)
    assert main(["report", str(study), "--baseline", "naive", "--alpha", "0.999", "--scale", scale, "--out",
                 str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert md.splitlines()[0] == "| Method | ACC | BWT | FWT | Forgetting |"  # task-IL: the four, FWT too
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| Method")}
    number = (lambda v: f"{100 * v:.2f}") if scale == "percent" else (lambda v: f"{v:.4f}")
    for (s, m), w in want.items():
        cell = rows[DISPLAY[s]][METRICS.index(m)].strip(" |")
        text = f"{number(w['mean'])} ± {number(w['sem'])}"
        assert cell == (f"**{text}**" if w["best"] else text) + ("\\*" if w["significant"] else ""), (s, m)
    assert "paired t-test" in md and "the baseline Fine-tuning" in md
    assert ("in %" if scale == "percent" else "as fractions") in md
    capsys.readouterr()
    assert main(["report", str(study), "--format", "latex", "--metrics", "acc"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}{lc}" in latex and r"\toprule" in latex and latex.count(r"\\") == 4  # head + 3 rows
    best = next(s for s in STRATEGIES if want[s, "acc"]["best"])
    row = next(line for line in latex.splitlines() if line.startswith(DISPLAY[best] + " &"))
    assert rf"\mathbf{{{100 * want[best, 'acc']['mean']:.2f} \pm {100 * want[best, 'acc']['sem']:.2f}}}" in row


def test_every_metric_it_lists_makes_a_column(study, capsys):
    """task_il_acc (and any metric the runs recorded) is a column; the valid list is what the study recorded."""
    recorded = list(json.loads((study / "naive-seed0" / "results.json").read_text())["metrics"])
    assert "task_il_acc" in recorded
    capsys.readouterr()
    assert main(["report", str(study), "--format", "csv", "--metrics", ",".join(recorded)]) == 0
    got = {(r["strategy"], r["metric"]): r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    for s in STRATEGIES:
        for m in recorded:
            values = [json.loads((study / f"{s}-seed{k}" / "results.json").read_text())["metrics"][m] for k in range(3)]
            assert float(got[s, m]["mean"]) == pytest.approx(np.mean(values), abs=1e-12)
    assert main(["report", str(study), "--metrics", "acc,foo"]) == 2
    listed = capsys.readouterr().err.split("this study recorded ")[1].strip().split(", ")
    assert sorted(listed) == sorted(recorded)


def test_report_errors_name_the_problem(study, tmp_path, capsys):
    assert main(["report", str(study), "--baseline", "lwf"]) == 2
    assert "--baseline 'lwf' is not in this study; choose one of naive, si, ewc" in capsys.readouterr().err
    assert main(["report", str(study), "--metrics", "acc,speed"]) == 2
    assert "unknown metric(s) speed; this study recorded acc" in capsys.readouterr().err
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
    assert md.splitlines()[0] == "| Method | ACC | BWT | FWT | Forgetting | paper |"
    assert "| average stays close to 1 (Sec. 5.1, Fig. 3) |" in md


CLASS_IL = ["naive", "der", "derpp", "er", "er_ace", "icarl", "joint"]
CLASS_IL_NAMES = {"naive": "Fine-tuning", "der": "DER", "derpp": "DER++", "er": "ER", "er_ace": "ER-ACE",
                  "icarl": "iCaRL", "joint": "Joint (upper bound)"}


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    """A new user's class-IL study: five rehearsal methods, fine-tuning and joint, at buffers 200 and 500."""
    root = tmp_path_factory.mktemp("buffers")
    for size in (200, 500):
        assert main(["compare", "--strategies", ",".join(CLASS_IL), "--setting", "class", "--seeds", "2", "--tasks",
                     "2", "--epochs", "1", "--hidden", "16", "--set", f"memory_size={size}", "--quiet", "--plots",
                     "none", "--out", str(root / f"b{size}")]) == 0
    return root


@pytest.mark.slow
def test_two_buffers_make_one_class_il_latex_table(buffers, capsys):
    """Display names, percentages, class-IL and task-IL columns without FWT, the buffer column, bounds marked and
    never bold, methods without memory once, and a caption naming protocol, options, seeds and buffers; every
    number and bold mark against the run folders' results.json."""
    capsys.readouterr()
    assert main(["report", str(buffers / "b200"), str(buffers / "b500"), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    lines = latex.splitlines()
    assert r"Method & Buffer & ACC class-IL & ACC task-IL & Forgetting \\" in lines
    assert "FWT" not in latex and "fwt" not in latex
    body = [line for line in lines if line.endswith(r" \\") and not line.startswith("Method")]
    expect_rows = [(s, b) for b in (200, 500) for s in CLASS_IL if b == 200 or s not in ("naive", "joint")]
    assert len(body) == len(expect_rows)
    for (s, size), line in zip(expect_rows, body):
        name, buffer, *cells = [c.strip() for c in line[:-3].split(" & ")]
        memory = s not in ("naive", "joint")
        assert (name, buffer) == (CLASS_IL_NAMES[s], str(size) if memory else "-")
        for metric, cell in zip(("acc", "task_il_acc", "forgetting"), cells):
            runs = buffers / f"b{size}"
            v = np.array([json.loads((runs / f"{s}-seed{k}" / "results.json").read_text())
                          ["metrics"][metric] for k in range(2)])
            text = rf"{100 * v.mean():.2f} \pm {100 * v.std(ddof=1) / np.sqrt(2):.2f}"
            learners = [np.mean([json.loads((runs / f"{o}-seed{k}" / "results.json").read_text())
                                 ["metrics"][metric] for k in range(2)]) for o in CLASS_IL if o != "joint"]
            best = (min if metric == "forgetting" else max)(learners)
            assert text in cell, (s, size, metric)
            assert (r"\mathbf" in cell) == (s != "joint" and abs(v.mean() - best) < 1e-12), (s, size, metric)
    caption = next(line for line in lines if line.startswith(r"\caption"))
    for words in ("in \\% over 2 seed(s) (0, 1)", "split-mnist-5k, class-incremental, 2 tasks", "buffer 200 and 500",
                  "1 epoch(s) per task", "Joint: bound (reference points, not continual learners), never bold"):
        assert words in caption, words


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
    rows = _csv(bounded_study, capsys, "--metrics", ",".join(METRICS))
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
    row = next(line for line in md.splitlines() if line.startswith("| Joint"))
    assert row.startswith("| Joint (upper bound) |") and "**" not in row and "\\*" not in row
    assert "Joint: bound (reference points, not continual learners), never bold or tested" in md
    assert main(["report", str(bounded_study), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    row = next(line for line in latex.splitlines() if line.startswith("Joint"))
    assert r"\mathbf" not in row and "^{*}" not in row
    assert main(["report", str(bounded_study), "--baseline", "joint"]) == 2
    assert "--baseline 'joint' is a bound (upper), not a continual learner; choose one of naive, er" in \
        capsys.readouterr().err


def test_fwt_is_named_meaningless_in_class_il_and_left_unmarked(bounded_study, capsys):
    """Not a column by default in class-IL; asked for, it is shown without marks and the caption says why."""
    assert "fwt" not in {m for _, m in _csv(bounded_study, capsys)}
    rows = _csv(bounded_study, capsys, "--metrics", ",".join(METRICS))
    fwt = [r for (s, m), r in rows.items() if m == "fwt"]
    assert fwt and all(r["meaningful"] == "False" and r["best"] == "False" and r["significant"] == "False"
                       for r in fwt)
    assert all(r["meaningful"] == "True" for (s, m), r in rows.items() if m != "fwt")
    capsys.readouterr()
    assert main(["report", str(bounded_study), "--metrics", ",".join(METRICS)]) == 0
    md = capsys.readouterr().out
    assert "FWT is not meaningful in the class-incremental setting (a task's classes score 0 before it is trained): " \
           "shown without marks" in md
    lines = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ")]
    fwt_column = [cells[lines[0].index("FWT")] for cells in lines[1:]]
    assert fwt_column and not any("**" in c or "\\*" in c for c in fwt_column)
