"""The DER-line CIFAR protocols end to end on CIFAR-format files the test writes: a ResNet-18 with augmentation
trains, every protocol setting lands in results.json, and `clframework.load` predicts the stream's labels."""
import json

import pytest
import torch

from clframework import load, make_benchmark
from clframework.apps.cli import main
from clframework.benchmarks.der import BEST, PUBLISHED, best_row
from clframework import RunConfig
from fake_datasets import cifar_arrays, write_cifar10, write_cifar100


def test_seq_cifar10_protocol_is_the_der_papers():
    cfg = RunConfig("naive", "seq-cifar10").resolved()
    train = cfg["train"]
    assert (train["model"], train["epochs"], train["batch_size"], train["optimizer"], train["augment"]) == \
        ("resnet18", 50, 32, "sgd", "crop-flip")
    assert train["lr"] == 0.1  # best_args.py: sgd on seq-cifar10
    assert RunConfig("si", "seq-cifar10").resolved()["train"]["lr"] == 0.03
    assert RunConfig("si", "seq-cifar10").resolved()["hparams"]["c"] == 0.5
    assert RunConfig("si", "seq-cifar10", lr=0.5).resolved()["train"]["lr"] == 0.5  # the user's value wins
    assert best_row("seq-cifar10", "derpp", 200) == ({"lr": 0.03}, {"alpha": 0.1, "beta": 0.5, "minibatch_size": 32,
                                                                   "memory_size": 200})
    assert best_row("seq-cifar10", "naive", 5120)[1] == {}
    assert set(PUBLISHED) <= set(BEST)


def test_seq_cifar_streams_from_real_format_files(tmp_path):
    write_cifar10(tmp_path, cifar_arrays(10, 60, 30, seed=1))
    write_cifar100(tmp_path, cifar_arrays(100, 300, 100, seed=2))
    s10 = make_benchmark("seq-cifar10", data_root=str(tmp_path))
    assert s10.setting == "class" and s10.head_sizes == [10] and len(s10) == 5
    assert [t.classes for t in s10] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert s10.input_shape == (3, 32, 32) and sorted(s10[2].train_y.unique().tolist()) == [4, 5]
    s100 = make_benchmark("seq-cifar100", data_root=str(tmp_path))
    assert len(s100) == 10 and s100.head_sizes == [100] and s100[9].classes == tuple(range(90, 100))


@pytest.mark.slow
def test_reduced_resnet18_with_augmentation_trains_end_to_end_and_loads(tmp_path):
    write_cifar10(tmp_path / "data", cifar_arrays(10, 80, 40, seed=3))
    out = tmp_path / "run"
    code = main(["run", "--strategy", "derpp", "--benchmark", "seq-cifar10", "--data-root", str(tmp_path / "data"),
                 "--model", "reduced_resnet18", "--tasks", "2", "--epochs", "2", "--batch-size", "8",
                 "--set", "memory_size=200", "--out", str(out), "--quiet"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    c = res["config"]
    assert (c["model"], c["augment"], c["optimizer"], c["lr"], c["batch_size"], c["epochs"]) == \
        ("reduced_resnet18", "crop-flip", "sgd", 0.03, 8, 2)  # DER++'s buffer-200 row of best_args.py
    assert (res["hparams"]["alpha"], res["hparams"]["beta"], res["hparams"]["minibatch_size"]) == (0.1, 0.5, 32)
    assert c["input_shape"] == [3, 32, 32] and c["classes"] == [[0, 1], [2, 3]] and c["head_sizes"] == [10]
    assert res["provenance"]["overrides"]["model"] == "reduced_resnet18"
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in res["curves"])
    trained = load(out)
    assert type(trained.model).__name__ == "MultiHeadNet" and trained.model.feature_size == 160
    stream = make_benchmark("seq-cifar10", data_root=str(tmp_path / "data"), n_tasks=2)
    for j, task in enumerate(stream):
        pred = trained.predict(task.test_x)
        assert set(pred.tolist()) <= {-1, 0, 1, 2, 3}  # -1: an output of the full head no class of the run maps to
        truth = torch.tensor(task.classes)[task.test_y - 2 * j]  # head outputs -> CIFAR-10 labels
        assert (pred == truth).float().mean().item() == pytest.approx(res["accuracy_matrix"][-1][j])


@pytest.mark.slow
def test_load_task_incremental_run_predicts_within_the_task(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--strategy", "naive", "--benchmark", "split-mnist-5k", "--tasks", "2", "--epochs", "1",
                 "--hidden", "32", "--out", str(out), "--quiet"]) == 0
    trained = load(out)
    stream = make_benchmark("split-mnist-5k")
    pred = trained.predict(stream[1].test_x, task=1)
    assert set(pred.tolist()) <= {2, 3}
    res = json.loads((out / "results.json").read_text())
    acc = (pred == torch.tensor(stream[1].classes)[stream[1].test_y]).float().mean().item()
    assert acc == pytest.approx(res["accuracy_matrix"][-1][1])
    assert (trained.predict(stream[0].test_x, task="0-1") <= 1).all()
    with pytest.raises(ValueError, match="pass task="):
        trained.predict(stream[0].test_x)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        load(tmp_path)


@pytest.mark.slow
def test_der_table_runs_a_table_and_writes_its_ledger_rows(tmp_path):
    """`reproduce der-table` (scaled down, on generated CIFAR files): each method with its own published settings,
    the paper's number beside ours, ledger rows with the command, and --resume trains nothing again."""
    from clframework.apps.reproduce import plan
    from clframework.benchmarks.der import PUBLISHED

    write_cifar10(tmp_path / "data", cifar_arrays(10, 40, 20, seed=4))
    args = ["reproduce", "der-table", "--dataset", "seq-cifar10", "--buffer", "200", "--quick", "--seeds", "1",
            "--data-root", str(tmp_path / "data"), "--model", "reduced_resnet18", "--arms", "naive,agem,joint",
            "--out", str(tmp_path / "table"), "--quiet"]
    assert main(args) == 0
    result = json.loads((tmp_path / "table" / "reproduction.json").read_text())
    arms = result["arms"]
    assert arms["naive"]["protocol"]["lr"] == 0.1 and arms["agem (buffer 200)"]["protocol"]["lr"] == 0.03
    assert arms["agem (buffer 200)"]["hparams"]["memory_size"] == 200
    assert arms["agem (buffer 200)"]["published"].startswith("20.04 +- 0.34")
    assert "model resnet18 -> reduced_resnet18 (--model)" in result["scaled"]
    ledger = (tmp_path / "table" / "ledger.md").read_text().splitlines()
    rows = {line.split(" | ")[1]: line for line in ledger[2:]}
    assert set(rows) == {"naive", "agem", "joint (bound)"}
    assert f"{PUBLISHED['seq-cifar10'][('joint', None)][0]:.2f}" in rows["joint (bound)"]
    ours = f"{100 * arms['naive']['acc_mean']:.2f} +- {100 * arms['naive']['acc_spread']:.2f} (1)"
    assert ours in rows["naive"] and "reproduce der-table --dataset seq-cifar10 --buffer 200" in rows["naive"]
    assert "[scaled:" in rows["naive"]
    before = (tmp_path / "table" / "naive-seed0" / "results.json").read_text()
    assert main(args[:-1] + ["--resume", "--quiet"]) == 0
    assert (tmp_path / "table" / "naive-seed0" / "results.json").read_text() == before
    with pytest.raises(ValueError, match="5120"):
        plan("der-table", dataset="seq-cifar10", buffer=300)


@pytest.mark.slow
def test_gpu_der_epoch_script_dry_run_on_cpu(tmp_path):
    """scripts/gpu_der_epoch.sh (for a GPU machine) on the CPU at a tiny scale: it writes the CIFAR-format files,
    trains two tasks and states the time per epoch from results.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_der_epoch.sh"
    env = {**os.environ, "PYTHON": sys.executable, "STRATEGY": "naive", "N_TRAIN": "100", "N_TEST": "20"}
    proc = subprocess.run([str(script), str(tmp_path / "out"), "--model", "reduced_resnet18", "--device", "cpu"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    line = (tmp_path / "out" / "epoch_time.txt").read_text()
    assert f"{res['train_seconds'] / 2:.1f} s per epoch" in line and "augment crop-flip" in line
    assert res["config"]["batch_size"] == 32 and len(res["tasks"]) == 2


def test_ledger_lists_every_published_row_with_a_command_that_plans():
    """docs/ledger.md: every published CIFAR/TinyImageNet number (benchmarks/der.py) with its source, and its
    command resolves to that method at that buffer (methods not registered yet are named by plan())."""
    import re
    import shlex
    from pathlib import Path

    from clframework.apps.reproduce import plan
    from clframework.benchmarks.der import SOURCES
    from clframework.benchmarks.registry import BENCHMARKS

    text = (Path(__file__).resolve().parents[1] / "docs" / "ledger.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| seq-")]
    for proto, table in PUBLISHED.items():
        for (strategy, buffer), (mean, sd) in table.items():
            value = f"{mean:.2f}" + (f" +- {sd:.2f}" if sd is not None else "")
            hits = [r for r in rows if r.startswith(f"| {proto} |") and f"| {value} ({SOURCES[proto]}) |" in r
                    and f"| {buffer if buffer is not None else '-'} |" in r]
            assert len(hits) == 1, (proto, strategy, buffer)
            args = shlex.split(re.search(r"`(clframework reproduce [^`]+)`", hits[0]).group(1))
            opts = dict(zip(args[3::2], args[4::2]))
            assert opts["--dataset"] == proto and opts["--arms"].split(",")[-1] in (strategy, "joint")
            if proto not in BENCHMARKS.names():
                continue
            p = plan("der-table", dataset=proto, buffer=int(opts["--buffer"]) if "--buffer" in opts else None)
            labels = [c.strategy for c in p["configs"].values()]
            assert strategy in labels + p["not_registered"] + ["joint"]


def test_seq_cifar100_multistep_schedule_matches_torch_multisteplr():
    """X-DER's seq-CIFAR-100 decays the lr x0.1 at epochs 35 and 45 (mammoth: MultiStepLR([35, 45], gamma=0.1),
    stepped once per epoch); our per-task schedule gives torch's learning rate at every epoch."""
    from clframework.recipe import Recipe

    train = RunConfig("naive", "seq-cifar100").resolved()["train"]
    assert (train["lr_schedule"], tuple(train["lr_milestones"]), train["lr_gamma"], train["epochs"]) == \
        ("multistep", (35, 45), 0.1, 50)
    recipe = Recipe("sgd", train["lr"], lr_schedule="multistep", lr_milestones=[35, 45]).resolved()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [35, 45], gamma=0.1)
    for epoch in range(50):
        assert recipe.lr_at(epoch, 7, 10, 50) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="increasing epochs"):
        RunConfig("naive", "seq-cifar100", lr_milestones=[45, 35]).resolved()
    with pytest.raises(ValueError, match="lr_milestones applies to the multistep schedule only"):
        RunConfig("naive", "seq-cifar10", lr_milestones=[35]).resolved()


def test_run_takes_the_row_of_its_memory_size():
    """One mechanism for per-method settings (Protocol.method_settings): the run's memory_size picks the row."""
    derpp = {b: RunConfig("derpp", "seq-cifar10", hparams={"memory_size": b}).resolved() for b in (200, 500, 5120)}
    for b, cfg in derpp.items():
        train, hparams = best_row("seq-cifar10", "derpp", b)
        assert cfg["train"]["lr"] == train["lr"]
        assert {k: cfg["hparams"][k] for k in hparams} == hparams
    lwf = RunConfig("lwf", "seq-cifar10").resolved()
    assert lwf["train"]["weight_decay"] == 5e-4 and lwf["train"]["lr"] == 0.01


def test_seq_tinyimagenet_reads_the_users_folder(tmp_path):
    """seq-tinyimagenet on a tiny-imagenet-200 folder in the real layout (random pixels, 4 classes here): tasks of
    consecutive sorted wnids, 64 px, class-incremental, with the DER protocol (ResNet-18, 100 epochs, crop-flip)."""
    from fake_folders import tiny_imagenet

    tiny_imagenet(tmp_path, n_classes=4, train_per_class=3, val_per_class=2)
    stream = make_benchmark("seq-tinyimagenet", data_root=str(tmp_path), classes_per_task=2, n_tasks=2)
    assert stream.name == "seq-tinyimagenet" and stream.setting == "class" and stream.head_sizes == [4]
    assert stream.input_shape == (3, 64, 64) and len(stream) == 2
    train = RunConfig("derpp", "seq-tinyimagenet", hparams={"memory_size": 500}).resolved()["train"]
    assert (train["model"], train["epochs"], train["batch_size"], train["augment"], train["lr"]) == \
        ("resnet18", 100, 32, "crop-flip", 0.03)
    from clframework.benchmarks.registry import BENCHMARKS
    assert BENCHMARKS.get("seq-tinyimagenet").extra["available"](str(tmp_path))
    assert not BENCHMARKS.get("seq-tinyimagenet").extra["available"](str(tmp_path / "elsewhere"))


def test_der_table_runs_the_mnist_protocol_on_a_cpu_and_its_help_lists_the_arms(tmp_path, capsys):
    """Issue 31: `reproduce der-table --dataset seq-fashion-mnist --quick` (the MLP protocol) on a CPU, on small
    files in the real format; `reproduce der-table --help` lists its datasets, buffers, seeds and arms."""
    import json

    from fake_datasets import mnist_arrays, write_idx_set

    from clframework.apps.cli import main
    from clframework.benchmarks.der import PUBLISHED

    write_idx_set(tmp_path / "data", mnist_arrays(60, 20))
    out = tmp_path / "rep"
    assert main(["reproduce", "der-table", "--dataset", "seq-fashion-mnist", "--quick", "--seeds", "1", "--arms",
                 "naive,der", "--buffer", "200", "--data-root", str(tmp_path / "data"), "--device", "cpu", "--quiet",
                 "--plots", "none", "--out", str(out)]) == 0
    saved = json.loads((out / "reproduction.json").read_text())
    assert list(saved["arms"]) == ["naive", "der (buffer 200)"]
    assert saved["arms"]["der (buffer 200)"]["hparams"]["memory_size"] == 200
    assert all("no published result" in a["published"] for a in saved["arms"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark_options"]["train_per_class"] == 300 and summary["setting"] == "class"
    assert summary["strategies"]["der (buffer 200)"]["train"]["epochs"] == 1
    assert summary["strategies"]["der (buffer 200)"]["train"]["batch_size"] == 10
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["reproduce", "der-table", "--help"])
    text = capsys.readouterr().out
    assert ("--dataset seq-mnist (benchmark seq-mnist; --quick: epochs=1, n_tasks=2, seeds=2, train_per_class=300)"
            in text)
    assert "seeds: 10" in text and "  --buffer 500 (default)" in text
    derpp = f"{PUBLISHED['seq-mnist'][('derpp', 200)][0]:.2f}"
    assert any(line.strip().startswith("derpp") and derpp in line for line in text.splitlines())
