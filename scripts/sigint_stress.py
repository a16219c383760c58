"""Stress loop for issue 21: send SIGINT to `clframework compare` at many spread-out moments and check each outcome.

Two kinds of moments alternate: a delay spread evenly over the length of an uninterrupted run, and the instant a
checkpoint is being written (a `.checkpoint.pt.tmp` file appears in a run's folder; the k-th one, k varying).
Each interrupted study must exit 130 with exactly one line on stderr, leave no lock and no temporary file, keep every
checkpoint loadable, and, resumed with `--resume`, give accuracy matrices bit-identical to the uninterrupted study.
A study whose signal arrives after it has written its last file may exit 0; that is counted apart ("after end").

    python scripts/sigint_stress.py --count 60          # prints one line per interrupt, then the counts
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ARGS = ["compare", "--strategies", "naive,si", "--seeds", "1", "--checkpoint-every", "3", "--epochs", "1",
        "--hidden", "16", "--quiet", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(out: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clframework", *ARGS, "--out", str(out), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def matrices(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["accuracy_matrix"] for p in sorted(out.glob("*/results.json"))}


def checkpoint_writes(out: Path) -> int:
    return sum(1 for p in out.glob("*/.checkpoint.pt.tmp"))


def interrupt(out: Path, mode: str, value: float) -> tuple:
    """Start the study, send SIGINT at the moment described by (mode, value); return (rc, stderr, seconds)."""
    proc = cli(out)
    start = time.perf_counter()
    if mode == "delay":
        time.sleep(value)
    else:  # the value-th checkpoint write seen in progress (polled as fast as Python can)
        seen, was = 0, False
        while proc.poll() is None and seen < value:
            now = checkpoint_writes(out) > 0
            time.sleep(0.0005)
            seen += now and not was
            was = now
    at = time.perf_counter() - start
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, at


def check(out: Path, rc: int, err: str, reference: dict, resume: bool = True) -> str:
    """The outcome's class: 'ok' (130, one line, state intact, resume exact), 'after end' (0, study complete), or
    what went wrong."""
    from clframework.checkpoint import LOCK, load_checkpoint

    expected = (f"clframework: interrupted; the checkpoints in {out} are kept; continue with the same command plus "
                f"--resume")
    if rc == 0:
        return "after end" if (out / "summary.json").exists() and matrices(out) == reference else "LOST (exit 0)"
    if rc != 130:
        return f"BAD exit {rc}: {err.strip().splitlines()[-1:]}"
    if err.strip().splitlines() != [expected]:
        return f"BAD stderr: {err.strip()[-300:]!r}"
    if (out / LOCK).exists() or list(out.glob("**/.*.tmp")):
        return "BAD leftovers (lock or temporary file)"
    for ckpt in out.glob("*/checkpoint.pt"):
        try:
            load_checkpoint(ckpt)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return f"BAD checkpoint {ckpt}: {exc}"
    if not resume:
        return "ok (not resumed)"
    proc = cli(out, "--resume")
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        return f"BAD resume exit {proc.returncode}: {err.strip()[-300:]}"
    return "ok" if matrices(out) == reference else "BAD resume differs from the uninterrupted study"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--resume-every", type=int, default=1, help="resume and compare every K-th study only")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sigint-stress-"))
    ref = root / "reference"
    start = time.perf_counter()
    proc = cli(ref)
    _, err = proc.communicate()
    length = time.perf_counter() - start
    assert proc.returncode == 0, err
    reference = matrices(ref)
    # the spread: delays over the whole run; checkpoint writes 1..(this study's count: 2 runs x 5 tasks + mid-task)
    moments = []
    for i in range(args.count):
        if i % 2 == 0:
            moments.append(("delay", round(length * (i // 2 + 0.5) / ((args.count + 1) // 2), 3)))
        else:
            moments.append(("checkpoint write", 1 + (i // 2) * 7 % 40))
    counts = Counter()
    for i, (mode, value) in enumerate(moments):
        out = root / f"s{i}"
        rc, err, at = interrupt(out, mode, value)
        outcome = check(out, rc, err, reference, i % args.resume_every == 0)
        counts[outcome] += 1
        print(f"{i:3d} {mode} {value}: signal at {at:.2f} s, exit {rc}: {outcome}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"uninterrupted study: {length:.1f} s; outcomes of {args.count} interrupts: {dict(counts)}")
    return 0 if all(k.startswith("ok") or k == "after end" for k in counts) else 1


if __name__ == "__main__":
    sys.exit(main())
