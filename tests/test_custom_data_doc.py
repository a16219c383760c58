"""docs/custom-data.md runs as written: each python block executed in a process of its own (the lead's doc runner)."""
import json
import re
from pathlib import Path

import pytest

from clframework.benchmarks.datasets import available
from test_docs import DOCS, run_document

pytestmark = pytest.mark.slow  # every doc example in a process of its own


def test_custom_data_examples_run(tmp_path, docs_python):
    doc = DOCS / "custom-data.md"
    blocks = re.findall(r"```python(?: requires=\S+)?\n", doc.read_text())
    assert len(blocks) == 5  # tensors, torch Dataset, Avalanche, dataset files (requires=fashion-mnist), disk vs memory
    assert len(re.findall(r"```text output\n", doc.read_text())) == 5  # each states what it prints, checked
    skipped = run_document(doc, tmp_path, docs_python)
    assert skipped == (0 if available("fashion-mnist") else 1)
    # its register_benchmark example: run by name from the CLI, with its own protocol and data source recorded
    res = json.loads((tmp_path / "runs/my-digits/results.json").read_text())
    assert res["benchmark"] == "my-digits" and res["tasks"] == ["0-1", "2-3"] and res["config"]["hidden"] == [64]
    assert res["provenance"]["data_source"] == {"in_memory": "from_tensors", "name": "my-digits"}
    # its split-imagefolder command: tasks named by the tree's class folders, as the guide states
    tree = json.loads((tmp_path / "runs/tree/results.json").read_text())
    assert tree["tasks"] == ["class0-class1", "class2-class3"]
    assert tree["config"]["class_names"] == [["class0", "class1"], ["class2", "class3"]]
    assert tree["config"]["classes"] == [[0, 1], [2, 3]]
    assert (tmp_path / "runs/tree/matrix.csv").read_text().splitlines()[0] == "after_task,class0-class1,class2-class3"
