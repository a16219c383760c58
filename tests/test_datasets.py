"""Loaders read files in the real formats through torchvision's classes; missing, offline and corrupt data fail
clearly and leave nothing behind; the real Debian Fashion-MNIST is found and read exactly."""
import dataclasses
import gzip
import hashlib
import http.server
import os
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tvd

from clframework.benchmarks import datasets as D
from fake_datasets import (cifar_arrays, idx_bytes, mnist_arrays, write_cifar10, write_cifar100,
                           write_idx_set)

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def no_system_dirs(monkeypatch):
    """Search only the given root for Fashion-MNIST, as on a machine without the Debian package."""
    src = D.SOURCES["fashion-mnist"]
    monkeypatch.setitem(D.SOURCES, "fashion-mnist", dataclasses.replace(src, system_dirs=()))


@pytest.mark.parametrize("name,layout,gz", [("mnist", "flat", True), ("mnist", "torchvision", False),
                                            ("fashion-mnist", "torchvision", True), ("fashion-mnist", "flat", False)])
def test_idx_files_read_exactly(tmp_path, monkeypatch, name, layout, gz):
    no_system_dirs(monkeypatch)
    arrays = mnist_arrays(seed=len(name) + gz)
    folder = tmp_path if layout == "flat" else tmp_path / D.SOURCES[name].tv_name / "raw"
    write_idx_set(folder, arrays, gz=gz)
    assert D.available(name, str(tmp_path))
    data = D.load(name, str(tmp_path), download=False)
    for split in ("train", "test"):
        x, y = arrays[split]
        got_x, got_y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert got_x.shape == (len(y), 1, 28, 28) and got_x.dtype == torch.float32
        np.testing.assert_array_equal(got_x.squeeze(1).numpy(), x.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(got_y.numpy(), y)
    assert D.load(name, str(tmp_path), download=False) is data  # prepared once per process


@pytest.mark.parametrize("gz", [True, False])
def test_torchvision_root_lets_torchvisions_class_read_a_flat_folder(tmp_path, monkeypatch, gz):
    """A flat folder of IDX files (Debian's layout) is not torchvision's: its FashionMNIST class refuses it, and
    reads the root torchvision_root stages, image for image what our reader gives."""
    from torchvision.datasets import FashionMNIST

    no_system_dirs(monkeypatch)
    flat = tmp_path / "flat"
    arrays = mnist_arrays(seed=4)
    write_idx_set(flat, arrays, gz=gz)
    with pytest.raises(RuntimeError, match="Dataset not found"):
        FashionMNIST(str(flat), train=True)
    root = D.torchvision_root("fashion-mnist", str(flat), cache=tmp_path / "cache")
    assert root.parent == tmp_path / "cache" and D.torchvision_root("fashion-mnist", str(flat),
                                                                     cache=tmp_path / "cache") == root
    for split, train in (("train", True), ("test", False)):
        ds = FashionMNIST(str(root), train=train)
        np.testing.assert_array_equal(ds.data.numpy(), arrays[split][0])
        np.testing.assert_array_equal(ds.targets.numpy(), arrays[split][1])
    assert not list((tmp_path / "cache").glob(".staging-*"))  # staged in a temporary folder, moved into place
    layout = tmp_path / "tv"  # torchvision's own layout is returned as it is
    write_idx_set(layout / "FashionMNIST" / "raw", arrays, gz=False)
    assert D.torchvision_root("fashion-mnist", str(layout), cache=tmp_path / "cache2") == layout.resolve()
    with pytest.raises(D.DatasetNotFound, match="Fashion-MNIST not found"):
        D.torchvision_root("fashion-mnist", str(tmp_path / "empty"))


def test_cifar10_and_100_read_exactly_and_standardized(tmp_path):
    a10, a100 = cifar_arrays(10, 50, 20, seed=1), cifar_arrays(100, 200, 100, seed=2)
    write_cifar10(tmp_path, a10)
    write_cifar100(tmp_path, a100)
    assert D.available("cifar10", str(tmp_path)) and D.available("cifar100", str(tmp_path))
    for name, arrays in (("cifar10", a10), ("cifar100", a100)):
        data = D.load(name, str(tmp_path), download=False)
        raw = arrays["train"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0  # rows are R, G, B planes
        mean, std = raw.mean(axis=(0, 2, 3), keepdims=True), raw.std(axis=(0, 2, 3), ddof=1, keepdims=True)
        np.testing.assert_allclose(data.train_x.numpy(), (raw - mean) / std, atol=1e-5)
        test_raw = arrays["test"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
        np.testing.assert_allclose(data.test_x.numpy(), (test_raw - mean) / std, atol=1e-5)
        np.testing.assert_array_equal(data.train_y.numpy(), arrays["train"][1])
        np.testing.assert_array_equal(data.test_y.numpy(), arrays["test"][1])


def test_root_from_option_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_root(str(tmp_path / "opt")) == tmp_path / "opt"
    assert D.resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv(D.ENV_VAR)
    assert D.resolve_root(None) == Path("~/.cache/clframework/data").expanduser().resolve()


def test_missing_offline_names_files_folders_and_fixes(tmp_path, monkeypatch):
    no_system_dirs(monkeypatch)
    with pytest.raises(D.DatasetNotFound) as err:
        D.load("fashion-mnist", str(tmp_path), download=False)
    msg = str(err.value)
    for expected in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(tmp_path / "FashionMNIST" / "raw"),
                     "--data-root", "CLFRAMEWORK_DATA", "apt-get install -y dataset-fashion-mnist", "split-mnist-5k"):
        assert expected in msg
    with pytest.raises(D.DatasetNotFound) as err:
        D.load("cifar100", str(tmp_path), download=False)
    assert "meta" in str(err.value) and str(tmp_path / "cifar-100-python") in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    """A real connection to a closed local port, as offline: clear error, no folder left behind."""
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    root = tmp_path / "fresh"
    root.mkdir()
    for name in ("mnist", "cifar10"):
        with pytest.raises(D.DatasetNotFound, match="download failed"):
            D.load(name, str(root))
        assert list(root.iterdir()) == []


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server over a folder, standing in for a dataset mirror."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_moves_complete_files_into_place(tmp_path, monkeypatch, http_folder):
    served, url = http_folder
    arrays = mnist_arrays(seed=5)
    paths = write_idx_set(served, arrays, gz=True)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths.values()}
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, md5[n]) for n, _ in tvd.MNIST.resources])
    root = tmp_path / "root"
    root.mkdir()
    data = D.load("mnist", str(root))
    np.testing.assert_array_equal(data.test_y.numpy(), arrays["test"][1])
    assert sorted(p.name for p in root.iterdir()) == ["MNIST"]  # no temporary folder left
    assert D.available("mnist", str(root))


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, http_folder):
    served, url = http_folder
    paths = write_idx_set(served, mnist_arrays(seed=6), gz=True)
    paths[("test", "labels")].unlink()  # the mirror lacks the last file: the first three arrive, then 404
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, None) for n, _ in tvd.MNIST.resources])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(D.DatasetNotFound, match="download failed"):
        D.load("mnist", str(root))
    assert list(root.iterdir()) == []


def test_cifar_archive_on_disk_is_unpacked_offline(tmp_path, monkeypatch):
    """An archive in the root is used by torchvision's own md5-checked extraction; no network needed."""
    arrays = cifar_arrays(10, 10, 5, seed=7)
    folder = write_cifar10(tmp_path / "staging", arrays)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # any network use fails
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, md5[n]] for n, _ in tvd.CIFAR10.train_list])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [[n, md5[n]] for n, _ in tvd.CIFAR10.test_list])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5["batches.meta"]})
    assert not D.available("cifar10", str(root))
    data = D.load("cifar10", str(root))
    np.testing.assert_array_equal(data.test_y.numpy(), arrays["test"][1])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_corrupt_files_give_clear_errors(tmp_path, monkeypatch):
    no_system_dirs(monkeypatch)
    arrays = mnist_arrays(seed=3)
    cases = {}
    garbage = write_idx_set(tmp_path / "garbage", arrays)
    garbage[("train", "images")].write_bytes(b"not a gzip file at all")
    cases["garbage"] = garbage[("train", "images")]
    truncated = write_idx_set(tmp_path / "truncated", arrays, gz=False)
    truncated[("test", "images")].write_bytes(idx_bytes(arrays["test"][0])[:-100])
    cases["truncated"] = truncated[("test", "images")]
    badlabel = write_idx_set(tmp_path / "badlabel", {**arrays, "test": (arrays["test"][0], arrays["test"][1] + 5)})
    cases["badlabel"] = badlabel[("test", "labels")]
    for case, path in cases.items():
        with pytest.raises(D.DatasetCorrupt) as err:
            D.load("fashion-mnist", str(tmp_path / case), download=False)
        assert str(path.parent) in str(err.value) and "download again" in str(err.value), case
    folder = write_cifar10(tmp_path / "cifar", cifar_arrays(10, 10, 5))
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(D.DatasetCorrupt, match="data_batch_3"):
        D.load("cifar10", str(tmp_path / "cifar"), download=False)


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                                                "(apt-get install -y dataset-fashion-mnist)")
def test_real_debian_fashion_mnist_found_and_read(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "DEFAULT_ROOT", tmp_path)  # no folder named: the system folder is searched
    assert D.locate("fashion-mnist")["t10k-images-idx3-ubyte"].parent == DEBIAN
    data = D.load("fashion-mnist", download=False)
    with gzip.open(DEBIAN / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(DEBIAN / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(data.test_x[:, 0].numpy(), raw.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(data.train_y.numpy(), labels)
    assert data.train_y.bincount().tolist() == np.bincount(labels).tolist()


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                                                "(apt-get install -y dataset-fashion-mnist)")
def test_cli_run_on_real_split_fashion_mnist(tmp_path, cli):
    """End to end from the command line, 1 epoch on the full data (batch 1024 keeps it to seconds)."""
    env = {"CLFRAMEWORK_DATA": str(DEBIAN)}  # named explicitly: Debian's folder holds the .gz files
    out = tmp_path / "run"
    proc = cli("run", "--strategy", "si", "--benchmark", "split-fashion-mnist", "--epochs", "1", "--batch-size",
               "1024", "--quiet", "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == ["0-1", "2-3", "4-5", "6-7", "8-9"] and res["config"]["head_sizes"] == [2] * 5
    assert res["hparams"]["c"] == 1.0 and res["config"]["batch_size"] == 1024 and res["config"]["hidden"] == [256, 256]
    diag = [res["accuracy_matrix"][i][i] for i in range(5)]
    assert min(diag) > 0.6, diag  # every 2-way task learned far above chance (0.5) in one epoch


def test_cli_missing_data_stops_before_training(tmp_path, cli):
    env = {"CLFRAMEWORK_DATA": str(tmp_path), D.NO_DOWNLOAD_VAR: "1"}  # no network even where online
    proc = cli("run", "--strategy", "naive", "--benchmark", "split-cifar100", "--quiet", "--out", str(tmp_path / "run"),
               env=env)
    assert proc.returncode == 2
    assert "CIFAR-100 not found" in proc.stderr and "--data-root" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_file_names_are_torchvisions():
    """The dataset file names are written out (so that `list` checks for them without importing torchvision);
    they must be the ones torchvision's classes read."""
    import os

    from clframework.benchmarks.datasets import SOURCES

    for src in SOURCES.values():
        c = src.tv_class
        if src.kind == "idx":
            assert src.files == [os.path.splitext(f)[0] for f, _ in c.resources]
        else:
            assert src.files == [f for f, _ in c.train_list + c.test_list] + [c.meta["filename"]]
            assert src.folder == c.base_folder
