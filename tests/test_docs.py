"""The examples in docs/ run as written: `python file=NAME` blocks are written to disk, `python` blocks executed,
and `bash` blocks' clframework commands run, all in one scratch folder per document."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)
CLI = [sys.executable, "-m", "clframework"]


def run_document(path: Path, workdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(workdir), "WANDB_MODE": "offline"}
    for lang, info, body in BLOCK.findall(path.read_text()):
        target = re.search(r"file=(\S+)", info)
        if target:
            (workdir / target.group(1)).write_text(body)
        elif lang == "python":
            proc = subprocess.run([sys.executable, "-c", body], cwd=workdir, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, f"{path.name} python block failed:\n{body}\n{proc.stderr[-3000:]}"
        elif lang == "bash":
            for line in body.strip().splitlines():
                args = shlex.split(line)
                assert args[0] == "clframework", f"unexpected command in {path.name}: {line}"
                proc = subprocess.run(CLI + args[1:], cwd=workdir, env=env, capture_output=True, text=True)
                assert proc.returncode == 0, f"{path.name}: `{line}` failed:\n{proc.stderr[-3000:]}"


def test_plain_loop_example_runs(tmp_path):
    run_document(DOCS / "plain-loop.md", tmp_path)


def test_custom_strategy_registered_and_run_from_cli(tmp_path):
    run_document(DOCS / "custom-strategy.md", tmp_path)
    result = json.loads((tmp_path / "runs/l2/results.json").read_text())
    assert result["strategy"] == "l2" and result["hparams"] == {"strength": 10.0}
    summary = json.loads((tmp_path / "runs/l2-vs-si/summary.json").read_text())
    assert set(summary["strategies"]) == {"naive", "l2", "si"}


def test_avalanche_plugin_guide_runs(tmp_path):
    """docs/avalanche.md: SI as a plugin of Avalanche's Naive, classes relabelled per task for a multi-head model."""
    import pytest

    pytest.importorskip("avalanche")
    run_document(DOCS / "avalanche.md", tmp_path)

