"""The callback interface between the trainer and what observes it (loggers such as W&B's): below both, so that a
logger never imports the trainer."""
from __future__ import annotations

from typing import Iterable, List


class TrainerCallback:
    """Observer of training progress (loggers such as W&B implement these)."""

    @staticmethod
    def prepare_study(callbacks: List["TrainerCallback"]) -> None:
        """Once per study (and per lone run), in its own process, before any run starts or is sent to a worker
        process: every callback of the study whose class shares this method, so that what they share is decided
        once here rather than in each run or worker (W&B: whether its server can be reached)."""

    def on_resume(self, progress: dict) -> None:
        """Before `on_run_start` of a run continued from its checkpoint (--resume): `progress` holds `run_id` (the
        W&B run id the checkpoint saved, or None), `epochs_trained` (epochs finished so far, every task) and
        `tasks_evaluated` (accuracy rows so far: the untrained model's, then one per finished task) and `eval_step`
        (the last --eval-every point's optimizer step, -1 for none)."""

    def on_run_start(self) -> None:
        """Before a run's clock starts (a logger's start-up is not counted in the run's seconds)."""

    def on_epoch_end(self, task_index: int, epoch: int, loss: float, accuracy: float) -> None:
        """After each epoch: mean training loss and accuracy on the current task's training batches."""

    def on_train_loss(self, step: int, loss: float) -> None:
        """Every k optimizer steps (about 25 points a task, trainer.LOSS_POINTS): the mean training loss of the
        minibatches since the previous point; `step` counts optimizer steps across tasks."""

    def on_task_evaluated(self, task_index: int, accuracies: List[float]) -> None:
        """After each task (task_index = -1 for the untrained model): test accuracy on every task."""

    def on_continual_eval(self, points: List[dict]) -> None:
        """With --eval-every, the evaluation points made since the last call (at a task's end and before each
        checkpoint): {step, task, accuracy, task_il_accuracy} as results.json's `continual_eval` holds them."""

    def on_run_end(self, result: dict, out_dir) -> None:
        """After a run's results (and, with an output folder, its files) are complete: loggers finish here."""


def prepare_study(callbacks: Iterable) -> None:
    """Call each callback class's `prepare_study` once, with that class's callbacks among `callbacks`."""
    groups: dict = {}
    for cb in callbacks:
        hook = getattr(type(cb), "prepare_study", None)  # a duck-typed callback may lack it
        if hook is not None:
            groups.setdefault(hook, []).append(cb)
    for hook, group in groups.items():
        hook(group)
