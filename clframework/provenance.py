"""Where a result came from: the command (or API call), versions, the user's git state, the machine and the times.

Bottom layer: no torch at import time (it is imported only inside `collect`, which runs after training started).
The CLI records its command line with `set_command`; a result produced by a direct Python call records that call's
configuration instead.
"""
from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence

_command: Optional[List[str]] = None


def set_command(argv: Optional[Sequence[str]]) -> None:
    """Called by the CLI with its arguments, so results name the exact command; None forgets it."""
    global _command
    _command = None if argv is None else ["clframework", *argv]


def command() -> Optional[str]:
    """The command line that is running, shell-quoted, or None for a direct Python call."""
    return shlex.join(_command) if _command is not None else None


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(folder: Optional[Path] = None) -> Optional[dict]:
    """Commit and dirty flag of the git repository holding `folder` (default: the current directory), or None.

    `dirty` means tracked files differ from the commit (untracked files are not counted, as in `git describe
    --dirty`)."""
    cwd = str(folder or Path.cwd())

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        root = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or a repository without commits
        return None
    return {"repository": root, "commit": commit, "dirty": dirty}


def versions() -> dict:
    import torch

    import clframework

    return {"clframework": clframework.__version__, "torch": torch.__version__, "python": platform.python_version()}


def load_average() -> Optional[List[float]]:
    """The machine's 1, 5 and 15 minute load averages (None where the OS has none): a time measured on a loaded
    machine is slower, and a reader must be able to tell."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def collect(api_call: Optional[dict], overrides: dict, device: str, started: str, data_source) -> dict:
    """Everything but the end time (added by `finish`). `api_call` describes a Python call; it is recorded only when
    no command line was set."""
    import torch

    cmd = command()
    return {"command": cmd, "api_call": None if cmd is not None else api_call, "overrides": overrides,
            "versions": versions(), "git": git_state(), "hostname": socket.gethostname(), "device": device,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cwd": str(Path.cwd()),
            "executable": sys.executable, "started": started, "finished": None, "data_source": data_source,
            "load_average": {"started": load_average(), "finished": None}}


def finish(record: dict) -> dict:
    record["finished"] = now()
    if isinstance(record.get("load_average"), dict):
        record["load_average"]["finished"] = load_average()
    return record
