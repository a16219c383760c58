"""docs/custom-data.md runs as written: each python block executed in a fresh interpreter (the lead's doc runner)."""
import re
from pathlib import Path

from test_docs import DOCS, run_document


def test_custom_data_examples_run(tmp_path):
    doc = DOCS / "custom-data.md"
    blocks = re.findall(r"```python\n", doc.read_text())
    assert len(blocks) == 3  # tensors, torch Dataset, Avalanche
    run_document(doc, tmp_path)
