"""Scoring: the accuracy matrix, metrics derived from it, and their result files.

The names below are resolved on first use (PEP 562): `clframework report`, which reads JSON and aggregates it,
imports this package without paying for torch (the evaluator needs it; the metrics and tables do not)."""
_PUBLIC = {"evaluate_stream": "evaluator", "task_accuracy": "evaluator", "acc": "metrics", "average_seen": "metrics",
           "bwt": "metrics", "forgetting": "metrics", "fwt": "metrics", "summary": "metrics"}


from clframework.lazy import lazy_exports  # noqa: E402 (after the table it serves)

__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC, prefix=f"{__name__}.")


__all__ = sorted(_PUBLIC)
