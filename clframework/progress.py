"""The console view of a study: one overall bar (runs done / total, elapsed, ETA) and one line per finished run.

The bar is drawn on a terminal (or notebook) only; into a log file or pipe the view is plain lines: the start, one
line per finished run with its count (`[k/N]`), and the end.
It imports only tqdm, so the command line can show it before torch has loaded (the first output within a second).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm.auto import tqdm


class StudyProgress:
    """Created as soon as a command starts (the bar shows `preparing`); `add(n)` once the runs are known,
    `finished(...)` after each run. quiet: nothing at all."""

    def __init__(self, desc: str = "study", quiet: bool = False):
        self.desc, self.quiet, self.done, self.total, self.start = desc, quiet, 0, 0, time.monotonic()
        # disable=None: tqdm draws only where stderr is a terminal (and always in a notebook)
        self.bar = None if quiet else tqdm(desc=f"{desc}: preparing", unit="run", file=sys.stderr, disable=None,
                                           bar_format="{desc} {elapsed}", dynamic_ncols=True)
        self.plain = self.bar is not None and self.bar.disable
        if self.plain:
            print(f"{desc}: preparing", file=sys.stderr, flush=True)

    def add(self, runs: int) -> None:
        """Runs join the study. The first call starts the count (and restarts the timer, so that the ETA reflects
        training only); a study with several phases adds each phase's runs before any of them trains."""
        if self.bar is None:
            return
        first, self.total = self.total == 0, self.total + runs
        if first:
            self.start = time.monotonic()
        if self.plain:
            return
        if first:
            self.bar.bar_format = None
            self.bar.set_description(self.desc, refresh=False)
            self.bar.reset(total=runs)
        else:
            self.bar.total += runs
            self.bar.refresh()

    def finished(self, label: str, acc: Optional[float], seconds: float, status: str = "diverged") -> None:
        """A run ended: its line (label, ACC, seconds; acc None: it did not finish, `status` says how) and one more
        on the bar."""
        if self.bar is None:
            return
        self.done += 1
        line = f"{label}: ACC {acc:.4f} ({seconds:.1f} s)" if acc is not None else f"{label}: {status}"
        self.bar.write(f"{line} [{self.done}/{self.total}]" if self.plain else line, file=sys.stderr)
        self.bar.update(1)

    def note(self, line: str, err: bool = False) -> None:
        """A line of the command's output (stdout; err: stderr) above the bar without breaking it; shown even when
        quiet."""
        file = sys.stderr if err else sys.stdout
        if self.bar is None:
            print(line, file=file)
        else:
            self.bar.write(line, file=file)

    def close(self, failed: bool = False) -> None:
        """failed: clear the bar, so that an error message stands alone."""
        if self.bar is not None:
            if self.plain and not failed and self.total:
                print(f"{self.desc}: {self.done}/{self.total} runs in {time.monotonic() - self.start:.1f} s",
                      file=sys.stderr, flush=True)
            self.bar.leave = self.bar.leave and not failed
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        self.close(failed=kind is not None)
        return False
