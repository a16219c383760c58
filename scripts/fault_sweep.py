"""The fault sweep of issue 30, rebuilt: ~130 small cases of bad input, damaged files and kill -9 run as real
processes on real files, each classified good, weak or bad.

  good  a clear one-line `clframework: error: ...` naming the problem (and the fix) before training, nothing
        half-written; or, for valid input, the correct result (a resumed run equal bit for bit to an uninterrupted one)
  weak  the right outcome, but a poor message (names no value or file), a late error (after training began, or a
        half-written folder), a traceback, a wrong exit status
  bad   a silent wrong answer, a crash (an uncaught exception), a hang (the case's timeout), exit 0 on invalid input

Categories: issue30 (the cases named in issue 30's items 1-10), rehearsal (the rehearsal family's hyperparameters and
needs), model (--model), recipe (the optimizer recipe flags), option (--option), augment (--augment), disk
(ImageFolder trees read from disk, --workers), report, runs, load (clframework.load and predict), reproduce
(reproduce der-table), study (compare, folders, resume, plugins) and kill (kill -9 at a chosen moment, then the same
command plus --resume, compared with an uninterrupted run: inside memory updates, iCaRL's herding, GDumb's retraining,
a checkpoint write, with DataLoader workers).

Every case is tiny (split-mnist-5k, --tasks 2, --epochs 1, a 16-unit MLP, 8x8 images), runs with OMP_NUM_THREADS=1 and
--threads 1 under `nice`, in its own folder under a temporary directory.

usage: python scripts/fault_sweep.py [--only ID,PREFIX*,...] [--category C,...] [--json OUT.json] [--keep DIR]
prints one line per case and the counts; --json writes every case's id, category, issue item, what good looks like,
the commands run, verdict and note.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("SWEEP_PYTHON", sys.executable)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
       "CLFRAMEWORK_NO_DOWNLOAD": "1"}
TINY = ["--epochs", "1", "--tasks", "2", "--hidden", "16", "--threads", "1", "--device", "cpu", "--quiet",
        "--plots", "none"]
MNIST = ["--benchmark", "split-mnist-5k"]
WRITTEN = ("config.json", "checkpoint.pt", "results.json", "summary.json", "failed.json", "model.pt")

CASES: List["Case"] = []


class Case:
    def __init__(self, cid: str, category: str, good: str, fn: Callable, item: Optional[int] = None,
                 timeout: float = 120):
        self.id, self.category, self.good, self.fn, self.item, self.timeout = cid, category, good, fn, item, timeout


def case(cid: str, category: str, good: str, item: Optional[int] = None, timeout: float = 120):
    def wrap(fn):
        CASES.append(Case(cid, category, good, fn, item, timeout))
        return fn
    return wrap


class Result:
    def __init__(self, rc, out, err, seconds, timed_out=False):
        self.rc, self.out, self.err, self.seconds, self.timed_out = rc, out, err, seconds, timed_out

    @property
    def error_line(self) -> Optional[str]:
        lines = [s for s in self.err.splitlines() if s.startswith("clframework: error:")]
        return lines[-1] if lines else None

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err


class Ctx:
    """One case's folder and the commands it ran."""

    def __init__(self, root: Path, shared: Path, timeout: float):
        self.root, self.shared, self.timeout, self.commands = root, shared, timeout, []

    def p(self, *parts) -> Path:
        return self.root.joinpath(*parts)

    def _proc(self, argv, env=None):
        return ["nice", "-n", "10", *argv], {**ENV, **(env or {})}

    def cli(self, *args, env=None, timeout=None) -> Result:
        return self.exe([PYTHON, "-m", "clframework", *map(str, args)], env=env, timeout=timeout,
                        shown=["clframework", *map(str, args)])

    def exe(self, argv, env=None, timeout=None, shown=None, cwd=None) -> Result:
        self.commands.append(" ".join(shown or argv))
        argv, env = self._proc(argv, env)
        t = time.time()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd or self.root,
                               timeout=timeout or self.timeout, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            return Result(None, _text(e.stdout), _text(e.stderr), time.time() - t, timed_out=True)
        return Result(p.returncode, p.stdout, p.stderr, time.time() - t)

    def py(self, code: str, timeout=None) -> Result:
        """Python steps, in a process of their own; they print a JSON line last."""
        self.commands.append("python -c " + json.dumps(textwrap.dedent(code).strip()))
        argv, env = self._proc([PYTHON, "-c", textwrap.dedent(code)])
        t = time.time()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=self.root,
                               timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired as e:
            return Result(None, _text(e.stdout), _text(e.stderr), time.time() - t, timed_out=True)
        return Result(p.returncode, p.stdout, p.stderr, time.time() - t)

    def popen(self, *args, env=None):
        self.commands.append(" ".join(["clframework", *map(str, args)]) + "   # killed with kill -9")
        argv, env = self._proc([PYTHON, "-m", "clframework", *map(str, args)], env)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=self.root, start_new_session=True)


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def _tail(s: str, n: int = 160) -> str:
    s = " | ".join(x for x in s.strip().splitlines()[-2:])
    return s if len(s) <= n else s[:n] + "..."


def written(folder: Optional[Path]) -> List[str]:
    if folder is None or not folder.exists() or not folder.is_dir():
        return []
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.name in WRITTEN)


# ---- verdicts ----------------------------------------------------------------------------------------------------

def names(line: str, word: str) -> bool:
    """`word` in `line`, a flag and its field alike (--lr-min, lr_min)."""
    def norm(x):
        return x.lower().replace("-", "_")
    return norm(word).lstrip("_") in norm(line)


def refused(r: Result, *words: str, out: Optional[Path] = None, status: int = 2):
    """Invalid input: one line naming the problem before training, nothing half-written."""
    if r.timed_out:
        return "bad", f"hang: no answer in {r.seconds:.0f} s"
    if r.rc == 0:
        return "bad", "exit 0 on invalid input: " + _tail(r.err or r.out)
    line = r.error_line
    if line is None:
        if r.rc == 2 and "usage:" in r.err and "error:" in r.err:  # argparse's own refusal: usage + one line
            line = r.err.strip().splitlines()[-1]
        else:
            return ("bad" if r.traceback else "weak"), f"exit {r.rc}, no error line: " + _tail(r.err)
    notes = []
    if r.traceback:
        notes.append("traceback")
    missing = [w for w in words if not names(line, w)]
    if missing:
        notes.append(f"names no {', '.join(missing)}")
    half = written(out)
    if half:
        notes.append("half-written: " + ", ".join(half))
    if r.rc != status:
        notes.append(f"exit {r.rc}")
    return ("weak" if notes else "good"), "; ".join(notes + [line[:200]])


def finished(r: Result, out: Optional[Path] = None, check: Optional[Callable] = None):
    """Valid input: exit 0, a results.json with finite accuracies, no traceback; `check(results)` -> (verdict, note)."""
    if r.timed_out:
        return "bad", f"hang: no answer in {r.seconds:.0f} s"
    if r.rc != 0:
        return "bad", f"exit {r.rc} on valid input: " + _tail(r.err)
    notes = []
    verdict = "good"
    if r.traceback:
        verdict, notes = "weak", ["traceback printed"]
    if out is not None:
        try:
            res = json.loads((out / "results.json").read_text())
        except (OSError, ValueError) as e:
            return "bad", f"no readable results.json: {e}"
        flat = [v for row in res["accuracy_matrix"] for v in row]
        if any(v is None or not 0 <= v <= 1 for v in flat):
            return "bad", f"accuracy matrix not finite: {res['accuracy_matrix']}"
        if check is not None:
            v2, note = check(res)
            verdict = max(verdict, v2, key=RANK.index)
            notes.append(note)
        else:
            notes.append(f"acc {res['metrics'].get('acc', flat[-1]):.3f}")
    return verdict, "; ".join(notes) or "exit 0"


def warned(r: Result, *words: str, out: Optional[Path] = None):
    """Valid but suspect input: it runs, with a warning naming the problem."""
    v, note = finished(r, out)
    if v == "bad":
        return v, note
    warn = [s for s in r.err.splitlines() if "warning" in s.lower()]
    hit = [s for s in warn if all(w.lower() in s.lower() for w in words)]
    if not hit:
        return "weak", "no warning naming " + ", ".join(words) + (f" (warnings: {_tail(' '.join(warn))})" if warn
                                                                   else "")
    return v, hit[0][:200]


def refused_or_finished(r: Result, *words: str, out: Optional[Path] = None):
    """Either is right (an edge value some protocol could mean): a clear refusal, or a finished run."""
    if r.rc == 0 and not r.timed_out:
        return finished(r, out)
    return refused(r, *words, out=out)


def refused_or_warned(r: Result, *words: str, out: Optional[Path] = None):
    if r.rc == 0 and not r.timed_out:
        return warned(r, *words, out=out)
    return refused(r, *words, out=out)


RANK = ["good", "weak", "bad"]


def worst(*verdicts):
    v = max((x[0] for x in verdicts), key=RANK.index)
    return v, " || ".join(x[1] for x in verdicts if x[0] != "good") or " || ".join(x[1] for x in verdicts)


def py_json(r: Result):
    """The JSON line a Python step printed last, or a verdict for its failure."""
    if r.timed_out:
        return None, ("bad", "hang")
    lines = [s for s in r.out.strip().splitlines() if s.startswith("{")]
    if r.rc != 0 or not lines:
        return None, ("bad", f"exit {r.rc}: " + _tail(r.err))
    return json.loads(lines[-1]), None


def api_error(r: Result, *words: str, kinds=("ValueError", "FileNotFoundError", "RuntimeError", "RegistryError")):
    """A Python step that must raise: an exception of a clear kind whose message names `words`."""
    data, fail = py_json(r)
    if fail:
        return fail
    if data.get("raised") is None:
        return "bad", "no exception: " + json.dumps(data)[:200]
    kind, msg = data["raised"], data["message"]
    notes = []
    if kind not in kinds:
        notes.append(f"raised {kind} (an internal error, not a message for the user)")
    missing = [w for w in words if not names(msg, w)]
    if missing:
        notes.append(f"names no {', '.join(missing)}")
    verdict = "good" if not notes else ("bad" if kind in ("KeyError", "AttributeError", "TypeError", "IndexError",
                                                            "UnpicklingError", "EOFError") and missing else "weak")
    return verdict, "; ".join(notes + [f"{kind}: {msg[:180]}"])


CATCH = """
try:
    {body}
except BaseException as e:
    print(json.dumps({{"raised": type(e).__name__, "message": str(e)}}))
else:
    print(json.dumps({{"raised": None, "message": ""}}))
"""


def catch(setup: str, body: str) -> str:
    return "import json\n" + textwrap.dedent(setup) + CATCH.format(body=body)


# ---- fixtures written into a case's folder ------------------------------------------------------------------------

def image_tree(root: Path, classes: int = 4, per_class: int = 10, size: int = 8, seed: int = 0, mode: str = "RGB",
               suffix: str = ".png") -> Path:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.integers(0, 128, 3)
        for i in range(per_class):
            px = (rng.integers(0, 128, (size, size, 3)) + tint).astype(np.uint8)
            img = Image.fromarray(px)
            if mode != "RGB":
                img = img.convert(mode)
            img.save(folder / f"img_{i}{suffix}")
    return root


MODELS = '''
from torch import nn


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class Small(nn.Module):
    def __init__(self, inputs, heads):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(inputs, 16), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(16, h) for h in heads)

    def features(self, x):
        return self.trunk(x)

    def forward(self, x, head=0):
        return self.heads[head](self.trunk(x))


def small(input_shape, head_sizes):
    return Small(_size(input_shape), head_sizes)


def raises(input_shape, head_sizes):
    raise RuntimeError("the factory's own bug")


def not_a_module(input_shape, head_sizes):
    return "a string"


def narrow(input_shape, head_sizes):
    return Small(_size(input_shape), [1 for _ in head_sizes])


class NoHead(Small):
    def forward(self, x):
        return self.heads[0](self.trunk(x))


def no_head(input_shape, head_sizes):
    return NoHead(_size(input_shape), head_sizes)


class NoFeatures(Small):
    features = None


def no_features(input_shape, head_sizes):
    return NoFeatures(_size(input_shape), head_sizes)


class Flat(Small):
    def forward(self, x, head=0):
        return self.heads[head](self.trunk(x)).sum(1)


def flat_output(input_shape, head_sizes):
    return Flat(_size(input_shape), head_sizes)


class Frozen(nn.Module):
    def __init__(self, inputs, heads):
        super().__init__()
        self.inputs, self.heads = inputs, heads

    def forward(self, x, head=0):
        return x.flatten(1)[:, :self.heads[head]] * 0


def no_parameters(input_shape, head_sizes):
    return Frozen(_size(input_shape), head_sizes)


def no_arguments():
    return Small(784, [2])


class NanOut(Small):
    def forward(self, x, head=0):
        return self.heads[head](self.trunk(x)) * float("nan")


def nan_output(input_shape, head_sizes):
    return NanOut(_size(input_shape), head_sizes)
'''

PLUGINS = {
    "raising_plugin.py": "x = 1 / 0\n",
    "syntax_plugin.py": "def broken(:\n    pass\n",
    "failing_plugin.py": textwrap.dedent('''
        from clframework import register_strategy
        from clframework.strategies.naive import Naive


        @register_strategy("fails-at-task-2")
        class FailsAtTask2(Naive):
            """Raises when its second task starts: a strategy's own bug."""

            def on_task_start(self, model, task_index):
                if task_index == 1:
                    raise RuntimeError("a bug in the strategy")
        '''),
}

# Loaded with --plugin by every run of a kill case (the uninterrupted one, the killed one and the resumed one, so that
# all three take the same code path); it holds the process at a chosen moment only when $SWEEP_PAUSE names it.
PAUSE = '''
import io
import multiprocessing
import os
import time
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_post_hook

where, mark = os.environ.get("SWEEP_PAUSE", ""), os.environ.get("SWEEP_MARK", "")
nth = int(os.environ.get("SWEEP_NTH", "1"))
calls = {"n": 0}


def hold(kind):
    worker_only = os.environ.get("SWEEP_WORKER_ONLY")
    if where != kind or (worker_only and multiprocessing.current_process().name == "MainProcess"):
        return
    calls["n"] += 1
    if calls["n"] == nth and not Path(mark + ".done").exists():  # once per case, not again in a retried process
        Path(mark + ".done").touch()
        Path(mark + ".tmp").write_text(str(os.getpid()))
        os.replace(mark + ".tmp", mark)  # whole: the sweep reads the pid as soon as the file exists
        time.sleep(600)


def after_step(opt, args, kwargs):
    hold("step")


register_optimizer_step_post_hook(after_step)

import clframework.strategies.memory as memory  # noqa: E402
import clframework.strategies.icarl as icarl  # noqa: E402
import clframework.strategies.gdumb as gdumb  # noqa: E402
import clframework.checkpoint as checkpoint  # noqa: E402

_slots = memory.reservoir_slots


def reservoir_slots(*a, **k):
    out = _slots(*a, **k)
    hold("memory")  # the slots drawn, the memory not yet written
    return out


memory.reservoir_slots = reservoir_slots
_herding = icarl.herding


def herding(features, m):
    hold("herding")
    return _herding(features, m)


icarl.herding = herding
_fit = gdumb.fit_memory


def fit_memory(model, *a, **k):
    # pause in the middle of the retraining: after its first optimizer steps
    if where == "fit" and calls["n"] + 1 == nth:
        hook = register_optimizer_step_post_hook(lambda o, a_, k_: hold("fit"))
        try:
            return _fit(model, *a, **k)
        finally:
            hook.remove()
    calls["n"] += where == "fit"
    return _fit(model, *a, **k)


gdumb.fit_memory = fit_memory
_write = checkpoint.write_atomic


def write_atomic(path, write):
    if where != "write" or Path(path).name != "checkpoint.pt":
        return _write(path, write)

    def half(f):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        hold("write")
        f.write(data[len(data) // 2:])
    return _write(path, half)


checkpoint.write_atomic = write_atomic

from clframework import register_strategy  # noqa: E402
from clframework.strategies.er import ER  # noqa: E402


@register_strategy("paused-er")
class PausedER(ER):
    """ER under a name of this plugin, so that --jobs workers import it (and its pauses) too."""
'''


def models(c: Ctx) -> None:
    (c.p("sweep_models.py")).write_text(MODELS)


def plugins(c: Ctx) -> None:
    for name, text in PLUGINS.items():
        c.p(name).write_text(text)


def matrices(path: Path):
    res = json.loads(path.read_text())
    return res["accuracy_matrix"], res.get("task_il_accuracy_matrix"), res.get("curves")


def study_matrices(folder: Path):
    return {str(p.parent.relative_to(folder)): matrices(p) for p in sorted(folder.glob("*/results.json"))}


def kill_and_resume(c: Ctx, args: List[str], pause: str, nth: int = 1, wait: float = 240, compare_study=False,
                    between: Optional[Callable] = None, kill_worker: bool = False):
    """The uninterrupted run, then the same command held at `pause` (its nth time) and killed with kill -9, then the
    same command plus --resume: the results must equal the uninterrupted run's bit for bit, and no process of the
    killed one may live on."""
    c.p("sweep_pause.py").write_text(PAUSE)
    full = [*args, "--plugin", str(c.p("sweep_pause.py"))]
    ref = c.cli(*full, "--out", c.p("ref"))
    if ref.rc != 0:
        return "bad", "the uninterrupted run failed: " + _tail(ref.err)
    mark = c.p("paused")
    proc = c.popen(*full, "--out", c.p("run"), env={"SWEEP_PAUSE": pause, "SWEEP_MARK": str(mark),
                                                     "SWEEP_NTH": str(nth)})
    deadline = time.time() + wait
    while not mark.exists():
        if proc.poll() is not None:
            return "bad", f"the run to kill ended (exit {proc.returncode}) before reaching {pause}: " + _tail(
                proc.stderr.read())
        if time.time() > deadline:
            kill_group(proc.pid)
            return "bad", f"never reached {pause}"
        time.sleep(0.02)
    held = int(mark.read_text() or proc.pid)
    notes = []
    if kill_worker:  # a DataLoader worker of the main process, while it trains
        kids = _children(proc.pid)
        if not kids:
            kill_group(proc.pid)
            return "bad", "no DataLoader worker to kill"
        os.kill(held, signal.SIGCONT)
        os.kill(kids[0], signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            return "bad", "hang after a DataLoader worker was killed"
        line = [s for s in err.splitlines() if s.startswith("clframework")]
        notes.append(f"worker killed: exit {proc.returncode}, " + (line[-1][:150] if line else _tail(err)))
        v_kill = "good" if line and "Traceback" not in err and "strategy or model" not in line[-1] else "weak"
    else:
        os.kill(held, signal.SIGKILL)
        if held != proc.pid:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10  # a DataLoader worker checks its parent every 5 s (MP_STATUS_CHECK_INTERVAL)
        while _group(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        left = _group(proc.pid)
        if left:
            notes.append(f"{len(left)} processes of the killed run still alive 10 s after kill -9")
            kill_group(proc.pid)
        v_kill = "weak" if left else "good"
    proc.stdout.close()
    proc.stderr.close()
    if between is not None:
        v = between()
        if v is not None:
            return v
    res = c.cli(*full, "--resume", "--out", c.p("run"))
    if res.rc != 0:
        return "bad", f"--resume failed, exit {res.rc}: " + _tail(res.err)
    if compare_study:
        a, b = study_matrices(c.p("ref")), study_matrices(c.p("run"))
    else:
        a, b = matrices(c.p("ref", "results.json")), matrices(c.p("run", "results.json"))
    if a != b:
        return "bad", "resumed results differ from the uninterrupted run's: " + str(a)[:120] + " vs " + str(b)[:120]
    resumed = "resumed_from" in json.loads(c.p("run", "results.json").read_text()) if not compare_study else True
    notes.append("matrices and curves bit-identical to the uninterrupted run" + ("" if resumed else
                                                                                 " (no resumed_from recorded)"))
    return v_kill, "; ".join(notes)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children(pid: int) -> List[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def _group(pgid: int) -> List[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, g, s in (x.split()[:3] for x in out.splitlines() if len(x.split()) >= 3)
            if int(g) == pgid and not s.startswith("Z")]


def run_args(strategy: str, *extra) -> List[str]:
    return ["run", "--strategy", strategy, *MNIST, *TINY, *extra]


def shared_study(c: Ctx, name: str, *args) -> Path:
    """A study several cases read (built once per sweep)."""
    folder = c.shared / name
    if not (folder / "summary.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        r = c.cli("compare", *args, "--out", folder)
        if r.rc not in (0, 3):
            raise RuntimeError(f"building the shared study {name} failed: {r.err[-500:]}")
    return folder


def er_der_joint(c: Ctx) -> Path:
    return shared_study(c, "er-der-joint", "--strategies", "er,der,joint", "--seeds", "2", "--setting", "class",
                        *MNIST, *TINY)


def class_study(c: Ctx) -> Path:
    return shared_study(c, "class-il", "--strategies", "naive,er", "--seeds", "2", "--setting", "class", *MNIST, *TINY)


def shared_run(c: Ctx, name: str, strategy: str, *extra) -> Path:
    folder = c.shared / name
    if not (folder / "results.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        r = c.cli(*run_args(strategy, *extra), "--out", folder)
        if r.rc != 0:
            raise RuntimeError(f"building the shared run {name} failed: {r.err[-500:]}")
    return folder


def copy_of(src: Path, c: Ctx, name: str) -> Path:
    dst = c.p(name)
    shutil.copytree(src, dst)
    return dst


PREDICT = """
import json, torch, clframework
run = {run!r}
trained = clframework.load(run)
res = json.load(open(run + "/results.json"))
stream = clframework.make_benchmark("split-mnist-5k", setting={setting!r}).subset(range(len(res["accuracy_matrix"])))
labels = torch.tensor([c for t in stream for c in t.classes])
accs = []
for j, task in enumerate(stream):
    if {setting!r} == "class":
        truth, pred = labels[task.test_y], trained.predict(task.test_x)
    else:
        truth, pred = torch.tensor(task.classes)[task.test_y], trained.predict(task.test_x, task=j)
    accs.append((pred == truth).sum().item() / len(truth))
rec = res["accuracy_matrix"][-1] if {setting!r} == "class" else res["task_il_accuracy_matrix"][-1]
print(json.dumps({{"predicted": accs, "recorded": rec}}))
"""


def predict_matches(c: Ctx, run: Path, setting: str):
    r = c.py(PREDICT.format(run=str(run), setting=setting))
    data, fail = py_json(r)
    if fail:
        return fail
    same = all(abs(a - b) < 1e-9 for a, b in zip(data["predicted"], data["recorded"]))
    return ("good" if same else "bad"), f"predict {data['predicted']} recorded {data['recorded']}"


# ================================================ the cases ==========================================================
# ---- issue 30, items 1-10 -------------------------------------------------------------------------------------------

for _s in ("gdumb", "icarl"):
    @case(f"i1-{_s}", "issue30", f"load(run).predict on each task equals the recorded accuracy for {_s}", item=1)
    def _(c, s=_s):
        hp = ["--set", "fit_epochs=4"] if s == "gdumb" else []
        r = c.cli(*run_args(s, "--setting", "class", *hp), "--out", c.p("r"))
        v = finished(r, c.p("r"))
        return worst(v, predict_matches(c, c.p("r"), "class")) if v[0] != "bad" else v


@case("i2-md", "issue30", "report: joint marked as a bound, never bold, er/der not starred against it", item=2,
      timeout=300)
def _(c):
    study = er_der_joint(c)
    r = c.cli("report", study)
    if r.rc != 0:
        return "bad", _tail(r.err)
    rows = [s for s in r.out.splitlines() if s.startswith("|")]
    joint = [s for s in rows if "joint" in s.lower() or "Joint" in s]
    if not joint or "bound" not in joint[0].lower() or "**" in joint[0]:
        return "bad", "joint's row: " + (joint[0][:150] if joint else "missing")
    if "differs from the best (joint)" in r.out or "(Joint)" in r.out:
        return "bad", "starred against joint"
    return "good", joint[0][:150]


@case("i2-latex", "issue30", "report --format latex: joint marked, not bold", item=2, timeout=300)
def _(c):
    r = c.cli("report", er_der_joint(c), "--format", "latex")
    if r.rc != 0:
        return "bad", _tail(r.err)
    joint = [s for s in r.out.splitlines() if "oint" in s and "&" in s]
    if not joint or "textbf" in joint[0] or "BOUND" not in joint[0].upper():
        return "bad", "joint's row: " + (joint[0][:150] if joint else "missing")
    return "good", joint[0][:150]


@case("i2-baseline", "issue30", "report --baseline joint refused: a bound is no baseline", item=2, timeout=300)
def _(c):
    return refused(c.cli("report", er_der_joint(c), "--baseline", "joint"), "joint", "bound")


@case("i3", "issue30", "gdumb --set fit_lr=100: exit 3, diverged in eval_model (NaN weights); or, where the retrained "
      "network ends finite but dead (one class for every input), exit 0 with a learned-nothing warning naming fit_lr "
      "for each task", item=3)
def _(c):
    r = c.cli(*run_args("gdumb", "--set", "fit_lr=100", "--setting", "class"), "--out", c.p("r"))
    if r.rc == 0:
        said = [s for s in r.err.splitlines() if "learned nothing" in s and "fit_lr" in s]
        if len(said) == 2:
            return "good", "exit 0, warned: " + said[0][:200]
        return "bad", "exit 0, chance accuracy, no warning naming fit_lr: " + _tail(r.out)
    if r.rc != 3:
        return ("bad" if r.traceback else "weak"), f"exit {r.rc}: " + _tail(r.err)
    res = json.loads(c.p("r", "results.json").read_text())
    ok = res.get("status") == "diverged" and res.get("diverged_at", {}).get("in") == "eval_model"
    return ("good" if ok else "weak"), (r.error_line or "")[:200]


def _item4(c):
    tree = image_tree(c.p("tree"), per_class=12)

    def remove_three():
        aside = c.p("aside")
        aside.mkdir()
        cls = tree / "class1"
        for f in sorted(cls.iterdir())[:3]:
            f.rename(aside / f.name)
        args = ["run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree, *TINY,
                "--batch-size", "4", "--checkpoint-every", "3", "--plugin", c.p("sweep_pause.py")]
        r = c.cli(*args, "--resume", "--out", c.p("run"))
        v = refused(r, "data changed", "class1")
        for f in aside.iterdir():
            f.rename(cls / f.name)
        return v if v[0] != "good" else None
    args = ["run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree, *TINY,
            "--batch-size", "4", "--checkpoint-every", "3"]
    return kill_and_resume(c, args, "step", nth=5, between=remove_three)


@case("i4-tree-changed", "issue30", "--resume after 3 files removed from the tree: refused naming the folder; "
      "files restored: resume equals the uninterrupted run", item=4, timeout=200)
def _(c):
    return _item4(c)


@case("i4-damaged-msg", "issue30", "a damaged image: one line naming the file, no invitation to resume on other data",
      item=4)
def _(c):
    tree = image_tree(c.p("tree"))
    (tree / "class2" / "img_3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree, *TINY,
              "--check-data", "--out", c.p("r"))
    v = refused(r, "img_3.png", out=c.p("r"))
    if r.error_line and "--resume" in r.error_line:
        return "weak", "invites --resume: " + r.error_line[:150]
    return v


for _s in ("er", "der", "derpp", "er_ace"):
    @case(f"i5-{_s}", "issue30", f"{_s} --set memory_size=1000000000: trains in normal time, one warning", item=5,
          timeout=90)
    def _(c, s=_s):
        return warned(c.cli(*run_args(s, "--set", "memory_size=1000000000"), "--out", c.p("r")), "memory_size",
                      out=c.p("r"))

DIES_STARTING = '''
import multiprocessing
import os
import signal
from pathlib import Path

from clframework import register_strategy
from clframework.strategies.naive import Naive

if multiprocessing.current_process().name != "MainProcess":  # a --jobs worker importing this plugin
    flag = Path(os.environ["SWEEP_DIE"])
    if not flag.exists():
        flag.touch()
        os.kill(os.getpid(), signal.SIGKILL)


@register_strategy("plugin-naive")
class PluginNaive(Naive):
    """Naive under a name of this plugin: the workers import the plugin to run it."""
'''


@case("i6-dies-starting", "issue30", "a --jobs worker dying while it starts: one warning, workers started again, "
      "the study finishes (no BrokenProcessPool/InvalidStateError traceback)", item=6, timeout=300)
def _(c):
    c.p("dies_starting.py").write_text(DIES_STARTING)
    r = c.cli("compare", "--strategies", "plugin-naive,naive,si", "--seeds", "1", *MNIST, *TINY, "--jobs", "2",
              "--plugin", c.p("dies_starting.py"), "--out", c.p("cmp"), env={"SWEEP_DIE": str(c.p("died"))})
    if r.timed_out:
        return "bad", "hang"
    if "Exception in thread" in r.err or "InvalidStateError" in r.err or "BrokenProcessPool" in r.err:
        return "bad", _tail(r.err)
    if not c.p("died").exists():
        return "weak", "no worker imported the plugin (the case did not happen): " + _tail(r.err)
    if r.rc != 0:
        return "weak", f"exit {r.rc}: " + _tail(r.err)
    return "good", _tail(r.err)


@case("i6-worker-killed", "issue30", "a --jobs worker killed mid-training: its run retried from its checkpoint, "
      "the study equals an uninterrupted one bit for bit", item=6, timeout=400)
def _(c):
    args = ["compare", "--strategies", "naive,paused-er", "--seeds", "1", *MNIST, *TINY, "--jobs", "2",
            "--checkpoint-every", "5"]
    c.p("sweep_pause.py").write_text(PAUSE)
    full = [*args, "--plugin", c.p("sweep_pause.py")]
    ref = c.cli(*full, "--out", c.p("ref"))
    if ref.rc != 0:
        return "bad", "uninterrupted study failed: " + _tail(ref.err)
    mark = c.p("paused")
    proc = c.popen(*full, "--out", c.p("run"), env={"SWEEP_PAUSE": "step", "SWEEP_MARK": str(mark), "SWEEP_NTH": "12",
                                                     "SWEEP_WORKER_ONLY": "1"})
    deadline = time.time() + 240
    while not mark.exists():
        if proc.poll() is not None or time.time() > deadline:
            kill_group(proc.pid)
            return "bad", "the worker never reached step 12"
        time.sleep(0.02)
    os.kill(int(mark.read_text()), signal.SIGKILL)  # the worker, held at its 12th step
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        return "bad", "hang after a worker was killed"
    if "Traceback" in err or "Exception in thread" in err:
        return "weak", "traceback after a worker was killed: " + _tail(err)
    if proc.returncode != 0:
        return "bad", f"exit {proc.returncode}: " + _tail(err)
    if study_matrices(c.p("ref")) != study_matrices(c.p("run")):
        return "bad", "the study's matrices differ from the uninterrupted study's"
    return "good", "bit-identical; " + _tail(err)


@case("i7-nohead-icarl", "issue30", "icarl with a model whose forward takes no head: refused before training", item=7)
def _(c):
    models(c)
    return refused(c.cli(*run_args("icarl", "--setting", "class", "--model", "sweep_models:no_head"),
                         "--out", c.p("r")), "head", out=c.p("r"))


@case("i7-size", "issue30", "an image of another size in a tree: refused before training naming the file", item=7)
def _(c):
    tree = image_tree(c.p("tree"))
    image_tree(c.p("odd"), classes=1, per_class=1, size=9)
    shutil.copy(c.p("odd", "class0", "img_0.png"), tree / "class3" / "img_7.png")
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree,
                         *TINY, "--out", c.p("r")), "img_7.png", out=c.p("r"))


@case("i7-corrupt", "issue30", "a corrupt image (no --check-data): refused before training naming the file", item=7)
def _(c):
    tree = image_tree(c.p("tree"), per_class=30)
    (tree / "class1" / "img_17.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree,
                         *TINY, "--out", c.p("r")), "img_17.png", out=c.p("r"))


@case("i7-icarl-task", "issue30", "compare naive,icarl on a task-IL benchmark: refused before the first run", item=7)
def _(c):
    return refused(c.cli("compare", "--strategies", "naive,icarl", "--seeds", "1", *MNIST, *TINY, "--out",
                         c.p("cmp")), "icarl", "--setting class", out=c.p("cmp"))


@case("i7-cumulative-task", "issue30", "compare naive,cumulative on task-IL: refused before the first run, or trains "
      "(cumulative on one head per task is well defined)", item=7)
def _(c):
    return refused_or_finished(c.cli("compare", "--strategies", "naive,cumulative", "--seeds", "1", *MNIST, *TINY,
                                     "--out", c.p("cmp")), "cumulative")


@case("i8-c1e39", "issue30", "si --set c=1e39: refused before training (float32 overflow)", item=8)
def _(c):
    return refused(c.cli(*run_args("si", "--set", "c=1e39"), "--out", c.p("r")), "float32", out=c.p("r"))


@case("i8-lr1e4", "issue30", "--lr 1e4: trains with a warning that the loss grew by orders of magnitude", item=8)
def _(c):
    r = c.cli(*run_args("naive", "--lr", "1e4"), "--out", c.p("r"))
    if r.rc == 3:
        return ("good" if r.error_line else "weak"), (r.error_line or _tail(r.err))[:200]
    return warned(r, "loss", out=c.p("r"))


@case("i8-cropflip-permuted", "issue30", "--augment crop-flip on permuted MNIST: refused", item=8)
def _(c):
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "permuted-mnist-5k", "--option", "n_tasks=2",
                         *TINY, "--augment", "crop-flip", "--out", c.p("r")), "crop-flip", out=c.p("r"))


@case("i8-ckpt-every", "issue30", "--checkpoint-every -1: refused before the folder is made", item=8)
def _(c):
    r = c.cli(*run_args("naive", "--checkpoint-every", "-1"), "--out", c.p("r"))
    v = refused(r, "--checkpoint-every")
    return ("weak", "the folder was made: " + v[1]) if c.p("r").exists() and v[0] == "good" else v


@case("i9-results-json", "issue30", "compare --resume over a damaged results.json: names the file", item=9,
      timeout=200)
def _(c):
    out = c.p("cmp")
    r = c.cli("compare", "--strategies", "naive,si", "--seeds", "1", *MNIST, *TINY, "--out", out)
    if r.rc != 0:
        return "bad", _tail(r.err)
    (out / "si-seed0" / "results.json").write_text('{"status": "fini')
    return refused(c.cli("compare", "--strategies", "naive,si", "--seeds", "1", *MNIST, *TINY, "--out", out,
                         "--resume"), "results.json")


@case("i9-summary-json", "issue30", "report over a damaged summary.json: names the file", item=9, timeout=300)
def _(c):
    study = copy_of(er_der_joint(c), c, "study")
    (study / "summary.json").write_text("{not json")
    return refused(c.cli("report", study), "summary.json")


@case("i9-plugin-raises", "issue30", "a plugin raising on import: one line naming the plugin", item=9)
def _(c):
    plugins(c)
    return refused(c.cli("list", "--plugin", c.p("raising_plugin.py")), "raising_plugin")


@case("i9-failed-label", "issue30", "compare's table labels a run that raised 'failed', not 'diverged'", item=9,
      timeout=200)
def _(c):
    plugins(c)
    r = c.cli("compare", "--strategies", "naive,fails-at-task-2", "--seeds", "1", *MNIST, *TINY, "--plugin",
              c.p("failing_plugin.py"), "--out", c.p("cmp"))
    if r.rc != 1:
        return ("bad" if r.rc == 0 else "weak"), f"exit {r.rc}"
    if "failed" not in r.out + r.err or "diverged" in (r.out + r.err).lower():
        return "bad", "labelled: " + _tail(r.out)
    return "good", [s for s in (r.out + r.err).splitlines() if "failed" in s][0][:150]


def _resume_without_config(c, damage):
    args = run_args("si", "--checkpoint-every", "4")
    c.p("sweep_pause.py").write_text(PAUSE)
    full = [*args, "--plugin", c.p("sweep_pause.py")]
    ref = c.cli(*full, "--out", c.p("ref"))
    mark = c.p("paused")
    proc = c.popen(*full, "--out", c.p("run"), env={"SWEEP_PAUSE": "step", "SWEEP_MARK": str(mark), "SWEEP_NTH": "18"})
    while not mark.exists() and proc.poll() is None:
        time.sleep(0.02)
    if not mark.exists():
        return "bad", "sweep error: the run ended before its 18th step"
    kill_group(proc.pid)
    proc.wait()
    damage(c.p("run", "config.json"))
    r = c.cli(*full, "--resume", "--out", c.p("run"))
    if ref.rc != 0 or r.rc != 0:
        return "bad", f"exit {r.rc}: " + _tail(r.err)
    same = matrices(c.p("ref", "results.json")) == matrices(c.p("run", "results.json"))
    return ("good" if same else "bad"), "resumed " + ("bit-identical" if same else "DIFFERENT")


@case("i9-config-missing", "issue30", "config.json gone beside a good checkpoint: --resume continues, bit-identical",
      item=9, timeout=200)
def _(c):
    return _resume_without_config(c, lambda p: p.unlink())


@case("i9-config-corrupt", "issue30", "config.json damaged beside a good checkpoint: --resume continues",
      item=9, timeout=200)
def _(c):
    return _resume_without_config(c, lambda p: p.write_text("{"))


@case("i9-stale-lock", "issue30", "a lock held by a live non-clframework pid: the message says it may be stale and "
      "which file to delete", item=9)
def _(c):
    import socket
    out = c.p("r")
    out.mkdir()
    (out / ".clframework").touch()
    (out / ".clframework.lock").write_text(f"1 {socket.gethostname()}\n")
    return refused(c.cli(*run_args("naive"), "--out", out, "--resume"), "stale", ".clframework.lock")


@case("i9-fashion-3of4", "issue30", "Fashion-MNIST with 3 of its 4 files: names the missing one, downloads nothing",
      item=9)
def _(c):
    raw = c.p("data", "FashionMNIST", "raw")
    raw.mkdir(parents=True)
    src = Path("/usr/share/datasets/fashion-mnist")
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        if (src / f).exists():
            shutil.copy(src / f, raw / f)
        else:
            (raw / f).write_bytes(b"\0" * 16)
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "split-fashion-mnist", "--data-root",
                         c.p("data"), *TINY, "--out", c.p("r")), "t10k-labels", out=c.p("r"))


@case("i10-clone-path", "issue30", "the kill -9 worker test passes from a checkout whose path contains 'clframework'",
      item=10, timeout=300)
def _(c):
    clone = c.p("x", "clframework")
    r = c.exe(["git", "clone", "-q", str(REPO), str(clone)])
    if r.rc != 0:
        return "bad", "clone failed: " + _tail(r.err)
    venv = Path(PYTHON).parent.parent
    (clone / ".venv").symlink_to(venv)
    t = c.exe([str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
               "tests/test_reliability.py::test_kill_9_of_the_main_process_leaves_no_worker_and_no_write_after"],
              timeout=280, cwd=clone)
    c.commands[-1] = "cd x/clframework && " + c.commands[-1]
    t2 = Result(t.rc, t.out, t.err, t.seconds, t.timed_out)
    if t2.timed_out:
        return "bad", "hang"
    return ("good" if t2.rc == 0 else "bad"), _tail(t2.out)


# ---- the rehearsal family --------------------------------------------------------------------------------------------

for _cid, _s, _set, _words in [
    ("r01", "er", "memory_size=0", ["memory_size"]),
    ("r02", "der", "memory_size=-5", ["memory_size"]),
    ("r06", "der", "alpha=-1", ["alpha"]),
    ("r08", "replay", "selection=bogus", ["selection", "reservoir"]),
    ("r12", "gdumb", "fit_epochs=0", ["fit_epochs"]),
    ("r14", "gdumb", "fit_after=bogus", ["fit_after"]),
    ("r15", "er", "foo=1", ["foo", "memory_size"]),
    ("r19", "er", "memory_size", ["memory_size", "KEY=VALUE"]),
]:
    @case(_cid, "rehearsal", f"{_s} --set {_set}: refused before training naming {', '.join(_words)}")
    def _(c, s=_s, st=_set, w=_words):
        extra = ["--setting", "class"] if s == "icarl" else []
        return refused(c.cli(*run_args(s, "--set", st, *extra), "--out", c.p("r")), *w, out=c.p("r"))


for _cid, _s, _extra, _good in [
    ("r20", "er", ["--setting", "class", "--set", "memory_size=5"], "a 5-example memory trains"),
    ("r24", "derpp", ["--set", "minibatch_size=500"], "a replay minibatch larger than the memory trains"),
]:
    @case(_cid, "rehearsal", f"{_s} {' '.join(_extra)}: {_good}")
    def _(c, s=_s, e=_extra):
        return refused_or_finished(c.cli(*run_args(s, *e), "--out", c.p("r")), out=c.p("r"))


@case("r26", "rehearsal", "icarl --set memory_size=2 on 4 classes (no exemplar per class): refused naming "
      "memory_size, or trains")
def _(c):
    return refused_or_finished(c.cli(*run_args("icarl", "--setting", "class", "--set", "memory_size=2"), "--out",
                                     c.p("r")), "memory_size", out=c.p("r"))


@case("r27", "rehearsal", "gdumb --set memory_size=1 (less than one example a class): refused naming memory_size, "
      "or trains")
def _(c):
    return refused_or_finished(c.cli(*run_args("gdumb", "--setting", "class", "--set", "memory_size=1",
                                               "fit_epochs=2"), "--out", c.p("r")), "memory_size", out=c.p("r"))


@case("r28", "rehearsal", "icarl on domain-incremental permuted MNIST: refused before training (needs class setting)")
def _(c):
    return refused(c.cli("run", "--strategy", "icarl", "--benchmark", "permuted-mnist-5k", "--option", "n_tasks=2",
                         *TINY, "--out", c.p("r")), "icarl", out=c.p("r"))


# ---- --model ---------------------------------------------------------------------------------------------------------

for _cid, _model, _words, _good in [
    ("m01", "bogus", ["bogus", "mlp"], "an unknown model name: refused listing the models"),
    ("m02", "no_such_module:factory", ["no_such_module"], "a module that does not exist: refused naming it"),
    ("m04", "sweep_models:raises", ["raises", "the factory's own bug"], "a factory that raises: refused naming it "
     "and its error, before training"),
    ("m05", "sweep_models:not_a_module", ["not_a_module", "Module"], "a factory returning no nn.Module: refused"),
    ("m06", "sweep_models:narrow", ["output"], "a model with 1 output for 2-class heads: refused before training"),
    ("m07", "sweep_models:flat_output", ["sweep_models:flat_output"], "a model whose output has the wrong shape: "
     "refused before training naming the model"),
    ("m08", "sweep_models:no_parameters", ["parameter"], "a model with no parameters: refused (nothing to train)"),
    ("m09", "sweep_models:no_arguments", ["no_arguments", "input_shape"], "a factory of the wrong signature: "
     "refused naming (input_shape, head_sizes)"),
]:
    @case(_cid, "model", "--model " + _model + ": " + _good)
    def _(c, m=_model, w=_words):
        models(c)
        return refused(c.cli(*run_args("naive", "--model", m), "--out", c.p("r")), *w, out=c.p("r"))


@case("m13", "model", "--model cnn --hidden 16 on a tree of 32x32 RGB images: --hidden does not apply to cnn: "
      "refused or warned")
def _(c):
    tree = image_tree(c.p("tree"), per_class=4, size=32)
    r = c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree, *TINY, "--model",
              "cnn", "--out", c.p("r"))  # TINY holds --hidden 16
    return refused_or_warned(r, "hidden", out=c.p("r"))


@case("m15", "model", "a model whose outputs are NaN: the run stops as diverged, exit 3")
def _(c):
    models(c)
    r = c.cli(*run_args("naive", "--model", "sweep_models:nan_output"), "--out", c.p("r"))
    if r.rc == 3 and r.error_line:
        return "good", r.error_line[:200]
    if r.rc == 2 and r.error_line and not r.traceback:
        return "good", r.error_line[:200]
    return ("bad" if r.rc == 0 else "weak"), f"exit {r.rc}: " + _tail(r.err)


# ---- the optimizer recipe ------------------------------------------------------------------------------------------

for _cid, _flags, _words in [
    ("p02", ["--optimizer", "adam", "--momentum", "0.9"], ["momentum", "sgd"]),
    ("p05", ["--lr-schedule", "step"], ["--lr-step-epochs"]),
    ("p06", ["--lr-schedule", "cosine", "--lr-milestones", "3"], ["milestones"]),
    ("p07", ["--lr-schedule", "multistep", "--lr-milestones", "3,1"], ["milestones"]),
    ("p10", ["--lr-schedule", "cosine", "--lr-min", "5"], ["lr-min", "lr"]),
    ("p13", ["--lr", "0"], ["lr"]),
    ("p17", ["--lr-gamma", "0.5"], ["gamma", "schedule"]),
    ("p19", ["--optimizer", "sgd", "--momentum", "1.5"], ["momentum"]),
    ("p22", ["--eval-subset", "5"], ["--eval-every"]),
]:
    @case(_cid, "recipe", f"{' '.join(_flags)}: refused before training naming {', '.join(_words)}")
    def _(c, f=_flags, w=_words):
        return refused(c.cli(*run_args("naive"), *f, "--out", c.p("r")), *w, out=c.p("r"))


@case("p24", "recipe", "--drop-last --batch-size 5000 (every minibatch dropped: no training step): refused or warned")
def _(c):
    return refused_or_warned(c.cli(*run_args("naive", "--drop-last", "--batch-size", "5000"), "--out", c.p("r")),
                             "drop", out=c.p("r"))


@case("p25", "recipe", "--lr-schedule multistep --lr-milestones 5 with --epochs 1 (a milestone never reached): "
      "refused or warned")
def _(c):
    return refused_or_warned(c.cli(*run_args("naive", "--optimizer", "sgd", "--lr-schedule", "multistep",
                                             "--lr-milestones", "5"), "--out", c.p("r")), "milestone", out=c.p("r"))


@case("p27", "recipe", "adamw, cosine, grad-clip, 2 epochs: trains")
def _(c):
    return finished(c.cli(*run_args("er", "--optimizer", "adamw", "--lr-schedule", "cosine", "--grad-clip", "1",
                                    "--epochs", "2"), "--out", c.p("r")), c.p("r"))


# ---- --option ------------------------------------------------------------------------------------------------------

PERM = ["--benchmark", "permuted-mnist-5k"]
for _cid, _bench, _opt, _words in [
    ("o01", MNIST, "bogus=1", ["bogus", "setting"]),
    ("o03", PERM, "n_tasks=0", ["n_tasks"]),
    ("o07", ["--benchmark", "iblurry"], "disjoint=150", ["disjoint"]),
]:
    @case(_cid, "option", f"{_bench[1]} --option {_opt}: refused before training naming {', '.join(_words)}")
    def _(c, b=_bench, o=_opt, w=_words):
        r = c.cli("run", "--strategy", "naive", *b, *[x for x in TINY if x != "--tasks" and x != "2"],
                  "--option", o, "--out", c.p("r"))
        return refused(r, *w, out=c.p("r"))


@case("o11", "option", "--option setting=class with --setting task: the conflict refused")
def _(c):
    return refused(c.cli(*run_args("naive", "--option", "setting=class", "--setting", "task"), "--out", c.p("r")),
                   "setting", out=c.p("r"))


@case("o12", "option", "permuted-mnist-5k --option n_tasks=1000 --tasks 2: refused, or trains 2 tasks quickly "
      "(no 1000 permutations of the data in memory)", timeout=90)
def _(c):
    return refused_or_finished(c.cli("run", "--strategy", "naive", *PERM, "--option", "n_tasks=1000", *TINY,
                                     "--out", c.p("r")), "n_tasks", out=c.p("r"))


@case("o14", "option", "split-imagefolder --option test_fraction=1.5: refused")
def _(c):
    tree = image_tree(c.p("tree"))
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree,
                         *TINY, "--option", "test_fraction=1.5", "--out", c.p("r")), "test_fraction", out=c.p("r"))


@case("o15", "option", "split-imagefolder --option n_tasks=3 on 4 classes of 2 a task: refused naming the classes")
def _(c):
    tree = image_tree(c.p("tree"))
    return refused(c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree,
                         "--epochs", "1", "--hidden", "16", "--threads", "1", "--device", "cpu", "--quiet", "--plots",
                         "none", "--option", "n_tasks=3", "--out", c.p("r")), "n_tasks", out=c.p("r"))


@case("o17", "option", "split-mnist-5k --option setting=class trains class-IL")
def _(c):
    return finished(c.cli(*run_args("naive", "--option", "setting=class"), "--out", c.p("r")), c.p("r"),
                    check=lambda res: (("good" if res["config"].get("setting", res.get("setting")) == "class" or
                                        len(res["accuracy_matrix"][0]) == 2 else "bad"), "setting class"))


# ---- --augment -----------------------------------------------------------------------------------------------------

@case("a01", "augment", "--augment bogus: refused listing the choices")
def _(c):
    return refused(c.cli(*run_args("naive", "--augment", "bogus"), "--out", c.p("r")), "crop-flip")


@case("a03", "augment", "--augment crop-flip on split-mnist-5k trains")
def _(c):
    return finished(c.cli(*run_args("er", "--augment", "crop-flip"), "--out", c.p("r")), c.p("r"))


@case("a04", "augment", "--augment crop-flip on an 8x8 ImageFolder tree with gdumb (cutmix too) trains")
def _(c):
    tree = image_tree(c.p("tree"))
    return finished(c.cli("run", "--strategy", "gdumb", "--set", "fit_epochs=2", "--benchmark", "split-imagefolder",
                          "--data-root", tree, *TINY, "--augment", "crop-flip", "--out", c.p("r")), c.p("r"))


@case("a05", "augment", "--augment crop-flip on a tree of 2x2 images (padding 4 > size): trains or refused clearly")
def _(c):
    tree = image_tree(c.p("tree"), size=2)
    return refused_or_finished(c.cli("run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root",
                                     tree, *TINY, "--augment", "crop-flip", "--out", c.p("r")), "crop",
                               out=c.p("r"))


# ---- disk-backed benchmarks, --workers ------------------------------------------------------------------------------

def tree_run(c, tree, *extra, strategy="naive"):
    return c.cli("run", "--strategy", strategy, "--benchmark", "split-imagefolder", "--data-root", tree, *TINY,
                 *extra, "--out", c.p("r"))


@case("d01", "disk", "an ImageFolder tree with --workers 2 trains")
def _(c):
    return finished(tree_run(c, image_tree(c.p("tree")), "--workers", "2", strategy="er"), c.p("r"))


@case("d03", "disk", "--workers 1000: refused, or capped with a warning (not 1000 processes)", timeout=90)
def _(c):
    return refused_or_warned(tree_run(c, image_tree(c.p("tree")), "--workers", "1000"), "workers", out=c.p("r"))


@case("d05", "disk", "a tree with an empty class folder: refused naming the folder")
def _(c):
    tree = image_tree(c.p("tree"))
    (tree / "class9").mkdir()
    return refused(tree_run(c, tree), "class9", out=c.p("r"))


@case("d07", "disk", "a tree with a README.txt beside the class folders and a notes.txt inside one: trains or "
      "refused naming the file")
def _(c):
    tree = image_tree(c.p("tree"))
    (tree / "README.txt").write_text("about")
    (tree / "class0" / "notes.txt").write_text("about")
    return refused_or_finished(tree_run(c, tree), "notes.txt", out=c.p("r"))


@case("d08", "disk", "a grayscale image in an RGB tree: refused naming the file, or converted and trained")
def _(c):
    tree = image_tree(c.p("tree"))
    image_tree(c.p("gray"), classes=1, per_class=1, mode="L")
    shutil.copy(c.p("gray", "class0", "img_0.png"), tree / "class2" / "img_4.png")
    return refused_or_finished(tree_run(c, tree), "img_4.png", out=c.p("r"))


@case("d09", "disk", "a truncated PNG: refused before training naming the file")
def _(c):
    tree = image_tree(c.p("tree"))
    f = tree / "class0" / "img_2.png"
    f.write_bytes(f.read_bytes()[:40])
    return refused(tree_run(c, tree), "img_2.png", out=c.p("r"))


@case("d11", "disk", "--data-root that does not exist: refused naming it")
def _(c):
    return refused(tree_run(c, c.p("nowhere")), "nowhere", out=c.p("r"))


@case("d13", "disk", "train/ and test/ where test/ lacks a class: refused naming the class")
def _(c):
    image_tree(c.p("tree", "train"))
    image_tree(c.p("tree", "test"), classes=3, per_class=3)
    return refused(tree_run(c, c.p("tree")), "class3", out=c.p("r"))


@case("d14", "disk", "a class with a single image (no test example at 20%): refused naming the class")
def _(c):
    tree = image_tree(c.p("tree"))
    for f in sorted((tree / "class1").iterdir())[1:]:
        f.unlink()
    return refused(tree_run(c, tree), "class1", out=c.p("r"))


@case("d16", "disk", "a corrupt image found during training with --workers 2 (not sampled): one line naming the file")
def _(c):
    tree = image_tree(c.p("tree"), per_class=60)
    for i in (11, 23, 47):  # likely outside the 16 sampled
        (tree / "class0" / f"img_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\1" * 64)
    return refused(tree_run(c, tree, "--workers", "2"), "img_", out=c.p("r"))


@case("d17", "disk", "JPEG and PNG mixed, names with spaces and unicode: trains")
def _(c):
    tree = image_tree(c.p("tree"))
    image_tree(c.p("jpg"), per_class=3, suffix=".jpg", seed=3)
    for cls in c.p("jpg").iterdir():
        for f in cls.iterdir():
            f.rename(tree / cls.name / f"photo é {f.name}")
    return finished(tree_run(c, tree, "--workers", "1"), c.p("r"))


# ---- report ----------------------------------------------------------------------------------------------------------

@case("rp02", "report", "report on a folder without summary.json: refused naming summary.json")
def _(c):
    c.p("empty").mkdir()
    return refused(c.cli("report", c.p("empty")), "summary.json")


@case("rp03", "report", "report on a run's folder (results.json, no summary): refused saying it is a run",
      timeout=200)
def _(c):
    run = shared_run(c, "naive-run", "naive")
    return refused(c.cli("report", run), "summary.json")


@case("rp04", "report", "report --metrics bogus: refused listing the metrics", timeout=300)
def _(c):
    return refused(c.cli("report", er_der_joint(c), "--metrics", "bogus"), "bogus", "acc")


@case("rp07", "report", "report of two studies on different protocols (1 and 2 epochs a task): refused naming the "
      "difference", timeout=400)
def _(c):
    two = shared_study(c, "class-il-2-epochs", "--strategies", "naive,er", "--seeds", "2", "--setting", "class",
                       *MNIST, *TINY, "--epochs", "2")
    return refused(c.cli("report", class_study(c), two), "epoch")


@case("rp09", "report", "class-IL study, --metrics acc,fwt: the legend says FWT is meaningless in class-IL",
      item=2, timeout=400)
def _(c):
    r = c.cli("report", class_study(c), "--metrics", "acc,fwt")
    if r.rc != 0:
        return "bad", _tail(r.err)
    says = [s for s in r.out.splitlines() if "FWT" in s and ("class" in s.lower())]
    return ("good" if says else "weak"), (says[0][:150] if says else "no note on FWT in class-IL")


@case("rp10", "report", "report on a study without summary.json (stopped part-way): refused naming --resume",
      timeout=300)
def _(c):
    study = copy_of(er_der_joint(c), c, "study")
    (study / "summary.json").unlink()
    return refused(c.cli("report", study), "--resume")


@case("rp11", "report", "report --out into a folder that does not exist: writes it (or refused naming it)",
      timeout=300)
def _(c):
    r = c.cli("report", er_der_joint(c), "--out", c.p("no", "dir", "t.md"))
    if r.rc == 0:
        return ("good" if c.p("no", "dir", "t.md").exists() else "bad"), "exit 0"
    return refused(r, "t.md")


# ---- runs ------------------------------------------------------------------------------------------------------------

@case("rn02", "runs", "runs on a file: refused naming it")
def _(c):
    c.p("afile").write_text("x")
    r = c.cli("runs", c.p("afile"))
    return refused(r, "afile") if r.rc != 0 else ("weak", "exit 0: " + _tail(r.out + r.err))


@case("rn03", "runs", "runs over a damaged results.json: lists the others, names the damaged file", timeout=200)
def _(c):
    top = c.p("top")
    a = copy_of(shared_run(c, "naive-run", "naive"), c, "top/a")
    copy_of(shared_run(c, "naive-run", "naive"), c, "top/b")
    (a / "results.json").write_text("{broken")
    r = c.cli("runs", top)
    if r.rc != 0 or r.traceback:
        return ("bad" if r.traceback else "weak"), f"exit {r.rc}: " + _tail(r.err)
    named = "results.json" in (r.out + r.err) and any(w in (r.out + r.err).lower() for w in ("damaged", "unreadable"))
    return ("good" if named else "weak"), _tail(r.out + r.err, 200)


@case("rn04", "runs", "runs on a study stopped part-way: partial k/n", timeout=300)
def _(c):
    study = copy_of(er_der_joint(c), c, "study")
    (study / "summary.json").unlink()
    shutil.rmtree(study / "joint-seed1")
    r = c.cli("runs", c.p())
    ok = r.rc == 0 and "partial" in r.out
    return ("good" if ok else "weak"), _tail(r.out + r.err, 200)


@case("rn06", "runs", "runs over a damaged config.json and study.json: no traceback", timeout=300)
def _(c):
    study = copy_of(er_der_joint(c), c, "study")
    (study / "study.json").write_text("[")
    (study / "er-seed0" / "config.json").write_text("{")
    r = c.cli("runs", c.p())
    if r.rc != 0 or r.traceback:
        return ("bad" if r.traceback else "weak"), f"exit {r.rc}: " + _tail(r.err)
    return "good", _tail(r.out + r.err, 200)


# ---- load ------------------------------------------------------------------------------------------------------------

LOAD = "import clframework, torch\n"


@case("l02", "load", "load(run).predict(x, task=j) equals the recorded task-IL accuracy for si", timeout=200)
def _(c):
    return predict_matches(c, copy_of(shared_run(c, "si-run", "si"), c, "r"), "task")


@case("l04", "load", "load of an interrupted run (checkpoint, no results.json): refused saying it did not finish",
      timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    (run / "results.json").unlink()
    (run / "model.pt").unlink()
    return api_error(c.py(catch(LOAD, f"clframework.load({str(run)!r})")), "results.json")


@case("l05", "load", "load with model.pt missing: an error naming model.pt", timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    (run / "model.pt").unlink()
    return api_error(c.py(catch(LOAD, f"clframework.load({str(run)!r})")), "model.pt")


@case("l06", "load", "load with model.pt damaged: an error naming model.pt", timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    (run / "model.pt").write_bytes(b"PK\x03\x04 damaged")
    return api_error(c.py(catch(LOAD, f"clframework.load({str(run)!r})")), "model.pt")


@case("l07", "load", "load of a study's folder: an error saying to pass one of its runs", timeout=300)
def _(c):
    return api_error(c.py(catch(LOAD, f"clframework.load({str(er_der_joint(c))!r})")), "er-seed0")


@case("l08", "load", "predict with the wrong input shape: an error saying what the run takes", timeout=200)
def _(c):
    run = shared_run(c, "naive-run", "naive")
    return api_error(c.py(catch(LOAD, f"clframework.load({str(run)!r}).predict(torch.zeros(3, 5), task=0)")),
                     "shape")


@case("l11", "load", "load of a diverged run: refused or warned (its model is the diverged one)")
def _(c):
    r = c.cli(*run_args("naive", "--lr", "1e30"), "--out", c.p("r"))
    if r.rc != 3:
        return "weak", f"the run did not diverge (exit {r.rc}); case not reached"
    return api_error(c.py(catch(LOAD, f"clframework.load({str(c.p('r'))!r})")), "diverged")


@case("l13", "load", "load of a run whose model module is gone: an error naming the module and load(model=...)")
def _(c):
    models(c)
    r = c.cli(*run_args("naive", "--model", "sweep_models:small"), "--out", c.p("r"))
    if r.rc != 0:
        return "bad", _tail(r.err)
    c.p("sweep_models.py").unlink()
    shutil.rmtree(c.p("__pycache__"), ignore_errors=True)
    return api_error(c.py(catch(LOAD, f"clframework.load({str(c.p('r'))!r})"),), "sweep_models", "model=")


# ---- reproduce der-table -------------------------------------------------------------------------------------------

DER = ["reproduce", "der-table"]
for _cid, _args, _words, _good in [
    ("x01", ["--dataset", "bogus"], ["bogus", "seq-cifar10"], "an unknown dataset: refused listing them"),
    ("x02", ["--dataset", "seq-mnist", "--buffer", "123"], ["123", "500"], "an unlisted buffer: refused listing them"),
    ("x03", ["--dataset", "seq-mnist", "--quick", "--arms", "er"], ["mnist"], "seq-MNIST's files absent here: "
     "refused naming the files before training"),
    ("x04", ["--dataset", "seq-fashion-mnist", "--quick", "--arms", "bogus"], ["bogus"], "an unknown arm: refused "
     "listing the arms"),
    ("x09", ["--dataset", "seq-fashion-mnist", "--quick", "--arms", "er:memory_size=-1"], ["memory_size"],
     "an arm's bad override: refused before training"),
]:
    @case(_cid, "reproduce", "reproduce der-table " + " ".join(_args) + ": " + _good)
    def _(c, a=_args, w=_words):
        return refused(c.cli(*DER, *a, "--threads", "1", "--device", "cpu", "--quiet", "--out", c.p("r")), *w,
                       out=c.p("r"))


@case("x11", "reproduce", "reproduce der-table --dataset seq-fashion-mnist --quick --arms er --seeds 1: finishes, "
      "writes its table", timeout=400)
def _(c):
    r = c.cli(*DER, "--dataset", "seq-fashion-mnist", "--quick", "--arms", "er", "--seeds", "1", "--threads", "1",
              "--device", "cpu", "--quiet", "--plots", "none", "--out", c.p("r"))
    v = finished(r)
    if v[0] == "good" and not list(c.p("r").glob("*.md")) and not c.p("r", "reproduction.json").exists():
        return "weak", "no table written"
    return v


# ---- studies, folders, resume, plugins ---------------------------------------------------------------------------

@case("s02", "study", "compare --strategies '': refused")
def _(c):
    return refused(c.cli("compare", "--strategies", "", "--seeds", "1", *MNIST, *TINY, "--out", c.p("c")),
                   "strateg", out=c.p("c"))


@case("s06", "study", "--resume with another configuration: refused naming the difference", timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    return refused(c.cli(*run_args("naive", "--lr", "0.5"), "--out", run, "--resume"), "lr")


@case("s08", "study", "a truncated checkpoint.pt and --resume: refused naming the file and --overwrite", timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    (run / "results.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    return refused(c.cli(*run_args("naive"), "--out", run, "--resume"), "checkpoint.pt")


@case("s12", "study", "run --resume over a finished run whose results.json is damaged: names the file", timeout=200)
def _(c):
    run = copy_of(shared_run(c, "naive-run", "naive"), c, "r")
    (run / "results.json").write_text("{")
    return refused(c.cli(*run_args("naive"), "--out", run, "--resume"), "results.json")


@case("s13", "study", "tune --grid c=-1,1 (a bad grid value): refused before training")
def _(c):
    return refused(c.cli("tune", "--strategy", "si", "--grid", "c=-1,1", *MNIST, *TINY, "--out", c.p("t")), "c",
                   out=c.p("t"))


@case("s14", "study", "tune --grid bogus=1,2: refused naming the hyperparameter")
def _(c):
    return refused(c.cli("tune", "--strategy", "si", "--grid", "bogus=1,2", *MNIST, *TINY, "--out", c.p("t")),
                   "bogus", out=c.p("t"))


# ---- kill -9, then the same command plus --resume -----------------------------------------------------------------
# split-mnist-5k's protocol: batch 64, 800 training examples a task: 13 optimizer steps a task.

@case("k01", "kill", "er killed inside a reservoir memory update (task 2): --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("er", "--checkpoint-every", "7", "--setting", "class"), "memory", nth=20)


@case("k02", "kill", "der killed inside a memory update (task 1): --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("der", "--checkpoint-every", "7"), "memory", nth=8)


@case("k03", "kill", "icarl killed inside herding at the last task's end: --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("icarl", "--setting", "class", "--checkpoint-every", "7"), "herding", nth=3)


@case("k04", "kill", "gdumb killed inside its retraining on the memory (task 2): --resume bit-identical",
      timeout=240)
def _(c):
    return kill_and_resume(c, run_args("gdumb", "--setting", "class", "--set", "fit_epochs=6",
                                       "--checkpoint-every", "7"), "fit", nth=2)


@case("k05", "kill", "naive on a tree with --workers 2, main process killed mid-task: no worker left, --resume "
      "bit-identical", timeout=240)
def _(c):
    tree = image_tree(c.p("tree"), per_class=20)
    return kill_and_resume(c, ["run", "--strategy", "naive", "--benchmark", "split-imagefolder", "--data-root", tree,
                               *TINY, "--batch-size", "4", "--workers", "2", "--checkpoint-every", "3"], "step", nth=7)


@case("k06", "kill", "a DataLoader worker killed mid-task: one clear line, then --resume bit-identical", timeout=240)
def _(c):
    tree = image_tree(c.p("tree"), per_class=20)
    return kill_and_resume(c, ["run", "--strategy", "er", "--benchmark", "split-imagefolder", "--data-root", tree,
                               *TINY, "--batch-size", "4", "--workers", "2", "--checkpoint-every", "3"], "step", nth=9,
                           kill_worker=True)


@case("k07", "kill", "derpp killed while its checkpoint is half-written: --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("derpp", "--checkpoint-every", "7"), "write", nth=4)


@case("k08", "kill", "mir killed mid-task: --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("mir", "--setting", "class", "--checkpoint-every", "7"), "step", nth=20)


@case("k09", "kill", "er_ace killed in task 2, dropout on: --resume bit-identical", timeout=240)
def _(c):
    return kill_and_resume(c, run_args("er_ace", "--setting", "class", "--dropout", "0.3", "--checkpoint-every", "7"),
                           "step", nth=19)


@case("k10", "kill", "agem killed mid-task with --eval-every 5: --resume bit-identical (continual curves too)",
      timeout=240)
def _(c):
    return kill_and_resume(c, run_args("agem", "--checkpoint-every", "7", "--eval-every", "5", "--eval-subset", "50"),
                           "step", nth=17)


@case("k11", "kill", "compare er,der killed mid-study (main process): --resume gives the uninterrupted study",
      timeout=300)
def _(c):
    return kill_and_resume(c, ["compare", "--strategies", "er,der", "--seeds", "1", *MNIST, *TINY,
                               "--checkpoint-every", "7"], "step", nth=35, compare_study=True)


@case("k12", "kill", "gdumb with --workers 2 on a tree, killed inside its retraining: --resume bit-identical",
      timeout=240)
def _(c):
    tree = image_tree(c.p("tree"), per_class=12)
    return kill_and_resume(c, ["run", "--strategy", "gdumb", "--set", "fit_epochs=4", "--benchmark",
                               "split-imagefolder", "--data-root", tree, *TINY, "--workers", "2",
                               "--checkpoint-every", "3"], "fit", nth=2)


# ================================================ driver =============================================================

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated case ids or patterns (r0*)")
    ap.add_argument("--category", default="")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the cases' folders here (default: a temporary folder, removed)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    todo = CASES
    if args.only:
        pats = args.only.split(",")
        todo = [k for k in todo if any(fnmatch.fnmatch(k.id, p) for p in pats)]
    if args.category:
        todo = [k for k in todo if k.category in args.category.split(",")]
    if args.list:
        for k in todo:
            print(f"{k.id:22} {k.category:10} {k.good}")
        print(len(todo), "cases")
        return
    root = Path(args.keep or tempfile.mkdtemp(prefix="fault-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    shared = root / "_shared"
    shared.mkdir(exist_ok=True)
    rows, t0 = [], time.time()
    for k in todo:
        folder = root / k.id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        ctx = Ctx(folder, shared, k.timeout)
        t = time.time()
        try:
            verdict, note = k.fn(ctx)
        except Exception as e:  # the sweep's own failure to set a case up
            verdict, note = "bad", f"sweep error: {type(e).__name__}: {e}"
        rows.append({"id": k.id, "category": k.category, "item": k.item, "good": k.good, "verdict": verdict,
                     "note": note, "commands": ctx.commands, "seconds": round(time.time() - t, 1)})
        print(f"{verdict:5} {k.id:22} {time.time() - t:5.1f}s  {note[:230]}", flush=True)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in RANK}
    print(f"\n{len(rows)} cases in {time.time() - t0:.0f} s: {counts['good']} good, {counts['weak']} weak, "
          f"{counts['bad']} bad")
    for v in ("bad", "weak"):
        for r in rows:
            if r["verdict"] == v:
                print(f"  {v} {r['id']}: {r['good']}\n      {r['note'][:300]}\n      $ {r['commands'][-1][:300]}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "seconds": round(time.time() - t0), "cases": rows},
                                        indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
