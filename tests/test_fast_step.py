"""The opt-in fast step (`--precision bf16`, `--compile`) against the plain step, which stays the default: the same
accuracy matrix within a stated tolerance, the settings checked before training and recorded only when set."""
import json

import pytest
import torch

from clframework import Strategy, Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework import RunConfig, run

# bf16 keeps 8 bits of mantissa: a few test examples near the decision boundary may flip (2 tasks x 2,000 test
# examples here); every cell of the matrix must stay within this of the float32 run's
MATRIX_TOLERANCE = 0.02


class Records(Strategy):
    """Naive fine-tuning that notes the dtype of the outputs it sees (what the forward pass ran in)."""

    def __init__(self):
        self.dtypes = set()

    def loss_term(self, model, batch):
        self.dtypes.add(batch.out.dtype)
        return 0.0


def _fit(stream, strategy, **kw):
    torch.manual_seed(0)
    return Trainer(mlp(784, stream.head_sizes, hidden=(32,)), strategy, epochs=1, quiet=True, device="cpu",
                   **kw).fit(stream)


def test_bf16_autocast_gives_the_float32_matrix_within_tolerance(mnist_stream):
    plain, fast = Records(), Records()
    a, b = _fit(mnist_stream, plain), _fit(mnist_stream, fast, precision="bf16")
    assert plain.dtypes == {torch.float32} and fast.dtypes == {torch.bfloat16}  # the default step is untouched
    for row_a, row_b in zip(a.accuracy_matrix, b.accuracy_matrix):
        assert row_b == pytest.approx(row_a, abs=MATRIX_TOLERANCE)
    si = _fit(mnist_stream, make_strategy("si", c=0.1), precision="bf16")  # a penalty and its bookkeeping too
    ref = _fit(mnist_stream, make_strategy("si", c=0.1))
    assert [r for row in si.accuracy_matrix for r in row] == pytest.approx(
        [r for row in ref.accuracy_matrix for r in row], abs=MATRIX_TOLERANCE)


def test_fast_step_settings_are_checked_and_recorded_only_when_set(tmp_path, mnist_stream, cli):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        RunConfig("si", "split-mnist-5k", precision="fp16").resolved()
    with pytest.raises(ValueError, match="compile must be one of default, reduce-overhead, max-autotune"):
        RunConfig("si", "split-mnist-5k", compile="fast").resolved()
    assert "precision" not in RunConfig("si", "split-mnist-5k").resolved()["train"]  # old folders still resume
    proc = cli("run", "--strategy", "naive", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--precision", "bf16",
               "--quiet", "--plots", "none", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["config"]["precision"] == "bf16" and "compile" not in res["config"]
    assert res["provenance"]["overrides"]["precision"] == "bf16"
    bad = cli("run", "--strategy", "naive", "--compile", "turbo", "--out", str(tmp_path / "never"))
    assert bad.returncode == 2 and "invalid choice: 'turbo'" in bad.stderr and not (tmp_path / "never").exists()


@pytest.mark.slow
def test_compiled_forward_gives_the_eager_matrix_and_curves(mnist_stream):
    """torch.compile of the forward pass (the C++ compiler on CPU): one small task, so compiling dominates."""
    stream = shrink(mnist_stream, 1, 256)
    eager, compiled = _fit(stream, make_strategy("si")), _fit(stream, make_strategy("si"), compile="default")
    assert compiled.accuracy_matrix[0] == pytest.approx(eager.accuracy_matrix[0], abs=1e-3)
    assert [c["loss"] for c in compiled.curves] == pytest.approx([c["loss"] for c in eager.curves], rel=1e-4)


@pytest.mark.slow
def test_gpu_speed_script_dry_run_on_cpu(tmp_path, capsys):
    """scripts/gpu_speed.py, the GPU measurement of plain against fast, runs through at tiny sizes on the CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_speed.py"
    spec = importlib.util.spec_from_file_location("gpu_speed", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path), "--dry-run", "--deadline", "300"]) == 0
    result = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert result["dry_run"] and result["device"].startswith("CPU")
    for what, tasks in (("permuted_arm", 2), ("resnet18_epoch", 2)):
        for mode in ("plain", "bf16"):
            r = result[what][mode]
            assert "error" not in r, r
            assert r["tasks_done"] == r["tasks"] == tasks and not r["partial"] and r["seconds"] > 0
            assert r["seconds"] == pytest.approx(sum(r["task_seconds"])) and r["final_loss"] > 0
    md = (tmp_path / "gpu_speed.md").read_text()
    assert "| permuted_arm | bf16 |" in md and "| resnet18_epoch | plain |" in md and "dry run" in md
