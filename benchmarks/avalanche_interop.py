"""Run our strategies on an Avalanche benchmark: its train/test streams become a clframework Stream.

Avalanche is an optional extra (`pip install avalanche-lib`); only this module imports it, and only to read the
benchmark object it is given (duck typing: `train_stream`, `test_stream`, experiences with `dataset`,
`task_labels` and `classes_in_this_experience`).
"""
from __future__ import annotations

from typing import Optional

from .scenarios import LabeledData, _as_labels, _assemble, _check_setting, _select, materialize
from .stream import Stream


def _task_label(exp) -> int:
    labels = list(getattr(exp, "task_labels", [0]))
    if len(labels) != 1:
        raise ValueError(f"experience {exp.current_experience} mixes task labels {labels}; clframework tasks have one")
    return int(labels[0])


def _experience_data(exp, batch_size: int):
    x, y = materialize(exp.dataset, batch_size)
    return x.float(), _as_labels(y, f"labels of experience {exp.current_experience}")


def infer_setting(task_labels, class_sets) -> str:
    """Distinct task labels -> task-incremental; disjoint classes -> class-incremental; else domain-incremental."""
    if len(set(task_labels)) == len(task_labels) > 1:
        return "task"
    seen = set()
    for classes in class_sets:
        if seen & set(classes):
            return "domain"
        seen |= set(classes)
    return "class"


def from_avalanche(benchmark, setting: Optional[str] = None, name: str = "avalanche",
                   batch_size: int = 1024) -> Stream:
    """One clframework task per experience of `benchmark.train_stream`, tested on the matching test experience.

    The test stream may have one experience per training experience, or a single one (then each task is tested on
    the test examples of its classes). `setting` defaults to what the task labels and class sets say
    (`infer_setting`); a task label shared by several experiences is never mistaken for task identity.
    """
    train_exps, test_exps = list(benchmark.train_stream), list(benchmark.test_stream)
    if not train_exps:
        raise ValueError("the Avalanche benchmark's train_stream has no experiences")
    if len(test_exps) not in (1, len(train_exps)):
        raise ValueError(f"the test stream has {len(test_exps)} experiences for {len(train_exps)} training ones; "
                         f"need one per training experience, or one in all")
    tests = [_experience_data(e, batch_size) for e in test_exps]
    parts, task_labels = [], []
    for i, exp in enumerate(train_exps):
        x, y = _experience_data(exp, batch_size)
        classes = sorted(set(y.tolist()))
        if len(test_exps) == 1:
            tx, ty = tests[0]
            test = _select(LabeledData("", tx, ty, tx, ty), classes)
            tx, ty = test.test_x, test.test_y
        else:
            tx, ty = tests[i]
        extra = sorted(set(ty.tolist()) - set(classes))
        if extra:
            raise ValueError(f"test experience {i} has classes {extra} that training experience {i} lacks")
        task_labels.append(_task_label(exp))
        parts.append((f"exp{i}", LabeledData(name, x, y, tx, ty), classes))
    setting = setting or infer_setting(task_labels, [c for _, _, c in parts])
    _check_setting(setting)
    if setting == "class" and infer_setting([0] * len(parts), [c for _, _, c in parts]) != "class":
        raise ValueError("the class-incremental setting needs each experience to bring new classes, but some classes "
                         "occur in several experiences; use setting='domain' (or 'task' with task labels)")
    stream = _assemble(name, parts, setting)
    stream.info["avalanche_task_labels"] = task_labels
    stream.info["data_source"] = {"avalanche_benchmark": type(benchmark).__name__, "name": name}
    return stream
