"""scripts/mutants.py in an interpreter of its own: every listed mutant is killed by its method's conformance tests."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_mutant_is_killed():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutants.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    table = done.stdout
    assert done.returncode == 0, f"a mutant survived or a baseline failed:\n{table}\n{done.stderr[-3000:]}"
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows and all("| killed |" in r or "| pending |" in r for r in rows), table
    killed = re.search(r"^(\d+) killed", table, re.M)
    assert killed and int(killed.group(1)) >= 25, table
