"""Ctrl-C for the command line: a KeyboardInterrupt at a safe moment, never inside an import.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be. Raised inside an
import (torch's takes seconds at every start), it leaves half-initialised modules behind (a later import fails with
"maximum recursion depth exceeded", exit 2), aborts the process from a C++ callback (pybind11: exit -6), or, raised in
code that the import runs through exec() (every dataclass), makes CPython kill the process with SIGINT at exit even
though the CLI caught it (exit -2 after printing its message). The stress loop scripts/sigint_stress.py found all
three (issue 21). This handler defers such an interrupt and delivers it again a moment later, once the import is
done; everywhere else it raises at once, as Python's would.
"""
from __future__ import annotations

import _thread
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Optional

RETRY_SECONDS = 0.05


def _unsafe(frame: Optional[FrameType]) -> bool:
    """Inside an import, or in code run by exec()/eval() of a string (its frames' file name is "<string>")."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or name == "<string>":
            return True
        frame = frame.f_back
    return False


class Interrupts:
    """The handler's state. raising: a Ctrl-C raises KeyboardInterrupt (while a command works); otherwise it is only
    recorded in `received` (once the command has its exit code)."""

    def __init__(self):
        self.raising, self.received = True, False
        self._retry: Optional[threading.Timer] = None

    def __call__(self, signum, frame) -> None:
        self.received = True
        if not self.raising:
            return
        if _unsafe(frame):
            if self._retry is None or not self._retry.is_alive():
                self._retry = threading.Timer(RETRY_SECONDS, _thread.interrupt_main, (signal.SIGINT,))
                self._retry.daemon = True
                self._retry.start()
            return
        raise KeyboardInterrupt

    def stop(self) -> None:
        """From here on a Ctrl-C is recorded, not raised (the command is writing its last words)."""
        self.raising = False


@contextmanager
def deferred_in_imports(keep: bool = False):
    """Install the handler for the block (main thread only). keep: leave it installed, recording only, after the
    block, so that a Ctrl-C while the interpreter shuts down cannot print a traceback (the CLI's own process);
    otherwise the previous handler comes back (main() called from Python, e.g. by tests)."""
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.signal(signal.SIGINT, state)
    try:
        yield state
    finally:
        state.stop()
        if not keep:
            signal.signal(signal.SIGINT, previous)
