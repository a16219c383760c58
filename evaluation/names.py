"""How strategies, settings and metrics are named in tables, figures and W&B charts: the one declaration of each
display name (no torch, no numpy: `report` and `--help` load it at once). A name not declared here is shown as given,
so a plugin's strategy keeps its registered name."""
from __future__ import annotations

from typing import Optional

STRATEGY_NAMES = {
    "naive": "Fine-tuning", "joint": "Joint", "cumulative": "Cumulative", "si": "SI", "ewc": "EWC", "mas": "MAS",
    "lwf": "LwF", "replay": "Replay", "agem": "A-GEM", "er": "ER", "der": "DER", "derpp": "DER++",
    "er_ace": "ER-ACE", "icarl": "iCaRL", "gdumb": "GDumb",
}
SETTING_NAMES = {"class": "class-incremental", "task": "task-incremental", "domain": "domain-incremental"}
METRIC_NAMES = {"acc": "ACC", "task_il_acc": "ACC task-IL", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forgetting",
                "min_acc": "min-ACC", "wc_acc": "WC-ACC", "wf10": "WF10", "wp10": "WP10", "lca10": "LCA10",
                "a_auc": "A_AUC"}
# A table's columns when none are asked for: class-IL papers print class-IL and task-IL accuracy and forgetting (FWT
# is the same for every method there: unseen classes score 0); the other settings, the four of the SI line.
DEFAULT_COLUMNS = {"class": ("acc", "task_il_acc", "forgetting")}
OTHER_COLUMNS = ("acc", "bwt", "fwt", "forgetting")


def display(label: str) -> str:
    """`derpp` -> `DER++`; a label that starts with a strategy's name (a reproduction's arm, `der (buffer 500)`)
    has that word replaced; anything else is returned as given."""
    if label in STRATEGY_NAMES:
        return STRATEGY_NAMES[label]
    head, sep, rest = label.partition(" ")
    return STRATEGY_NAMES[head] + sep + rest if sep and head in STRATEGY_NAMES else label


def metric_name(metric: str, setting: Optional[str] = None) -> str:
    """A metric's column title; in a class-incremental study ACC says it is the class-IL score."""
    if metric == "acc" and setting == "class":
        return "ACC class-IL"
    return METRIC_NAMES.get(metric, metric)


def default_columns(setting: Optional[str]) -> tuple:
    return DEFAULT_COLUMNS.get(setting or "", OTHER_COLUMNS)
