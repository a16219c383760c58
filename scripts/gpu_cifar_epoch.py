"""One seq-cifar10 epoch on a GPU: ours (naive, er, der, derpp in each fast-step mode) against Mammoth's own code on
the same files and card (issue 29, item 5). A sibling of gpu_speed.py (generated data, the MLP arm) and
gpu_der_epoch.sh (one method through the command line); docs/performance.md has the command and the figures.

    python scripts/gpu_cifar_epoch.py OUT [--fashion-root DIR] [--mammoth PATH[@COMMIT]] [--methods naive,er,der,derpp]
                                      [--modes plain,bf16,compile,channels-last] [--deadline S] [--dry-run]

1. CIFAR-10-format files (`cifar-10-batches-py`: five data batches, the test batch, batches.meta) made from
   Fashion-MNIST: each 28x28 image zero-padded to 32x32 and repeated over three channels, its label kept. So
   seq-cifar10 (5 tasks of 2 classes) trains on real images of CIFAR's shape with no download. Both frameworks read
   these files: ours with its data root, Mammoth through torchvision's CIFAR10 class with the md5 comparison of the
   published files turned off (as our own reader does for files on disk).
2. Ours: `clframework.run` of each method on seq-cifar10 (ResNet-18, batch 32, crop+flip, SGD; er, der and derpp
   with a memory of 500 and the DER paper's settings for it), one epoch per task, in each mode: plain (float32,
   eager), bf16 (`--precision bf16`), compile (`--compile`), channels-last (the weights in channels-last memory
   format, so convolutions run NHWC). For each: training seconds, wall seconds (with the evaluation after every
   task), stream examples per second, and the fraction of the card's arithmetic limit it reached: the model's
   training FLOPs per example (forward and backward, counted by torch.utils.flop_counter on one minibatch) times the
   examples the method forwards per stream example (naive 1; er and der 2, derpp 3 once the memory holds examples,
   i.e. from the second task), over the card's dense peak for the mode's precision (TF32, which cuDNN uses for
   float32 convolutions by default, or bf16), from PEAK_TFLOPS or --peak-tflops.
3. Mammoth (--mammoth: a git directory such as the aimagelab/mammoth mirror, optionally PATH@COMMIT, or a source
   folder holding main.py): the tree is exported into a temporary folder (nothing of it is kept or committed) and its
   main.py trains each method (sgd, er, der, derpp) on the same files and device, one epoch per task, with the DER
   paper's seq-cifar10 settings at buffer 500. Its wall seconds, process start to end (imports, data, evaluation
   included), are the peer's time, beside ours for the same whole process. The modules that Mammoth imports at
   start-up only for datasets and methods not timed here (open_clip, timm, ...) are stood in for by empty modules
   when they are not installed.

Writes OUT/gpu_cifar_epoch.json and OUT/gpu_cifar_epoch.md. --dry-run: tiny files (--n-train images), the CPU, the
plain and channels-last modes, Mammoth in its --debug_mode; tests/test_fast_step.py runs it so.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = {"plain": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": "default"}, "channels-last": {}}
METHODS = ("naive", "er", "der", "derpp")
# examples forwarded per stream example once the memory holds some: the minibatch, plus 1 replayed minibatch
# (er: concatenated; der: its logits) or 2 (derpp: one for the logits, one for the labels)
FORWARDS = {"naive": 1, "er": 2, "der": 2, "derpp": 3}
# Mammoth's model name and arguments for the DER paper's seq-cifar10 at buffer 500 (utils/best_args.py)
MAMMOTH = {"naive": ["--model", "sgd", "--lr", "0.1"],
           "er": ["--model", "er", "--buffer_size", "500", "--lr", "0.1", "--minibatch_size", "32"],
           "der": ["--model", "der", "--buffer_size", "500", "--lr", "0.03", "--alpha", "0.3", "--minibatch_size",
                   "32"],
           "derpp": ["--model", "derpp", "--buffer_size", "500", "--lr", "0.03", "--alpha", "0.1", "--beta", "0.5",
                     "--minibatch_size", "32"]}
# dense tensor-core peaks in TFLOPS (NVIDIA's datasheets; their "with sparsity" figures halved), by name fragment,
# the most specific first
PEAK_TFLOPS = (("H200", {"tf32": 494.7, "bf16": 989.4}), ("H100 PCIe", {"tf32": 378.0, "bf16": 756.0}),
               ("H100", {"tf32": 494.7, "bf16": 989.4}), ("A100", {"tf32": 156.0, "bf16": 312.0}))
# imported by Mammoth's registries at start-up for datasets and methods not timed here
MAMMOTH_ABSENT = ("open_clip", "timm", "onedrivedownloader", "ftfy", "regex", "quadprog", "googledrivedownloader",
                  "clip", "six", "transformers", "wandb", "sklearn", "scipy", "pandas", "setproctitle")


def fashion_as_cifar(fashion_root, dest: Path, n_train: int = 0, n_test: int = 0) -> Path:
    """Write Fashion-MNIST as CIFAR-10's python files under dest/cifar-10-batches-py (the first n_train / n_test
    images of each split; 0: all) and return that folder."""
    from clframework.benchmarks.datasets import fashion_mnist

    data = fashion_mnist(str(fashion_root) if fashion_root else None, download=False)
    folder = Path(dest) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def cifar_rows(x: torch.Tensor, n: int) -> np.ndarray:
        x = x.reshape(len(x), 28, 28)[: n or len(x)]
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2))  # 32 x 32, the digit-like item centred
        return padded.unsqueeze(1).expand(-1, 3, -1, -1).reshape(len(padded), 3072).numpy()  # R, G, B planes

    def dump(name: str, rows: np.ndarray, labels) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [int(v) for v in labels],
                         "filenames": [f"{name}-{i}.png" for i in range(len(rows))]}, f)

    train = cifar_rows(data.train.raw(slice(None)), n_train)
    train_y = data.train.y[: len(train)]
    per = -(-len(train) // 5)
    for i in range(5):
        dump(f"data_batch_{i + 1}", train[i * per:(i + 1) * per], train_y[i * per:(i + 1) * per])
    test = cifar_rows(data.test.raw(slice(None)), n_test)
    dump("test_batch", test, data.test.y[: len(test)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"fashion-{i}" for i in range(10)], "num_cases_per_batch": per,
                     "num_vis": 3072}, f)
    return folder


def resnet18_channels_last(input_shape, head_sizes):
    """The registered resnet18 with its weights in channels-last memory format."""
    from clframework.models import build_model

    return build_model("resnet18", input_shape, head_sizes).to(memory_format=torch.channels_last)


def flops_per_example(device: torch.device, batch: int = 32) -> float:
    """Forward and backward FLOPs of the seq-cifar10 ResNet-18 per training example (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from clframework.models import build_model

    model = build_model("resnet18", (3, 32, 32), [10]).to(device)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def peak_tflops(device: torch.device, given: float = 0.0) -> dict:
    if given:
        return {"tf32": given, "bf16": given}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((peaks for fragment, peaks in PEAK_TFLOPS if fragment in name), {})


def ours(method: str, mode: str, root: Path, device: torch.device, tasks: int) -> dict:
    from clframework import RunConfig, run

    hparams = {"memory_size": 500} if method != "naive" else {}
    model = resnet18_channels_last if mode == "channels-last" else None
    config = RunConfig(method, "seq-cifar10", hparams=hparams, epochs=1, device=str(device), model=model,
                       tasks=tasks or None, benchmark_options={"data_root": str(root)}, **MODES[mode])
    result = run(config, quiet=True)
    return {"train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
            "acc": result.metrics["acc"]}


_MAMMOTH_LAUNCHER = """
import importlib.abc, importlib.machinery, runpy, sys, types
absent = set(sys.argv[1].split(","))

class Absent(types.ModuleType):
    # an uninstalled module that only code not run here uses: every attribute, call or item is another one
    def __init__(self, name="absent", *args, **kwargs):
        super().__init__(name if isinstance(name, str) else "absent")
        self.__path__ = []
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Absent(self.__name__ + "." + name)
    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else Absent(self.__name__ + "()")
    def __getitem__(self, key):
        return Absent(self.__name__ + "[]")
    def __iter__(self):
        return iter(())
    def __mro_entries__(self, bases):
        return (object,)

class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # last on sys.meta_path: consulted only for modules that no installed package provides
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in absent:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        return Absent(spec.name)
    def exec_module(self, module):
        pass

sys.meta_path.append(Finder())
import torchvision.datasets
cifar = torchvision.datasets.CIFAR10  # these files are not the published ones: no md5 comparison
cifar.train_list = [[f, None] for f, _ in cifar.train_list]
cifar.test_list = [[f, None] for f, _ in cifar.test_list]
cifar.meta = {**cifar.meta, "md5": None}
sys.argv = sys.argv[2:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def export_mammoth(spec: str, dest: Path) -> dict:
    """The Mammoth tree at `spec` (a source folder with main.py, or a git directory, optionally @COMMIT) in dest."""
    path, _, commit = spec.partition("@")
    source = Path(path).resolve()  # Mammoth runs in a folder of its own
    if (source / "main.py").is_file() and not commit:
        return {"source": str(source), "commit": None, "main": str(source / "main.py")}
    git = ["git", "--git-dir", str(source / ".git") if (source / ".git").exists() else str(source)]
    commit = subprocess.run([*git, "rev-parse", commit or "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run([*git, "archive", "--format=tar", commit], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return {"source": str(source), "commit": commit, "main": str(dest / "main.py")}


def mammoth(method: str, tree: dict, base: Path, work: Path, tasks: int, dry_run: bool, deadline: float) -> dict:
    """One Mammoth process: seq-cifar10's first `tasks` tasks, one epoch each, on `base`/CIFAR10; its wall
    seconds."""
    launcher = work / "mammoth_launcher.py"
    launcher.write_text(_MAMMOTH_LAUNCHER)
    args = [sys.executable, str(launcher), ",".join(MAMMOTH_ABSENT), tree["main"], "--dataset", "seq-cifar10",
            *MAMMOTH[method], "--n_epochs", "1", "--batch_size", "32", "--seed", "0", "--non_verbose", "1",
            "--base_path", f"{base}/", "--stop_after", str(tasks)]
    if dry_run:
        args += ["--debug_mode", "1", "--num_workers", "0"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=work,
                          timeout=max(1.0, deadline - time.perf_counter()))
    seconds = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}", "log_tail": tail}
    accuracy = [line for line in tail.splitlines() if "Accuracy for" in line]
    return {"wall_seconds": seconds, "final": accuracy[-1].strip() if accuracy else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--fashion-root", help="folder holding Fashion-MNIST (default: clframework's data roots)")
    p.add_argument("--mammoth", metavar="PATH[@COMMIT]", help="Mammoth's git directory (e.g. the aimagelab/mammoth "
                                                              "mirror) or source folder; without it, ours only")
    p.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)} (default all)")
    p.add_argument("--modes", help=f"of {', '.join(MODES)} (default all; --dry-run: plain,channels-last)")
    p.add_argument("--tasks", type=int, default=0, help="the first N tasks only, ours and Mammoth's (default all 5)")
    p.add_argument("--n-train", type=int, default=0, help="training images taken from Fashion-MNIST (default all)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the card's dense peak (default: PEAK_TFLOPS)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds for everything (default 540)")
    p.add_argument("--dry-run", action="store_true", help="tiny files, the CPU, Mammoth's debug mode")
    args = p.parse_args(argv)
    start = time.perf_counter()
    stop_at = start + args.deadline - 10
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    modes = [m.strip() for m in (args.modes or ("plain,channels-last" if args.dry_run else ",".join(MODES))).split(",")]
    bad = [m for m in methods if m not in METHODS] + [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown methods or modes {bad}; methods: {', '.join(METHODS)}; modes: {', '.join(MODES)}")
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    n_train = args.n_train or (200 if args.dry_run else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-cifar-") as tmp:
        work = Path(tmp)
        base = work / "data"
        folder = fashion_as_cifar(args.fashion_root, base / "CIFAR10", n_train, n_train // 5)
        from clframework.benchmarks import make_benchmark

        stream = make_benchmark("seq-cifar10", data_root=str(base / "CIFAR10"))
        tasks = stream.tasks[: args.tasks or len(stream.tasks)]
        examples = [len(t.examples("train")) for t in tasks]
        flops = flops_per_example(device)
        peaks = peak_tflops(device, args.peak_tflops)
        result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": args.dry_run,
                  "files": {"from": "Fashion-MNIST", "train": sum(len(t.examples("train")) for t in stream.tasks),
                            "folder": folder.name},
                  "tasks": len(tasks), "examples_per_epoch": sum(examples), "flops_per_example": flops,
                  "peak_tflops": peaks, "ours": {}, "mammoth": {}, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
        tree = export_mammoth(args.mammoth, work / "mammoth") if args.mammoth else None
        if tree:
            result["mammoth_tree"] = {k: tree[k] for k in ("source", "commit")}
        for position, mode in enumerate(modes):
            for method in methods:
                key = f"{method} {mode}"
                if time.perf_counter() > stop_at:
                    result["ours"][key] = {"skipped": "deadline"}
                    continue
                try:
                    r = ours(method, mode, base / "CIFAR10", device, len(tasks))
                except Exception as exc:  # noqa: BLE001 - a failing mode is recorded, the others still run
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                if "train_seconds" in r:
                    r["examples_per_second"] = sum(examples) / r["train_seconds"]
                    peak = peaks.get("bf16" if mode == "bf16" else "tf32")
                    stream_flops = flops * (examples[0] + FORWARDS[method] * sum(examples[1:]))
                    r["fraction_of_peak"] = stream_flops / r["train_seconds"] / (peak * 1e12) if peak else None
                result["ours"][key] = r
                print(f"ours {key}: {json.dumps(r)}", flush=True)
            if tree and position == 0:  # the peer's time right after ours in the first mode: the pair that matters
                for method in methods:
                    if time.perf_counter() > stop_at:
                        result["mammoth"][method] = {"skipped": "deadline"}
                        continue
                    try:
                        result["mammoth"][method] = mammoth(method, tree, base, work, len(tasks), args.dry_run,
                                                            stop_at)
                    except subprocess.TimeoutExpired:
                        result["mammoth"][method] = {"skipped": "deadline"}
                    print(f"mammoth {method}: {json.dumps(result['mammoth'][method])}", flush=True)
            # the record so far, in case the machine's limit ends the script
            (args.out / "gpu_cifar_epoch.json").write_text(json.dumps(result, indent=2))
    result["seconds"] = time.perf_counter() - start
    (args.out / "gpu_cifar_epoch.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_cifar_epoch.md").write_text(table(result))
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = [f"seq-cifar10 on {result['device']} (torch {result['torch']}, CUDA {result['cuda']})"
             f"{', dry run: tiny files' if result['dry_run'] else ''}: {result['tasks']} tasks x 1 epoch, "
             f"{result['examples_per_epoch']} stream examples, ResNet-18 at {result['flops_per_example'] / 1e6:.1f} "
             f"MFLOP per example (forward + backward)", "",
             "| method | mode | training s | wall s | examples/s | of the arithmetic limit | ACC |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, r in result["ours"].items():
        method, mode = key.split(" ", 1)
        if "train_seconds" not in r:
            lines.append(f"| {method} | {mode} | {r.get('error') or r.get('skipped')} | | | | |")
            continue
        frac = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
        lines.append(f"| {method} | {mode} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | "
                     f"{r['examples_per_second']:.0f} | {frac} | {r['acc']:.4f} |")
    if result["mammoth"]:
        tree = result.get("mammoth_tree", {})
        lines += ["", f"Mammoth ({tree.get('commit') or tree.get('source')}), whole process:", "",
                  "| method | wall s | final line |", "|---|---:|---|"]
        for method, r in result["mammoth"].items():
            what = f"{r['wall_seconds']:.1f} | {r['final']}" if "wall_seconds" in r else \
                f"{r.get('error') or r.get('skipped')} |"
            lines.append(f"| {method} | {what} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
