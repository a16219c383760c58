"""The files that say what state a run's or study's folder is in, and who holds its lock. Torch-free, so that
`clframework runs` reads folders at once; checkpoint.py writes them (docs/reliability.md)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import List, Optional, Tuple

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
RESULTS = "results.json"          # written last: its presence marks a run finished (or diverged)
FAILED = "failed.json"            # an exception in a strategy or model stopped the run; --resume continues it
STUDY = "study.json"              # a study's plan, written before its first run: kind and the runs it will hold
MODEL = "model.pt"
STRATEGY_STATE = "strategy.pt"
SCORER = "scorer.pt"              # the module a strategy scores with, when not its stream network (GDumb, iCaRL)
MARKER = ".clframework"           # says "clframework made this folder": --overwrite may empty it
LOCK = ".clframework.lock"        # the pid and host of the process writing into the folder, then its workers


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(folder: Path) -> Optional[Tuple[int, str]]:
    """(pid, host) written in the folder's lock file, or None without a readable one."""
    try:
        holder = (Path(folder) / LOCK).read_text().split()
    except OSError:
        return None
    pid = int(holder[0]) if holder and holder[0].isdigit() else -1
    return pid, holder[1] if len(holder) > 1 else ""


def lock_workers(folder: Path) -> List[int]:
    """The worker processes (`--jobs`) the lock holder added to its lock file, one "worker PID" line each."""
    try:
        lines = (Path(folder) / LOCK).read_text().splitlines()[1:]
    except OSError:
        return []
    return [int(w[1]) for w in (line.split() for line in lines) if len(w) == 2 and w[0] == "worker" and w[1].isdigit()]


def in_use(folder: Path) -> bool:
    """A live process holds the folder's lock, or one of the workers it listed there still runs (on another host:
    assumed live, as nothing here can check)."""
    holder = lock_holder(folder)
    if holder is None or holder[0] <= 0:
        return False
    if holder[1] != socket.gethostname():
        return True
    return pid_alive(holder[0]) or any(pid_alive(w) for w in lock_workers(folder))
