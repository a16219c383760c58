"""Weights & Biases logging as a TrainerCallback: config, per-task accuracy against `tasks_trained`, per-epoch
training curves, with --eval-every the accuracy during training against `train_steps` (optimizer steps), the
accuracy matrix (table and heatmap), the plots, summary metrics and the result folder; and a compare's head-to-head
table and paired tests in one summary run of the group.

W&B is optional: any failure (wandb not installed, no network, no account) prints one warning and logging stops,
while training and the local result files go on untouched. A study (or lone run) asks the server once before its runs
start (`WandbLogger.prepare_study`); if it cannot be reached, or once an online start fails, the rest of the process,
and the study's loggers sent to worker processes, log offline at once (one warning), which `wandb sync` can upload
later. Runs are created with `reinit="create_new"`, so a W&B run the caller already has open is neither finished nor
logged to.

A run continued with --resume continues its W&B run: the same id (online, W&B's own resume), and the counters
`epochs_trained` and `tasks_trained` go on from the checkpoint. Offline, wandb writes every session to a folder of its
own; the earlier session's folder is replayed into the new one up to the checkpoint and removed, so one folder holds
the whole run and `wandb sync` uploads it once.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from clframework.callbacks import TrainerCallback

from .names import display

MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.init(mode=...) accepts
DEFAULT_PROJECT = "clframework"
_offline_after_failure = False  # server unreachable or an online start failed: later runs of this process go offline
START_TIMEOUT = 8.0  # seconds an online start may wait for the server (wandb's own default, 90 s, looked like a hang)


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
    """--wandb-mode, else $WANDB_MODE, else online; a value wandb does not accept is an error before training."""
    mode = mode or os.environ.get("WANDB_MODE") or "online"
    if mode not in MODES:
        raise ValueError(f"W&B mode must be one of {', '.join(MODES)} (--wandb-mode or $WANDB_MODE), got {mode!r}")
    return mode


def check_dir(folder: Path) -> Path:
    """Create `folder` and prove it writable (--wandb-dir), before any training; raise a one-line error if not."""
    folder = Path(folder).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"--wandb-dir {folder} is not a writable folder ({exc.strerror or exc}); pass a folder you "
                         f"can write to, or leave --wandb-dir out to use the output folder") from None
    return folder


def settings_from_env(project: Optional[str] = None, entity: Optional[str] = None, tags: Sequence[str] = (),
                      name: Optional[str] = None) -> dict:
    """Flags first, then W&B's own variables ($WANDB_PROJECT, $WANDB_ENTITY, $WANDB_TAGS, $WANDB_NAME)."""
    env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    return {"project": project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            "entity": entity or os.environ.get("WANDB_ENTITY") or None,
            "tags": list(tags) or env_tags, "name": name or os.environ.get("WANDB_NAME") or None}


ONLINE = ("online", "run", "shared")  # the modes that talk to the server


def server_unreachable(timeout: float = START_TIMEOUT) -> Optional[str]:
    """Why the W&B server (wandb's base URL: $WANDB_BASE_URL, `wandb login --host`, else W&B's cloud) cannot be
    reached, in one line, or None: any HTTP answer counts as reachable. A study asks once, before its runs start,
    so that the runs, and each `--jobs` worker process, do not each wait for the same unreachable server."""
    import requests
    import wandb

    url = wandb.setup().settings.base_url
    try:
        requests.head(url, timeout=timeout)
    except requests.RequestException as exc:
        return f"{url} unreachable, {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    """`Type: message` on one line (wandb's errors carry multi-line advice)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _short(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(config: dict, prefix: Optional[str] = None) -> str:
    """`<strategy>-<hyperparameters the user set>-seed<k>`, e.g. `si-c0.1-seed0`: those that differ from the
    strategy's defaults with the benchmark's preset applied (the preset is in the run's config, not its name), so
    that the trials of a sweep and the arms of a study have different, readable names."""
    try:
        defaults = _preset(config)
    except Exception:  # noqa: BLE001 - a name is cosmetic; an unknown strategy fails elsewhere with a clear message
        defaults = {}
    changed = [f"{k}{_short(v)}" for k, v in config.get("hparams", {}).items() if defaults.get(k, object()) != v]
    parts = [prefix] if prefix else []
    valid = ["valid"] if config.get("evaluate_on") == "valid" else []  # tune's runs scored on the hold-out
    return "-".join(parts + [config["strategy"], *changed, f"seed{config['seed']}", *valid])


def _preset(config: dict) -> dict:
    """The hyperparameters a run of this strategy gets without any --set: its defaults and the benchmark's preset
    (at the run's memory size, whose row the DER-line presets depend on)."""
    from clframework.config import RunConfig
    from clframework.plugin import STRATEGIES

    defaults = STRATEGIES.get(config["strategy"]).defaults
    if config.get("benchmark") is None:
        return defaults
    size = {"memory_size": config["hparams"]["memory_size"]} if "memory_size" in config.get("hparams", {}) else {}
    preset = RunConfig(config["strategy"], config["benchmark"], hparams=size,
                       benchmark_options=config.get("benchmark_options") or {}).resolved()["hparams"]
    return {**preset, **{k: defaults[k] for k in size if k in defaults}}  # a memory size other than the default shows


def default_tags(config: dict) -> List[str]:
    """Tags every run carries besides the user's: its benchmark, setting and buffer (`buffer500`)."""
    benchmark = config.get("benchmark")
    if benchmark is None:
        return []
    setting = (config.get("benchmark_options") or {}).get("setting")
    if setting is None:
        from clframework.benchmarks.registry import BENCHMARKS

        setting = BENCHMARKS.get(benchmark).defaults.get("setting")
    size = (config.get("hparams") or {}).get("memory_size")
    return [t for t in (benchmark, setting and f"{setting}-il", size is not None and f"buffer{size}") if t]


class WandbLogger(TrainerCallback):
    """One W&B run per (strategy, seed). `config` is RunConfig.resolved(); runs of one compare share `group`
    and use the strategy as `job_type`, so the W&B UI groups strategies head-to-head."""

    def __init__(self, config: dict, project: Optional[str] = None, group: Optional[str] = None,
                 mode: Optional[str] = None, wandb_dir: Optional[Path] = None, init_timeout: Optional[float] = None,
                 entity: Optional[str] = None, tags: Sequence[str] = (), name: Optional[str] = None,
                 job_type: Optional[str] = None, log: Callable[[str], None] = print):
        self.config = {**config, "versions": package_versions()}
        s = settings_from_env(project, entity, tags, name)
        self.project, self.entity = s["project"], s["entity"]
        self.tags = list(dict.fromkeys(s["tags"] + (default_tags(config) if "strategy" in config else [])))
        self.name = s["name"] or run_name(config)
        self.group, self.mode = group, check_mode(mode)
        # the strategy's display name (DER++, ER-ACE): W&B's charts grouped by job type show it
        self.job_type = job_type or (display(config["strategy"]) if "strategy" in config else None)
        # absolute: a wandb-core service shared with another process (WANDB_SERVICE) has its own working directory
        self.wandb_dir = Path(wandb_dir).absolute() if wandb_dir else None
        self.init_timeout = START_TIMEOUT if init_timeout is None and "WANDB_INIT_TIMEOUT" not in os.environ \
            else init_timeout
        self.log = log
        self.run = None
        self.resume_run_id: Optional[str] = None  # set by a resumed run (--resume): continue that W&B run
        self.resumed: Optional[dict] = None  # what the checkpoint holds (on_resume): the history to keep
        self.failed = False
        self.epochs_trained = 0

    @staticmethod
    def prepare_study(loggers: List["WandbLogger"]) -> None:
        """Before a study's runs start (or are pickled into `--jobs` and Ray workers, which know nothing of this
        process): one request for all its online loggers; if the server is unreachable, one warning and they all,
        like every later run of this process, start offline without waiting. Offline and disabled: no request."""
        global _offline_after_failure
        online = [lg for lg in loggers if lg.mode in ONLINE and lg.run is None and not lg.failed]
        if not online:
            return
        if not _offline_after_failure:
            try:
                why = server_unreachable(max(lg.init_timeout or START_TIMEOUT for lg in online))
            except Exception:  # noqa: BLE001 - W&B must never stop training; each run's own start says what fails
                return
            if why is None:
                return
            _offline_after_failure = True
            warnings.warn(f"W&B online start failed ({why}); every run of this process logs offline instead (upload "
                          f"later with `wandb sync`)", RuntimeWarning, stacklevel=3)
        for lg in online:
            lg.mode = "offline"

    @property
    def run_id(self) -> Optional[str]:
        """The W&B run's id once started (kept in the run's checkpoint, so --resume continues the same W&B run)."""
        return self.run.id if self.run is not None else None

    # -- guarded access ----------------------------------------------------------------------------------------
    def _warn(self, what: str, exc: BaseException) -> None:
        self.failed, self.run = True, None
        warnings.warn(f"W&B {what} failed ({_first_line(exc)}); W&B logging is off for this run, "
                      f"local results are unaffected", RuntimeWarning, stacklevel=3)

    def init_arguments(self, mode: str) -> dict:
        """wandb.init's arguments in `mode`; a resumed run names its W&B run's id (W&B's resume="allow": online
        the server continues that run and its step; offline see _continue_offline)."""
        settings = {"silent": True, "console": "off", "x_save_requirements": False}
        if self.init_timeout is not None:
            settings["init_timeout"] = self.init_timeout
        return dict(project=self.project, entity=self.entity, group=self.group, job_type=self.job_type, mode=mode,
                    name=self.name, tags=self.tags or None, config=self.config, reinit="create_new",
                    dir=str(self.wandb_dir) if self.wandb_dir else None, settings=settings,
                    **({"id": self.resume_run_id, "resume": "allow"} if self.resume_run_id else {}))

    def _init(self, mode: str):
        import wandb

        if self.wandb_dir is not None:
            self.wandb_dir.mkdir(parents=True, exist_ok=True)
        args = self.init_arguments(mode)
        run = wandb.init(**{**args, "settings": wandb.Settings(**args["settings"])})
        run.define_metric("tasks_trained")
        run.define_metric("accuracy/*", step_metric="tasks_trained")
        run.define_metric("epochs_trained")
        run.define_metric("epoch/*", step_metric="epochs_trained")
        run.define_metric("train_steps")
        run.define_metric("train/*", step_metric="train_steps")
        for prefix in ("continual", "continual_task_il"):
            run.define_metric(f"{prefix}/*", step_metric="train_steps")
        if self.resumed is not None and run.settings.mode in ("offline", "dryrun"):
            self._continue_offline(run)
        return run

    def _continue_offline(self, run) -> None:
        """Replay the earlier offline sessions of this run (same id) into `run`, the history up to the checkpoint
        only (epochs and evaluations after it are trained again), then remove their folders."""
        here = Path(run.settings.sync_dir)
        epochs, tasks = self.resumed["epochs_trained"], self.resumed["tasks_evaluated"]
        step = self.resumed.get("eval_step", -1)
        loss_step = self.resumed.get("loss_step", -1)
        for folder in sorted(p for p in here.parent.glob(f"offline-run-*-{run.id}") if p != here):
            for row in read_offline_run(folder)["history"]:
                if row.get("epochs_trained", epochs + 1) <= epochs or row.get("tasks_trained", tasks) < tasks \
                        or row.get("train_steps", step + 1) <= step \
                        or ("train/loss" in row and row["train_steps"] <= loss_step):
                    run.log({k: v for k, v in row.items() if not k.startswith("_")})
            shutil.rmtree(folder)

    def start(self) -> None:
        global _offline_after_failure
        if self.run is not None or self.failed:
            return
        online = self.mode in ONLINE
        try:
            self.run = self._init("offline" if online and _offline_after_failure else self.mode)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            if not online:
                return self._warn("initialisation", exc)
            _offline_after_failure = True
            warnings.warn(f"W&B online start failed ({_first_line(exc)}); this and every later run of this "
                          f"process log offline instead (upload later with `wandb sync`)", RuntimeWarning,
                          stacklevel=2)
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

    def _finish(self) -> None:
        """Finish our run and say where it is: its URL online, the `wandb sync` command offline."""
        run, self.run = self.run, None
        offline = run.settings.mode in ("offline", "dryrun")
        folder = Path(run.settings.sync_dir) if offline else None
        url = None if offline else run.url
        run.finish()
        if folder is not None:
            self.log(f"W&B offline run {self.name}: upload with `wandb sync {folder}`")
        elif url:
            self.log(f"W&B run {self.name}: {url}")

    def _finish_quietly(self) -> None:
        """After a failure: finish our own run only (never the caller's)."""
        run, self.run = self.run, None
        try:
            if run is not None:
                run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass

    # -- TrainerCallback -----------------------------------------------------------------------------------------
    def on_resume(self, progress: dict) -> None:
        self.resume_run_id = progress["run_id"]
        self.resumed, self.epochs_trained = progress, progress["epochs_trained"]

    def on_run_start(self) -> None:
        self.start()

    def on_epoch_end(self, task_index: int, epoch: int, loss: float, accuracy: float) -> None:
        self.epochs_trained += 1
        self._log({"epochs_trained": self.epochs_trained, "epoch/loss": loss, "epoch/accuracy": accuracy,
                   "epoch/task": task_index + 1, "epoch/epoch": epoch})

    def on_train_loss(self, step: int, loss: float) -> None:
        self._log({"train_steps": step, "train/loss": loss})

    def on_task_evaluated(self, task_index: int, accuracies: List[float]) -> None:
        row = {"tasks_trained": task_index + 1}
        row.update({f"accuracy/task{j + 1}": a for j, a in enumerate(accuracies)})
        if task_index >= 0:
            seen = accuracies[:task_index + 1]
            row["accuracy/average_seen"] = sum(seen) / len(seen)
        self._log(row)

    def on_continual_eval(self, points: List[dict]) -> None:
        """One row per evaluation point against `train_steps`: each seen task's accuracy (class-IL and task-IL) and
        their mean."""
        for p in points:
            row = {"train_steps": p["step"], "continual/task_trained": p["task"] + 1,
                   "continual/average_seen": sum(p["accuracy"]) / len(p["accuracy"])}
            row.update({f"continual/task{j + 1}": a for j, a in enumerate(p["accuracy"])})
            row.update({f"continual_task_il/task{j + 1}": a for j, a in enumerate(p["task_il_accuracy"])})
            self._log(row)

    def on_run_end(self, result: dict, out_dir: Optional[Path]) -> None:
        """Summary metrics, matrix table and heatmap, the run's plots, the result folder as an artifact; finish."""
        self.start()
        if self.run is None:
            return
        try:
            self._log_results(result, Path(out_dir) if out_dir else None)
            self._finish()
        except Exception as exc:  # noqa: BLE001
            self._warn("final logging", exc)
            self._finish_quietly()

    def _log_results(self, result: dict, out_dir: Optional[Path]) -> None:
        import wandb

        run = self.run
        cfg = result["config"]
        run.config.update({"setting": cfg["setting"], "head_sizes": cfg["head_sizes"], "device": cfg["device"],
                           "stream": result["benchmark"], "provenance": result.get("provenance", {})},
                          allow_val_change=True)
        run.summary.update({k: v for k, v in result["metrics"].items()})
        run.summary.update({"train_seconds": result["train_seconds"], "wall_seconds": result["wall_seconds"]})
        tasks = result["tasks"]
        table = wandb.Table(columns=["after_task"] + tasks,
                            data=[[f"{i + 1}: {tasks[i]}"] + row for i, row in enumerate(result["accuracy_matrix"])])
        media = {"accuracy_matrix": table}
        if result.get("task_il_accuracy_matrix"):  # the same run scored task-IL (summary: task_il_acc)
            media["task_il_accuracy_matrix"] = wandb.Table(
                columns=["after_task"] + tasks,
                data=[[f"{i + 1}: {tasks[i]}"] + row for i, row in enumerate(result["task_il_accuracy_matrix"])])
        if out_dir is not None:
            media.update(figures(out_dir, {"matrix": "accuracy_matrix_heatmap"}))
            artifact = wandb.Artifact(f"results-{run.id}", type="results",
                                      description=f"{result['strategy']} seed {result['seed']} result folder")
            for f in sorted(out_dir.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    artifact.add_file(str(f))
            run.log_artifact(artifact)
        run.log(media)


class WandbSummary(WandbLogger):
    """The summary run of a study's group (job type `summary`): the head-to-head table, the paired tests, the
    study's figures (its folder's PNGs, under `plots/`) and each strategy's mean ACC as summary metrics."""

    def __init__(self, group: str, **kwargs):
        kwargs.setdefault("name", f"{group}-summary")
        super().__init__({"kind": "compare summary"}, group=group, job_type="summary", **kwargs)

    def on_summary(self, summary: dict, out_dir: Optional[Path]) -> None:
        import wandb

        self.config.update({"benchmark": summary["benchmark"], "seeds": summary["seeds"],
                            "hparams": {n: s["hparams"] for n, s in summary["strategies"].items()},
                            "provenance": summary.get("provenance", {})})
        self.start()
        if self.run is None:
            return
        try:
            run = self.run
            run.config.update(self.config, allow_val_change=True)
            rows = summary["table"]
            head = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            cols = ["a", "b", "metric", "mean_diff", "ci_low", "ci_high", "p_value", "n", "note"]
            paired = wandb.Table(columns=cols, data=[[p.get(c) for c in cols] for p in summary["paired"]])
            run.log({"head_to_head": head, "paired": paired, **(figures(out_dir) if out_dir is not None else {})})
            for name, s in summary["strategies"].items():
                run.summary.update({f"{name}/acc_mean": s["acc_mean"], f"{name}/acc_sem": s["acc_sem"]})
            self._finish()
        except Exception as exc:  # noqa: BLE001
            self._warn("summary logging", exc)
            self._finish_quietly()


def figures(folder: Path, keys: Optional[dict] = None) -> dict:
    """The folder's PNG figures as W&B images, under `plots/<name>` unless `keys` names another key."""
    import wandb

    return {(keys or {}).get(png.stem, f"plots/{png.stem}"): wandb.Image(str(png), caption=png.stem)
            for png in sorted(Path(folder).glob("*.png"))}


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
        if pos + length > len(data):  # a chunk cut short (the writing process was killed): the file ends here
            break
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
                          "name": r.run.display_name, "id": r.run.run_id, "entity": r.run.entity,
                          "tags": list(r.run.tags), "git_commit": r.run.git.commit}
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
