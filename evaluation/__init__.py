"""Scoring: the accuracy matrix, metrics derived from it, and their result files."""
from .evaluator import evaluate_stream, task_accuracy
from .metrics import acc, average_seen, bwt, forgetting, fwt, summary

__all__ = ["evaluate_stream", "task_accuracy", "acc", "average_seen", "bwt", "forgetting", "fwt", "summary"]
