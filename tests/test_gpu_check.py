"""scripts/gpu_check.sh dry-run on the CPU (tiny files, quick scale), and what it relies on in `reproduce`: arms chosen
and ordered by key, hyperparameter overrides, results rewritten after every run."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fake_datasets import mnist_arrays, write_idx_set

from clframework.apps.reproduce import plan, reproduce

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    write_idx_set(root, mnist_arrays(60, 20))
    return root


def test_arms_are_chosen_ordered_and_overridden_by_key():
    p = plan("permuted-mnist", "fashion-mnist", arms=["sgd", "si:c=0.02", "ewc:ewc_lambda=1000", "joint"])
    assert list(p["configs"]) == ["SGD (c=0)", "SI (c=0.02)", "EWC (exact Fisher) (ewc_lambda=1000)"]
    assert p["controls"] == ["joint"]
    assert p["configs"]["SI (c=0.02)"].resolved()["hparams"] == {**plan("permuted-mnist")["configs"]["SI (c=0.1)"]
                                                                 .resolved()["hparams"], "c": 0.02}
    assert p["configs"]["EWC (exact Fisher) (ewc_lambda=1000)"].resolved()["hparams"]["ewc_lambda"] == 1000.0
    assert plan("permuted-mnist")["controls"] == ["joint"]  # default: every arm and control
    assert plan("permuted-mnist", arms=["si"])["controls"] == []


@pytest.mark.parametrize("arms,message", [
    (["si", "bogus"], "has no arm or control 'bogus'; choose from si, ewc, sgd, sgd-dropout, joint"),
    (["si", "si"], "names an arm twice"),
    (["joint"], "must name at least one arm"),
    (["si:c"], "expected KEY:PARAM=VALUE"),
    (["si:c=-1"], "c"),
    (["si:tau=3"], "has no hyperparameter 'tau'"),
])
def test_bad_arms_fail_before_training(arms, message):
    with pytest.raises(Exception, match=re.escape(message)):
        plan("permuted-mnist", "fashion-mnist", arms=arms)


@pytest.mark.slow
def test_results_are_rewritten_after_every_run(tmp_path, fashion_root):
    out, seen = tmp_path / "rep", []

    def log(line):
        if line.startswith("["):  # after each run: the files hold every finished run, marked partial
            result = json.loads((out / "reproduction.json").read_text())
            seen.append((line.split("]")[0] + "]", result.get("partial"), list(result["arms"])))
            assert (out / "fig4_average.png").stat().st_size > 0
            assert "PARTIAL" in (out / "reproduction.md").read_text()

    reproduce("permuted-mnist", out, dataset="fashion-mnist", quick=True, seeds=1, epochs=1,
              data_root=str(fashion_root), quiet=True, log=log, arms=["sgd", "si:c=0.02"], device="cpu")
    assert seen == [("[1/2]", "1 of 2 runs", ["SGD (c=0)"]), ("[2/2]", "2 of 2 runs", ["SGD (c=0)", "SI (c=0.02)"])]
    final = json.loads((out / "reproduction.json").read_text())
    assert "partial" not in final and list(final["arms"]) == ["SGD (c=0)", "SI (c=0.02)"]
    assert final["device"].startswith("CPU") and final["controls"] == {}
    assert final["arms"]["SI (c=0.02)"]["hparams"]["c"] == 0.02
    assert "PARTIAL" not in (out / "reproduction.md").read_text()


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_cpu(tmp_path, fashion_root):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--data-root", str(fashion_root),
                           "--quick", "--epochs", "1", "--arms", "si,ewc"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir())
    assert files == ["cuda-tests.log", "env.txt", "fig4_average.png", "fig5_omega_correlation.png", "reproduce.log",
                     "reproduce.tgz", "reproduction.json", "reproduction.md"]  # the device returns at most 8 files
    assert all(f.is_file() and f.stat().st_size > 0 for f in out.iterdir())
    assert "no CUDA: CPU only" in (out / "env.txt").read_text()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                str(REPO / "tests" / "test_cuda.py")], capture_output=True, text=True, cwd=REPO)
    n = re.search(r"^(\d+) tests? collected", collected.stdout, re.M)
    assert n, collected.stdout[-2000:]  # every CUDA test ran, each skipped on the CPU (their number grows with them)
    assert re.search(rf"^{n.group(1)} skipped in ", (out / "cuda-tests.log").read_text(), re.M)
    log = (out / "reproduce.log").read_text()
    assert "[1/2] SI (c=0.1) seed 0" in log and "[2/2] EWC (exact Fisher) seed 0" in log
    result = json.loads((out / "reproduction.json").read_text())
    assert list(result["arms"]) == ["SI (c=0.1)", "EWC (exact Fisher)"] and result["seeds"] == 1
    with tarfile.open(out / "reproduce.tgz") as tgz:
        names = set(tgz.getnames())
    assert {"reproduce/si-c-0-1-seed0/results.json", "reproduce/ewc-exact-fisher-seed0/results.json",
            "reproduce/reproduction.md"} <= names
    assert "tests rc 0, reproduce rc 0" in proc.stdout
