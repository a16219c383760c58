"""scripts/gpu_cifar_epoch.py (issue 29, item 5): its CIFAR files made from Fashion-MNIST, and a CPU dry run of
ours and of Mammoth's own code on them (tiny; the GPU figures are docs/performance.md's)."""
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import mnist_arrays, write_idx_set

REPO = Path(__file__).resolve().parent.parent
MAMMOTH = Path(os.environ.get("MAMMOTH_GIT", "/work/.mirror/aimagelab+mammoth/repo"))


def _script():
    spec = importlib.util.spec_from_file_location("gpu_cifar_epoch", REPO / "scripts" / "gpu_cifar_epoch.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def fashion(tmp_path):
    arrays = mnist_arrays(60, 20)
    write_idx_set(tmp_path / "fashion", arrays)
    return tmp_path / "fashion", arrays


def test_cifar_files_hold_the_fashion_images_padded_and_in_three_channels(tmp_path, fashion):
    root, arrays = fashion
    folder = _script().fashion_as_cifar(root, tmp_path / "cifar", n_train=50, n_test=10)
    batches = [pickle.loads((folder / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    data = np.concatenate([b["data"] for b in batches])
    labels = sum((b["labels"] for b in batches), [])
    x, y = arrays["train"]
    expected = np.repeat(np.pad(x[:50], ((0, 0), (2, 2), (2, 2)))[:, None], 3, axis=1).reshape(50, 3072)
    assert data.dtype == np.uint8 and np.array_equal(data, expected) and labels == y[:50].tolist()
    test = pickle.loads((folder / "test_batch").read_bytes())
    assert test["data"].shape == (10, 3072) and test["labels"] == arrays["test"][1][:10].tolist()
    assert sorted(pickle.loads((folder / "batches.meta").read_bytes())) == ["label_names", "num_cases_per_batch",
                                                                            "num_vis"]


@pytest.mark.slow
@pytest.mark.skipif(not MAMMOTH.exists(), reason="no Mammoth git directory (set MAMMOTH_GIT)")
def test_dry_run_times_ours_and_mammoths_code_on_the_same_files(tmp_path, fashion):
    root, _ = fashion
    out = tmp_path / "out"
    assert _script().main([str(out), "--dry-run", "--fashion-root", str(root), "--methods", "naive", "--modes",
                           "plain,channels-last", "--tasks", "1", "--n-train", "50", "--mammoth", str(MAMMOTH),
                           "--deadline", "900"]) == 0
    result = json.loads((out / "gpu_cifar_epoch.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["tasks"] == 1
    for mode in ("plain", "channels-last"):
        r = result["ours"][f"naive {mode}"]
        assert "error" not in r, r
        assert 0 < r["train_seconds"] <= r["wall_seconds"] and r["fraction_of_peak"] is None  # a CPU has no entry
        assert r["examples_per_second"] == pytest.approx(result["examples_per_epoch"] / r["train_seconds"])
    assert 1e9 < result["flops_per_example"] < 1e10  # ResNet-18 at 32x32: about 0.56 GMAC forward, x2 FLOPs, x3
    m = result["mammoth"]["naive"]
    assert "wall_seconds" in m, m
    assert m["final"].startswith("Accuracy for 1 task(s)")  # Mammoth trained and scored seq-cifar10's first task
    assert len(result["mammoth_tree"]["commit"]) == 40
    md = (out / "gpu_cifar_epoch.md").read_text()
    assert "| naive | channels-last |" in md and "Mammoth (" in md
