"""The paper experiments `clframework reproduce` knows, as data: each one's benchmark per dataset, arms (label,
strategy, hyperparameters, training overrides), seeds, error bars, controls, figures and what `--quick` scales down.

No torch here: the command checks a request (experiment, dataset, memory size, arms) against this table before
training code loads, so a mistyped argument is answered at once (reproduce.py holds the runs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from clframework.benchmarks import der


@dataclass(frozen=True)
class Arm:
    key: str  # what --arms calls it
    label: str
    strategy: str
    hparams: Dict[str, object] = field(default_factory=dict)
    train: Dict[str, object] = field(default_factory=dict)  # RunConfig overrides, e.g. dropout
    published: str = ""  # the paper's number for this arm, with its source (shown beside ours)


@dataclass(frozen=True)
class Experiment:
    name: str
    section: str
    benchmarks: Dict[str, str]  # dataset -> registered benchmark
    arms: Tuple[Arm, ...]
    seeds: int
    spread: str  # "sem" or "sd" (the paper's error bars)
    figures: Tuple[int, ...]
    controls: Tuple[str, ...] = ()
    quick: Dict[str, object] = field(default_factory=dict)  # training overrides, benchmark options, seeds
    quick_for: Dict[str, Dict[str, object]] = field(default_factory=dict)  # dataset -> more of the same for it
    # arms that depend on the dataset and memory size (dataset, buffer) -> arms, replacing `arms` (der-table)
    arms_for: Optional[Callable[[str, Optional[int]], Tuple[Arm, ...]]] = None
    buffers: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # dataset -> the memory sizes it reports
    published_controls: Dict[str, str] = field(default_factory=dict)  # control -> the paper's result, with where
    published_source: str = ""  # the paper, and how to read the results its arms quote (when they name no source)
    options: Dict[str, object] = field(default_factory=dict)  # benchmark options of the protocol (setting=class)
    ledger: bool = False  # also write ledger.md, the table's rows for docs/ledger.md (der-table)
    paper_dataset: str = ""  # the dataset the paper ran on, where it is not the first of `benchmarks`


DER_ORDER = ("naive", "si", "lwf", "agem", "er", "er_ace", "icarl", "der", "derpp")  # the tables' row order


def _published(dataset: str, strategy: str, buffer: Optional[int]) -> str:
    value = der.PUBLISHED[dataset].get((strategy, buffer)) or der.PUBLISHED[dataset].get((strategy, None))
    if value is None:
        return "no published result (the DER line has no Fashion-MNIST table)" if dataset == "seq-fashion-mnist" \
            else ""
    mean, sd = value
    return f"{mean:.2f}" + (f" +- {sd:.2f}" if sd is not None else "") + f" ({der.SOURCES[dataset]})"


def der_table_arms(dataset: str, buffer: Optional[int]) -> Tuple[Arm, ...]:
    """One arm per method of the DER-line table with a published setting at `buffer` (best_args.py), in the
    table's order; methods not registered here are left out (plan() lists them)."""
    arms = []
    for strategy in DER_ORDER:
        row = der.best_row(dataset, strategy, buffer)
        if row is None:
            continue
        train, hparams = row
        label = f"{strategy} (buffer {buffer})" if "memory_size" in hparams else strategy
        arms.append(Arm(strategy, label, strategy, hparams, train, _published(dataset, strategy, buffer)))
    return tuple(arms)


# De Lange, van de Ven & Tuytelaars, ICLR 2023 ("Continual evaluation for lifelong learning: identifying the stability
# gap"), split-MNIST class-incremental, as their code configures it (mattdl/ContinualEvaluation, commit bae2a58:
# reproduce/configs/splitmnist_ER.yaml, main.py's defaults, src/model.py MLPfeat, src/methods/replay.py): an MLP of
# two hidden layers of 400 with one linear head over the 10 classes, SGD lr 0.01 momentum 0.9, minibatch 256, 10
# epochs per task, evaluation after every iteration on 1000 test examples per task, 5 seeds; ER: a class-balanced
# memory of 2000 filled at each task's end, each minibatch joined by as many memory examples.
STABILITY_GAP_TRAIN = {"hidden": (400, 400), "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 256,
                       "epochs": 10, "reset_optimizer": True, "eval_every": 1}
STABILITY_GAP_SOURCE = ("De Lange, van de Ven & Tuytelaars, ICLR 2023; protocol from mattdl/ContinualEvaluation "
                        "(commit bae2a58, reproduce/configs/splitmnist_ER.yaml and main.py); their MNIST min-ACC and "
                        "WC-ACC are not quoted here: docs/results.md says why")


def stability_gap_arms(dataset: str, buffer: Optional[int]) -> Tuple[Arm, ...]:
    """ER (class-balanced memory of `buffer`, 2000 in the paper) and the paper's other methods on its protocol; the
    per-task evaluation subset is the paper's 1000 where the split holds that many (mnist-5k has 200 per task)."""
    train = {**STABILITY_GAP_TRAIN, **({"eval_subset": 1000} if dataset != "mnist-5k" else {})}
    return (Arm("er", f"ER (memory {buffer})", "replay", {"memory_size": buffer, "selection": "class-balanced"}, train),
            Arm("naive", "fine-tuning", "naive", {}, train),
            Arm("agem", f"A-GEM (memory {buffer})", "agem", {"memory_size": buffer}, train),
            Arm("lwf", "LwF", "lwf", {}, train),
            Arm("ewc", "EWC", "ewc", {}, train))


PAPER_SOURCE = ("Zenke, Poole & Ganguli, ICML 2017; its results are figures, not tables: a number marked ≈ is read "
                "from the figure named, the rest is what its text says")
NOT_IN_PAPER = "not in the paper"

EXPERIMENTS: Dict[str, Experiment] = {
    "split-mnist": Experiment(
        "split-mnist", "Sec. 5.1, Fig. 3: 5 digit-pair tasks, multi-head, MLP 256-256, Adam reset per task",
        {"mnist": "split-mnist", "fashion-mnist": "split-fashion-mnist", "mnist-5k": "split-mnist-5k"},
        (Arm("fine-tuning", "fine-tuning (c=0)", "si", {"c": 0.0, "xi": 1e-3},
             published="first tasks back to chance, 0.5 (Sec. 5.1, Fig. 3)"),
         Arm("si", "SI (c=1)", "si", {"c": 1.0, "xi": 1e-3}, published="average stays close to 1 (Sec. 5.1, Fig. 3)"),
         Arm("ewc", "EWC (exact Fisher)", "ewc", published=f"{NOT_IN_PAPER} (Sec. 5.1 has no EWC arm)")),
        seeds=10, spread="sem", figures=(3,), quick={"epochs": 2, "seeds": 3}, published_source=PAPER_SOURCE),
    "permuted-mnist": Experiment(
        "permuted-mnist", "Sec. 5.2, Fig. 4-5: 10 permutations, one head, MLP 2000-2000, Adam kept across tasks",
        {"mnist": "permuted-mnist", "fashion-mnist": "permuted-fashion-mnist", "mnist-5k": "permuted-mnist-5k"},
        (Arm("si", "SI (c=0.1)", "si", {"c": 0.1, "xi": 0.1}, published="≈ 0.97 after 10 tasks (Fig. 4)"),
         Arm("ewc", "EWC (exact Fisher)", "ewc",
             published="≈ 0.97 after 10 tasks (Fig. 4, replotted from Kirkpatrick et al. 2017)"),
         Arm("sgd", "SGD (c=0)", "si", {"c": 0.0, "xi": 0.1}, published="far worse than SI (Sec. 5.2, Fig. 4)"),
         Arm("sgd-dropout", "SGD w/ dropout (c=0)", "si", {"c": 0.0, "xi": 0.1}, {"dropout": 0.5},
             published="far worse than SI (Sec. 5.2, Fig. 4)")),
        seeds=3, spread="sem", figures=(4, 5), controls=("joint",),
        published_controls={"joint": "slightly above SI (Sec. 5.2, Fig. 4, black arrow)"},
        quick={"epochs": 2, "hidden": (256, 256), "n_tasks": 5, "seeds": 2}, published_source=PAPER_SOURCE),
    "split-cifar": Experiment(
        "split-cifar", "Sec. 5.3, Fig. 6: CIFAR-10 then 5 CIFAR-100 blocks, multi-head CNN, Adam reset per task",
        {"cifar": "split-cifar10-100"},
        (Arm("fine-tuning", "fine-tuning (c=0)", "si", {"c": 0.0, "xi": 1e-3},
             published="older tasks lower, declining with age; chance 0.1 (Sec. 5.3, Fig. 6)"),
         Arm("si", "SI (c=0.1)", "si", {"c": 0.1, "xi": 1e-3},
             published="similar on every task, above c=0 except the last task (Sec. 5.3, Fig. 6)")),
        seeds=5, spread="sd", figures=(6,), controls=("scratch",),
        published_controls={"scratch": "SI as good or better on every task but Task 1, CIFAR-10 (Sec. 5.3, Fig. 6)"},
        quick={"epochs": 2, "cifar100_tasks": 2, "seeds": 2}, published_source=PAPER_SOURCE),
    "der-table": Experiment(
        "der-table", "Buzzega et al. 2020 (DER) Table 2 / Boschini et al. 2022 (X-DER) Table 2: class-incremental "
                     "rehearsal methods, each method's best_args.py settings; CIFAR and TinyImageNet: ResNet-18, "
                     "crop+flip, SGD; seq-MNIST and seq-Fashion-MNIST: MLP 100-100, 1 epoch, batch 10, SGD (a CPU "
                     "runs them)",
        {"seq-cifar10": "seq-cifar10", "seq-cifar100": "seq-cifar100", "seq-tinyimagenet": "seq-tinyimagenet",
         "seq-mnist": "seq-mnist", "seq-fashion-mnist": "seq-fashion-mnist"},
        (), seeds=10, spread="sem", figures=(), controls=("joint",),
        quick={"epochs": 1, "n_tasks": 2, "seeds": 2}, arms_for=der_table_arms,
        quick_for={"seq-mnist": {"train_per_class": 300}, "seq-fashion-mnist": {"train_per_class": 300}},
        buffers={"seq-cifar10": der.BUFFERS, "seq-cifar100": der.CIFAR100_BUFFERS,
                 "seq-tinyimagenet": der.BUFFERS, "seq-mnist": der.BUFFERS, "seq-fashion-mnist": der.BUFFERS},
        ledger=True),
    "stability-gap": Experiment(
        "stability-gap", "De Lange et al. 2023, Sec. 5 / Fig. 2: class-incremental split-MNIST, per-iteration "
                         "evaluation, min-ACC and WC-ACC",
        {"mnist-5k": "split-mnist-5k", "mnist": "split-mnist", "fashion-mnist": "split-fashion-mnist"},
        (), seeds=5, spread="sd", figures=(2,), quick={"epochs": 2, "seeds": 2}, arms_for=stability_gap_arms,
        buffers={"mnist-5k": (2000,), "mnist": (2000,), "fashion-mnist": (2000,)}, options={"setting": "class"},
        published_source=STABILITY_GAP_SOURCE, paper_dataset="mnist"),
}


def _override(arm: Arm, spec: str) -> Arm:
    """`si:c=0.02[:xi=0.1]`: the arm with those hyperparameters; its label says which (`SI (c=0.02)`)."""
    key, *sets = spec.split(":")
    hparams, label = dict(arm.hparams), arm.label
    for item in sets:
        param, sep, value = item.partition("=")
        if not sep or not param or not value:
            raise ValueError(f"--arms {spec!r}: expected KEY:PARAM=VALUE, for example si:c=0.02")
        hparams[param] = value
        pattern = rf"(?<![\w.]){re.escape(param)}=[^,)\s]+"
        named = re.search(pattern, label)
        label = re.sub(pattern, f"{param}={value}", label) if named else f"{label} ({param}={value})"
    return replace(arm, key=spec, label=label, hparams=hparams,
                   published=f"{NOT_IN_PAPER} (its arm: {arm.label})" if arm.published else "")


def select_arms(exp: Experiment, arms: Optional[Sequence[str]] = None) -> Tuple[List[Arm], List[str]]:
    """The arms and controls to run, in the order given (default: every arm, then every control)."""
    if arms is None:
        return list(exp.arms), list(exp.controls)
    by_key = {a.key: a for a in exp.arms}
    chosen, controls = [], []
    for spec in arms:
        key = spec.split(":")[0]
        if key in exp.controls and key == spec:
            controls.append(key)
        elif key in by_key:
            chosen.append(_override(by_key[key], spec) if ":" in spec else by_key[key])
        else:
            known = ", ".join(list(by_key) + list(exp.controls))
            raise ValueError(f"experiment {exp.name} has no arm or control {key!r}; choose from {known} "
                             f"(an arm may override hyperparameters: si:c=0.02)")
    labels = [a.label for a in chosen]
    if len(set(labels)) < len(labels) or len(set(controls)) < len(controls):
        raise ValueError(f"--arms names an arm twice: {', '.join(arms)}")
    if not chosen:
        raise ValueError(f"--arms must name at least one arm of {exp.name}: {', '.join(by_key)}")
    return chosen, controls


def check_request(name: str, dataset: Optional[str], buffer: Optional[int]) -> Tuple[Experiment, str, Optional[int]]:
    """The experiment, its dataset (default: the first) and memory size (der-table's default: the middle one), or
    a ValueError naming what is accepted."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    dataset = dataset or next(iter(exp.benchmarks))
    if dataset not in exp.benchmarks:
        raise ValueError(f"experiment {name} runs on {', '.join(exp.benchmarks)}, not {dataset!r}")
    if exp.arms_for is not None:
        sizes = exp.buffers[dataset]
        buffer = sizes[min(1, len(sizes) - 1)] if buffer is None else buffer
        if buffer not in sizes:
            raise ValueError(f"{name} on {dataset} reports memory sizes {', '.join(map(str, sizes))}; --buffer "
                             f"{buffer} has no published setting")
    elif buffer is not None:
        raise ValueError(f"--buffer applies to experiments with memory sizes (der-table), not {name}")
    return exp, dataset, buffer


def describe(name: str) -> str:
    """`clframework reproduce NAME --help`'s first part: what the experiment runs, per dataset its benchmark, seeds,
    memory sizes and arms (with each arm's settings and the paper's number), its controls and what --quick scales."""
    exp = EXPERIMENTS[name]
    lines = [f"experiment {name}: {exp.section}", f"seeds: {exp.seeds} (error bars: {exp.spread.upper()})"]
    for dataset, benchmark in exp.benchmarks.items():
        quick = {**exp.quick, **exp.quick_for.get(dataset, {})}
        lines.append(f"--dataset {dataset} (benchmark {benchmark}; --quick: "
                     + ", ".join(f"{k}={v}" for k, v in quick.items()) + ")")
        sizes = exp.buffers.get(dataset) or (None,)
        for size in sizes:
            arms = exp.arms_for(dataset, size) if exp.arms_for is not None else exp.arms
            if size is not None:
                lines.append(f"  --buffer {size}" + (" (default)" if size == sizes[min(1, len(sizes) - 1)] else ""))
            for arm in arms:
                settings = ", ".join(f"{k}={v}" for k, v in {**arm.train, **arm.hparams}.items())
                lines.append(f"    {arm.key:<12} {arm.label}" + (f" [{settings}]" if settings else "")
                             + (f": {arm.published}" if arm.published else ""))
    if exp.controls:
        lines.append("controls: " + ", ".join(exp.controls) + " (--arms names them too)")
    return "\n".join(lines)
