"""Exact resume after a real `kill -9`: a run killed mid-task, between tasks and inside EWC's end-of-task Fisher,
then continued with resume=True, ends with the same accuracy matrix and curves (the continual evaluation's
included), bit for bit, as a run never killed."""
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real kill -9 of real processes that run torch

DRIVER = Path(__file__).with_name("resume_driver.py")

# each strategy is killed three times in a row, each time at another kind of moment, then left to finish
KILLS = {"naive": ["step:9", "task:1", "step:17"],
         "si": ["step:9", "task:1", "step:17"],
         "ewc": ["step:9", "fisher", "task:2"]}


def _finish(python, pid):
    proc = python.wait(pid, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kill_when_paused(python, pid, out):
    marker = Path(f"{out}.paused")
    deadline = time.time() + 240
    while not marker.exists():
        assert python.running(pid), python.wait(pid).stderr[-3000:]
        assert time.time() < deadline, "the driver never reached its pause point"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    marker.unlink()
    assert python.wait(pid).returncode == -signal.SIGKILL


@pytest.mark.parametrize("strategy", sorted(KILLS))
def test_kill_9_at_several_points_then_resume_equals_uninterrupted(strategy, tmp_path, python):
    def driver(out, resume, pause=""):
        return python.start([DRIVER, strategy, out, "1" if resume else "0", pause])

    reference = driver("-", False)  # never interrupted, no folder
    out = tmp_path / "run"
    positions = []
    for i, pause in enumerate(KILLS[strategy]):
        _kill_when_paused(python, driver(out, i > 0, pause), out)
        assert not (out / "results.json").exists()
        assert (out / "checkpoint.pt").is_file()  # the last complete checkpoint survived the kill
        assert not list(out.glob(".*.tmp"))
        import torch

        positions.append(torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["position"])
    resumed = _finish(python, driver(out, True))
    expected = _finish(python, reference)
    assert resumed["matrix"] == expected["matrix"]  # exact float equality, every cell
    assert resumed["curves"] == expected["curves"]
    assert resumed["continual"] == expected["continual"] and len(expected["continual"]["points"]) > 10
    assert len(positions) == 3 and positions[0]["task"] == 0 and positions[0]["step"] > 0  # mid-task
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished" and saved["accuracy_matrix"] == expected["matrix"]
    assert (out / "model.pt").is_file() and (out / "strategy.pt").is_file() and not (out / "checkpoint.pt").exists()


def test_cli_kill_9_then_resume_equals_uninterrupted(tmp_path, python):
    """The documented command: `clframework run ... --checkpoint-every N --out A`, killed, rerun with --resume."""
    args = ["-m", "clframework", "run", "--strategy", "si", "--epochs", "1", "--hidden", "16",
            "--checkpoint-every", "4", "--eval-every", "3", "--eval-subset", "50", "--quiet", "--device", "cpu"]
    ref = python.run(args + ["--out", tmp_path / "B"], timeout=300)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "A"
    pid = python.start(args + ["--out", out])
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert python.running(pid) and time.time() < deadline, python.wait(pid).stderr[-2000:]
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.3))  # somewhere further into training
    os.kill(pid, signal.SIGKILL)
    assert python.wait(pid).returncode == -signal.SIGKILL and not (out / "results.json").exists()
    again = python.run(args + ["--out", out], timeout=60)
    assert again.returncode == 2 and "is not empty" in again.stderr and "--resume" in again.stderr
    done = python.run(args + ["--out", out, "--resume"], timeout=300)
    assert done.returncode == 0, done.stderr
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "B" / "results.json").read_text())
    assert a["accuracy_matrix"] == b["accuracy_matrix"] and a["curves"] == b["curves"]
    assert a["continual_eval"] == b["continual_eval"] and a["metrics"] == b["metrics"]
