import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist_stream():
    """Two tasks of the embedded split MNIST (real data), shared by the tests that train."""
    from clframework.benchmarks import make_benchmark

    return make_benchmark("split-mnist-5k").subset([0, 1])


@pytest.fixture
def scratch_registry(monkeypatch):
    """The strategy registry with the built-ins loaded; whatever a test registers is undone after it."""
    from clframework.plugin import STRATEGIES

    STRATEGIES.names()
    monkeypatch.setattr(STRATEGIES, "_entries", dict(STRATEGIES._entries))
    return STRATEGIES
