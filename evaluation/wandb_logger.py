"""Weights & Biases logging as a TrainerCallback: config, per-task accuracy against `tasks_trained`, per-epoch
training curves, the accuracy matrix (table and heatmap), the plots, summary metrics and the result folder.

W&B is optional: any failure (wandb not installed, no network, no account) prints one warning and logging stops,
while training and the local result files go on untouched. Online initialisation that fails falls back to an offline
run, which `wandb sync` can upload later. `init_timeout` bounds the wait, so a run never stalls on W&B.
"""
from __future__ import annotations

import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import List, Optional

from clframework.trainer import TrainerCallback

MODES = ("online", "offline")


def package_versions() -> dict:
    """Versions of the packages that shape a result (for the run's config)."""
    out = {"python": sys.version.split()[0]}
    for pkg in ("clframework", "torch", "numpy", "scipy", "matplotlib", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_mode(mode: Optional[str]) -> str:
    """--wandb-mode, else $WANDB_MODE, else online; anything but online/offline is an error before training."""
    mode = mode or os.environ.get("WANDB_MODE") or "online"
    if mode not in MODES:
        raise ValueError(f"--wandb-mode must be 'online' or 'offline', got {mode!r}")
    return mode


class WandbLogger(TrainerCallback):
    """One W&B run per (strategy, seed). `config` is RunConfig.resolved(); runs of one compare share `group`
    and use the strategy as `job_type`, so the W&B UI groups strategies head-to-head."""

    def __init__(self, config: dict, project: str = "clframework", group: Optional[str] = None,
                 mode: Optional[str] = None, wandb_dir: Optional[Path] = None, init_timeout: float = 60.0):
        self.config = {**config, "versions": package_versions()}
        self.project, self.group, self.mode = project, group, check_mode(mode)
        # absolute: a wandb-core service shared with another process (WANDB_SERVICE) has its own working directory
        self.wandb_dir = Path(wandb_dir).absolute() if wandb_dir else None
        self.init_timeout = init_timeout
        self.run = None
        self.failed = False
        self.epochs_trained = 0

    # -- guarded access ----------------------------------------------------------------------------------------
    def _warn(self, what: str, exc: BaseException) -> None:
        self.failed, self.run = True, None
        warnings.warn(f"W&B {what} failed ({type(exc).__name__}: {exc}); W&B logging is off for this run, "
                      f"local results are unaffected", RuntimeWarning, stacklevel=3)

    def _init(self, mode: str):
        import wandb

        if self.wandb_dir is not None:
            self.wandb_dir.mkdir(parents=True, exist_ok=True)
        c = self.config
        run = wandb.init(project=self.project, group=self.group, job_type=c["strategy"], mode=mode,
                         name=f"{c['strategy']}-seed{c['seed']}", config=c, reinit="finish_previous",
                         dir=str(self.wandb_dir) if self.wandb_dir else None,
                         settings=wandb.Settings(init_timeout=self.init_timeout, silent=True, console="off",
                                                 x_save_requirements=False, disable_git=True))
        run.define_metric("tasks_trained")
        run.define_metric("accuracy/*", step_metric="tasks_trained")
        run.define_metric("epochs_trained")
        run.define_metric("train/*", step_metric="epochs_trained")
        return run

    def start(self) -> None:
        if self.run is not None or self.failed:
            return
        try:
            self.run = self._init(self.mode)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            if self.mode != "online":
                return self._warn("initialisation", exc)
            warnings.warn(f"W&B online initialisation failed ({type(exc).__name__}: {exc}); logging offline "
                          f"instead (upload later with `wandb sync`)", RuntimeWarning, stacklevel=2)
            try:
                self.run = self._init("offline")
            except Exception as exc2:  # noqa: BLE001
                self._warn("offline initialisation", exc2)

    def _log(self, data: dict) -> None:
        self.start()
        if self.run is None:
            return
        try:
            self.run.log(data)
        except Exception as exc:  # noqa: BLE001
            self._warn("logging", exc)

    # -- TrainerCallback -----------------------------------------------------------------------------------------
    def on_epoch_end(self, task_index: int, epoch: int, loss: float, accuracy: float) -> None:
        self.epochs_trained += 1
        self._log({"epochs_trained": self.epochs_trained, "train/loss": loss, "train/accuracy": accuracy,
                   "train/task": task_index + 1, "train/epoch": epoch})

    def on_task_evaluated(self, task_index: int, accuracies: List[float]) -> None:
        row = {"tasks_trained": task_index + 1}
        row.update({f"accuracy/task{j + 1}": a for j, a in enumerate(accuracies)})
        if task_index >= 0:
            seen = accuracies[:task_index + 1]
            row["accuracy/average_seen"] = sum(seen) / len(seen)
        self._log(row)

    def on_run_end(self, result: dict, out_dir: Optional[Path]) -> None:
        """Summary metrics, matrix table and heatmap, the run's plots, the result folder as an artifact; finish."""
        self.start()
        if self.run is None:
            return
        try:
            self._log_results(result, Path(out_dir) if out_dir else None)
            self.run.finish()
        except Exception as exc:  # noqa: BLE001
            self._warn("final logging", exc)
            self._finish_quietly()
        self.run = None

    def _finish_quietly(self) -> None:
        try:
            import wandb

            if wandb.run is not None:
                wandb.run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass

    def _log_results(self, result: dict, out_dir: Optional[Path]) -> None:
        import wandb

        run = self.run
        run.summary.update({k: v for k, v in result["metrics"].items()})
        run.summary.update({"train_seconds": result["train_seconds"], "wall_seconds": result["wall_seconds"]})
        tasks = result["tasks"]
        table = wandb.Table(columns=["after_task"] + tasks,
                            data=[[f"{i + 1}: {tasks[i]}"] + row for i, row in enumerate(result["accuracy_matrix"])])
        media = {"accuracy_matrix": table}
        if out_dir is not None:
            for png in sorted(out_dir.glob("*.png")):
                key = "accuracy_matrix_heatmap" if png.stem == "matrix" else f"plots/{png.stem}"
                media[key] = wandb.Image(str(png), caption=png.stem)
            artifact = wandb.Artifact(f"results-{run.id}", type="results",
                                      description=f"{result['strategy']} seed {result['seed']} result folder")
            for f in sorted(out_dir.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    artifact.add_file(str(f))
            run.log_artifact(artifact)
        run.log(media)


def _records(path: Path):
    """The protobuf records of a `.wandb` file: a 7-byte header (":W&B", magic, version), then LevelDB-log blocks
    of 32 KiB holding chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer too short for a header: skip to the next block
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pos += 7
        if kind == 0 and length == 0:  # zero padding at a block's end
            pos += left - 7
            continue
        chunks += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """What an offline run logged (from its run folder's `.wandb` file): run info, config, history rows, summary
    and artifact names. Lets a user (and the tests) check a run without an account or network."""
    import json

    files = list(Path(run_dir).glob("*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .wandb file in {run_dir}, found {len(files)}")
    out = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": []}

    def key(item):
        return ".".join(item.nested_key) if item.nested_key else item.key

    for r in _records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"project": r.run.project, "group": r.run.run_group, "job_type": r.run.job_type,
                          "name": r.run.display_name, "id": r.run.run_id}
            out["config"].update({key(u): json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({key(u): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "artifact":
            out["artifacts"].append({"name": r.artifact.name, "type": r.artifact.type,
                                     "files": [m.path for m in r.artifact.manifest.contents]})
    out["config"].pop("_wandb", None)
    return out
