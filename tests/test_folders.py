"""Tasks read from disk: TinyImageNet, ImageFolder and CORe50 layouts on small generated folders, clear layout
errors before training, DataLoader training equal to in-memory training, and exact --resume after a real kill -9."""
import json
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

import fake_folders
from clframework import Trainer, make_strategy
from clframework.benchmarks import make_benchmark, split
from clframework.benchmarks.folders import (LayoutError, core50, from_memmap, image_folder, split_tinyimagenet,
                                            to_memory)
from clframework.benchmarks.stream import DatasetExamples, Normalize
from clframework.models import build_model


def _pil(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def test_tinyimagenet_layout_gives_tasks_of_consecutive_sorted_wnids(tmp_path):
    top = fake_folders.tiny_imagenet(tmp_path, n_classes=4, train_per_class=3, val_per_class=2)
    stream = split_tinyimagenet(top, setting="task", classes_per_task=2)
    wnids = sorted((top / "wnids.txt").read_text().split())
    assert len(stream) == 2 and stream.head_sizes == [2, 2] and stream.input_shape == (3, 64, 64)
    first = stream[0].examples("train")
    assert isinstance(first, DatasetExamples) and first.y.tolist() == [0, 0, 0, 1, 1, 1]
    files = sorted((top / "train" / wnids[0] / "images").iterdir()) + sorted((top / "train" / wnids[1] /
                                                                                "images").iterdir())
    raw = first.raw()
    assert raw.dtype == torch.uint8 and raw.shape == (6, 3, 64, 64)
    assert all(torch.equal(img, _pil(f)) for img, f in zip(raw, files))
    ann = dict(line.split("\t")[:2] for line in (top / "val" / "val_annotations.txt").read_text().splitlines())
    test = stream[1].examples("test")
    expected = sorted(f for f, w in ann.items() if w in wnids[2:])
    assert len(test) == len(expected) == 4
    assert sorted(test.y.tolist()) == [0, 0, 1, 1]  # the second task's classes, local labels
    decoded = stream[0].train_x
    assert decoded.dtype == torch.float32 and abs(float(decoded.mean())) < 1.5  # standardized per channel


@pytest.mark.parametrize("breakage, where, found", [
    (lambda top: (top / "val" / "val_annotations.txt").unlink(), "tiny-imagenet-200", "no val/val_annotations.txt"),
    (lambda top: shutil.rmtree(top / "train" / sorted((top / "wnids.txt").read_text().split())[1] / "images"),
     "images", "no such folder"),
    (lambda top: (top / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\n"), "val_annotations.txt",
     "line 1"),
])
def test_tinyimagenet_wrong_layout_is_one_clear_error(tmp_path, breakage, where, found):
    top = fake_folders.tiny_imagenet(tmp_path, n_classes=2, train_per_class=1, val_per_class=1, size=8)
    breakage(top)
    with pytest.raises(LayoutError) as err:
        split_tinyimagenet(top, classes_per_task=1)
    message = str(err.value)
    assert where in message and "expected" in message and found in message


@pytest.mark.slow
def test_cli_names_the_folder_and_what_is_missing_before_training(tmp_path, python):
    tmp_path.joinpath("tiny-imagenet-200").mkdir()
    out = tmp_path / "run"
    proc = python.run(["-m", "clframework", "run", "--strategy", "naive", "--benchmark", "split-tinyimagenet",
                       "--data-root", str(tmp_path), "--out", str(out), "--quiet"], timeout=300)
    assert proc.returncode != 0 and "tiny-imagenet-200" in proc.stderr and "wnids.txt" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_image_folder_holds_out_a_fraction_of_each_class(tmp_path):
    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=5)
    data = image_folder(root, size=0, test_fraction=0.2)
    assert len(data.train) == 16 and len(data.test) == 4 and data.classes == [0, 1, 2, 3]
    paths = data.train.dataset.paths + data.test.dataset.paths
    assert sorted(paths) == sorted(str(p) for p in root.rglob("*.png"))  # every file exactly once
    for path, label in zip(data.test.dataset.paths, data.test.y.tolist()):
        assert path.split(os.sep)[-2] == f"n{2000 + label:08d}"
    x = data.train_x
    assert torch.equal(x[0], _pil(data.train.dataset.paths[0]).float() / 255.0)  # PNG: exact


NAMES = ["cat", "dog", "fox", "owl"]  # folder names; sorted, as the classes are numbered


def test_split_imagefolder_tasks_carry_their_class_names(tmp_path):
    """Issue 31 item 8: a task of split-imagefolder is named by its classes' folders (`cat-dog`, not `0-1`), and each
    of its labels is the folder its images were read from."""
    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=5, size=8, names=NAMES)
    stream = make_benchmark("split-imagefolder", data_root=str(root), setting="task", size=0)
    assert stream.task_names == ["cat-dog", "fox-owl"]
    assert [t.class_names for t in stream] == [("cat", "dog"), ("fox", "owl")]
    for task in stream:
        for split_name in ("train", "test"):
            raw, y = task.examples(split_name).raw(), task.examples(split_name).y
            for image, label in zip(raw, y.tolist()):  # task setting: label j is the task's j-th class
                folder = root / task.class_names[label]
                assert any(torch.equal(image, _pil(p)) for p in folder.iterdir())


def test_from_tensors_names_and_a_bad_count_of_names():
    from clframework.benchmarks import from_tensors

    x, y = torch.rand(8, 1, 2, 2), torch.arange(8) % 4
    numbered = split(from_tensors(x, y, x, y), 2)
    assert numbered.task_names == ["0-1", "2-3"] and numbered[0].class_names is None  # data without names: ids
    named = split(from_tensors(x, y, x, y, class_names=NAMES), 2, setting="class")
    assert named.task_names == ["cat-dog", "fox-owl"] and named[1].class_names == ("fox", "owl")
    wide = split(from_tensors(x, y, x, y, class_names=NAMES), 4)  # more than three names: the first and the last
    assert wide.task_names == ["cat..owl"] and wide[0].class_names == tuple(NAMES)
    with pytest.raises(ValueError, match="3 class names for class ids up to 3; give one name per class id"):
        from_tensors(x, y, x, y, class_names=NAMES[:3])


@pytest.mark.filterwarnings("ignore::clframework.evaluation.health.LearningHealthWarning")  # random pixels
def test_split_imagefolder_run_records_class_names(tmp_path, cli):
    """`clframework run` on a real image tree: results.json's config.class_names per task and the task labels of
    results.json and matrix.csv are the folder names."""
    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=5, size=8, names=NAMES)
    out = tmp_path / "run"
    proc = cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", str(root), "--option",
               "size=8", "--epochs", "1", "--hidden", "8", "--quiet", "--plots", "none", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["class_names"] == [["cat", "dog"], ["fox", "owl"]]
    assert res["config"]["classes"] == [[0, 1], [2, 3]] and res["tasks"] == ["cat-dog", "fox-owl"]
    assert (out / "matrix.csv").read_text().splitlines()[0] == "after_task,cat-dog,fox-owl"


def test_image_folder_with_train_and_test_subtrees_and_bad_trees(tmp_path):
    fake_folders.image_folder(tmp_path / "t" / "train", n_classes=2, per_class=3)
    fake_folders.image_folder(tmp_path / "t" / "test", n_classes=2, per_class=2)
    data = image_folder(tmp_path / "t", size=0)
    assert (len(data.train), len(data.test)) == (6, 4)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(LayoutError, match="expected one folder per class.*found a.png"):
        image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "c1").mkdir()
    (tmp_path / "flat" / "c2").mkdir()
    with pytest.raises(LayoutError, match="c1: expected image files"):
        image_folder(tmp_path / "flat")


def test_core50_sessions_are_domain_incremental_tasks_scored_on_one_test_set(tmp_path):
    top = fake_folders.core50(tmp_path, per_object=1, size=8)
    stream = core50(top)
    assert stream.task_names == ["s1", "s2", "s4", "s5", "s6", "s8", "s9", "s11"] and stream.setting == "domain"
    assert stream.head_sizes == [50] and len(stream[0].examples("train")) == 50
    assert all(t.examples("test") is stream[0].examples("test") for t in stream)
    assert len(stream[0].examples("test")) == 150  # s3, s7, s10
    assert stream[0].examples("train").y.tolist() == list(range(50))
    cats = core50(top, labels="category", n_tasks=2)
    assert len(cats) == 2 and cats.head_sizes == [10] and cats[0].examples("train").y.tolist()[:6] == [0] * 5 + [1]
    shutil.rmtree(top / "s7" / "o13")
    with pytest.raises(LayoutError, match="o13: expected the PNG frames of object 13 in session 7"):
        core50(top)


def test_memmap_rows_read_lazily(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 1, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = from_memmap(tmp_path / "x.npy", np.arange(10) % 2, tmp_path / "x.npy", np.arange(10) % 2,
                       decode=Normalize(255.0))
    assert torch.equal(data.train_x, torch.from_numpy(x).float() / 255.0)


@pytest.mark.parametrize("strategy", ["naive", "replay"])
def test_dataloader_workers_train_bit_for_bit_like_the_same_data_in_memory(tmp_path, strategy):
    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=12, size=6)
    disk = image_folder(root, size=0, test_fraction=0.25)
    memory = to_memory(disk)
    assert memory.train.x.dtype == torch.uint8
    results = []
    for data, workers in ((disk, 2), (memory, 0)):
        stream = split(data, 2)
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.head_sizes, (8,))
        trainer = Trainer(model, make_strategy(strategy), epochs=2, batch_size=5, device="cpu", quiet=True,
                          workers=workers)
        results.append((trainer.fit(stream).accuracy_matrix, trainer.model.state_dict()))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


def _inside_training(checkpoint) -> bool:
    """A checkpoint exists and was taken after a training step (checkpoints are replaced atomically, so a read sees
    a whole one)."""
    if not checkpoint.exists():
        return False
    position = torch.load(checkpoint, weights_only=False)["trainer"]["position"]
    return position["step"] > 0 or position["epoch"] > 0


@pytest.mark.slow
def test_kill_9_mid_epoch_with_workers_then_resume_equals_uninterrupted(tmp_path, python):
    """The disk-backed stream, read by 2 DataLoader workers, killed with SIGKILL in the middle of an epoch."""
    root = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=40, size=8)
    args = ["-m", "clframework", "run", "--strategy", "replay", "--benchmark", "split-imagefolder",
            "--data-root", str(root), "--epochs", "2", "--batch-size", "4", "--hidden", "16", "--workers", "2",
            "--checkpoint-every", "3", "--quiet", "--device", "cpu"]
    ref = python.run(args + ["--out", str(tmp_path / "B")], timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "A"
    pid = python.start(args + ["--out", str(out)], env={"TMPDIR": str(tmp_path)}, session=True)  # its workers' pymp-*
    deadline = time.time() + 300
    while not _inside_training(out / "checkpoint.pt"):  # the first checkpoint may be the task's start (step 0)
        assert python.running(pid) and time.time() < deadline, python.wait(pid).stderr[-2000:]
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.5))
    os.killpg(pid, signal.SIGKILL)  # the run and its DataLoader workers
    assert python.wait(pid).returncode == -signal.SIGKILL and not (out / "results.json").exists()
    position = torch.load(out / "checkpoint.pt", weights_only=False)["trainer"]["position"]
    done = python.run(args + ["--out", str(out), "--resume"], timeout=600)
    assert done.returncode == 0, done.stderr
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "B" / "results.json").read_text())
    assert a["accuracy_matrix"] == b["accuracy_matrix"] and a["curves"] == b["curves"]
    # it was killed inside training, not before (a later task's start checkpoint, step 0, counts: the kill came after
    # the first task trained)
    assert position["task"] > 0 or position["step"] > 0 or position["epoch"] > 0


def test_registered_folder_benchmarks(tmp_path):
    fake_folders.tiny_imagenet(tmp_path, n_classes=20, train_per_class=1, val_per_class=1, size=8)
    stream = make_benchmark("split-tinyimagenet", data_root=str(tmp_path), n_tasks=1)
    assert len(stream) == 1 and stream.head_sizes == [20] and stream.setting == "class"
    fake_folders.core50(tmp_path, per_object=1, size=4)
    assert len(make_benchmark("core50-ni", data_root=str(tmp_path))) == 8
    fake_folders.image_folder(tmp_path / "imagenet-r", n_classes=20, per_class=2, size=8)
    assert make_benchmark("split-imagenet-r", data_root=str(tmp_path), size=8)[0].classes == tuple(range(20))
