"""Scoring: the accuracy matrix, metrics derived from it, and their result files.

The names below are resolved on first use (PEP 562): `clframework report`, which reads JSON and aggregates it,
imports this package without paying for torch (the evaluator needs it; the metrics and tables do not)."""
_PUBLIC = {"evaluate_stream": "evaluator", "task_accuracy": "evaluator", "acc": "metrics", "average_seen": "metrics",
           "bwt": "metrics", "forgetting": "metrics", "fwt": "metrics", "summary": "metrics"}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
