"""clframework: continual-learning runs and head-to-head comparisons (SI, exact-Fisher EWC, fine-tuning).

Start with `clframework compare` (naive, EWC and SI on split MNIST, 3 seeds), or `clframework COMMAND --help`."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from .. import __version__, provenance
from ..recipe import RECIPE_FIELDS
from ..registry import RegistryError, import_plugin
from ..seeds import HELP as SEEDS_HELP, parse_seeds
from .interrupt import deferred_in_imports

DEFAULT_STRATEGIES = "naive,ewc,si"
DEFAULT_BENCHMARK = "split-mnist-5k"
PLUGIN_HELP = "import MODULE (or a .py file) first so that its registered strategies and benchmarks count"


def _parse_sets(items: List[str], flag: str = "--set", example: str = "c=0.1") -> Dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"{flag} expects KEY=VALUE (for example {flag} {example}), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _parse_strategy_sets(items: List[str], strategies: List[str], registry=None) -> Dict[str, dict]:
    """For compare: `--set si.c=0.1` targets one strategy; `--set c=0.1` every strategy that has `c` (in `registry`,
    default the strategy registry)."""
    if registry is None:
        from ..plugin import STRATEGIES as registry

    out: Dict[str, dict] = {s: {} for s in strategies}
    for key, value in _parse_sets(items).items():
        name, dot, param = key.rpartition(".")
        targets = [name] if dot else [s for s in strategies if param in registry.get(s).params]
        if not targets:
            owned = ", ".join(f"{s} has {', '.join(registry.get(s).params) or 'none'}" for s in strategies)
            raise RegistryError(f"--set {key}: none of {strategies} has a hyperparameter '{param}'; {owned}")
        for t in targets:
            if t not in out:
                raise RegistryError(f"--set {key}: '{t}' is not among the compared strategies {strategies}")
            out[t][param] = value
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help=f"registered benchmark (default {DEFAULT_BENCHMARK})")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="strategy hyperparameter(s): --set c=0.1 xi=0.001 or repeated --set")
    p.add_argument("--epochs", type=int, help="epochs per task (default: the benchmark's protocol)")
    p.add_argument("--batch-size", type=int, help="minibatch size (default: the benchmark's protocol)")
    p.add_argument("--lr", type=float, help="learning rate (default: the benchmark's protocol)")
    _model_args(p)
    _recipe_args(p)
    p.add_argument("--hidden", help="MLP hidden sizes, comma-separated, e.g. 256,256")
    p.add_argument("--dropout", type=float, help="dropout on hidden layers")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="train and score the first N tasks only (default: all), with the full benchmark's model: a "
                        "class-incremental head keeps every class's output")
    p.add_argument("--small-head", action="store_true",
                   help="with --tasks N on a class-incremental benchmark: a head of those N tasks' classes only (a "
                        "smaller model than the full run's; default: the full benchmark's head)")
    p.add_argument("--setting", choices=["task", "domain", "class"],
                   help="task-, domain- or class-incremental (default: the benchmark's, as in the paper)")
    p.add_argument("--data-root", help="folder holding the dataset files (else $CLFRAMEWORK_DATA or the defaults)")
    p.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="benchmark option(s), e.g. --option n_tasks=3 (the benchmark's options: clframework list)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="bf16: the forward pass and loss under bfloat16 autocast, an opt-in fast step for GPUs "
                        "(default fp32; docs/performance.md)")
    p.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="compile the forward pass with torch.compile (MODE: default; reduce-overhead replays CUDA "
                        "graphs); opt-in, the plain eager step is the default")
    _threads_arg(p)
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="DataLoader worker processes reading benchmarks stored on disk (default 0: in the training "
                        "process; in-memory benchmarks never use them)")
    p.add_argument("--check-data", action="store_true",
                   help="decode every image of a tree read from disk before training (default: every header and a "
                        "sample of 16 images)")
    p.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="continual evaluation: every STEPS optimizer steps (and at each task boundary), the accuracy "
                        "on every task seen so far; curves, min-ACC, WC-ACC, WF, WP, LCA and A_AUC in the results "
                        "(docs/continual-evaluation.md)")
    p.add_argument("--eval-subset", type=int, metavar="N",
                   help="with --eval-every: score N seeded examples of each task's test split, the same ones every "
                        "time (default: the whole split)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _folder_args(p)


def _threads_arg(p: argparse.ArgumentParser,
                 default: str = "one for a small model, else the run's share of the cores") -> None:
    """--threads, the same on every command that trains; the default rule is clframework.parallel.default_threads."""
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"torch CPU threads per run (default: {default}; README, Speed)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME|MODULE:FACTORY",
                   help="registered model (mlp, cnn, resnet18, reduced_resnet18; clframework list) or your own "
                        "factory (input_shape, head_sizes) -> nn.Module as module:function (default: the benchmark's)")
    p.add_argument("--augment", choices=["none", "crop-flip"],
                   help="training augmentation, per example on the device: crop-flip = random crop with 4-pixel "
                        "padding and horizontal flip (default: the benchmark's; CIFAR and TinyImageNet protocols "
                        "crop-flip, MNIST-like none)")
RECIPE_FLAGS = tuple(k for k in RECIPE_FIELDS if k != "lr")  # --lr is among the training flags


def _recipe_args(p: argparse.ArgumentParser) -> None:
    """The optimizer recipe (docs/recipe.md); each default is the benchmark's protocol, each value is checked by
    RunConfig.resolved before any training."""
    g = p.add_argument_group("optimizer recipe (default: the benchmark's protocol; docs/recipe.md)")
    g.add_argument("--optimizer", metavar="sgd|adam|adamw", help="the optimizer")
    g.add_argument("--momentum", type=float, help="SGD momentum (sgd only; default 0)")
    g.add_argument("--weight-decay", type=float, help="L2 penalty for sgd and adam, decoupled for adamw (default 0; "
                   "adamw 0.01)")
    g.add_argument("--lr-schedule", metavar="constant|step|multistep|cosine",
                   help="learning-rate schedule, restarting with every task (default constant)")
    g.add_argument("--lr-step-epochs", type=int, metavar="N", help="step schedule: multiply the lr by --lr-gamma every "
                   "N epochs of a task")
    g.add_argument("--lr-milestones", type=_int_list, metavar="E1,E2,...", help="multistep schedule: multiply the lr "
                   "by --lr-gamma at each of these epochs of a task (X-DER's seq-cifar100: 35,45)")
    g.add_argument("--lr-gamma", type=float, help="step and multistep schedules: the factor (default 0.1)")
    g.add_argument("--lr-min", type=float, help="cosine schedule: the lr it anneals to by a task's last step "
                   "(default 0)")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the L2 norm of all gradients together to "
                   "NORM before each step (default 0: no clipping)")
    g.add_argument("--drop-last", action="store_true", default=None, help="skip each epoch's final minibatch when "
                   "it is smaller than the others (advised with BatchNorm when a task's size leaves a few examples; "
                   "default: keep it, as the reference code does)")


def _int_list(text: str) -> list:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 35,45, got {text!r}") from None


def _recipe(args) -> dict:
    return {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}


def _folder_args(p: argparse.ArgumentParser, checkpoints: bool = True) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the runs in --out: finished ones are kept, interrupted ones go on from their "
                        "checkpoint (docs/reliability.md)")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out made by clframework first")
    if checkpoints:
        p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                       help="also checkpoint every N optimizer steps within a task (default 500; 0: after each "
                            "task only)")


def _plot_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--plots", choices=["all", "study", "none"], default=default,
                   help="figures to write: all (each run's matrix and curves too), study (the study's figures only), "
                        f"none (default {default})")
    p.add_argument("--plot-format", default="png,pdf", metavar="png,pdf|png|svg|...",
                   help="figure file format(s), from png, pdf, svg (default png,pdf: the PDF next to the PNG)")


def _figures(args):
    """--plots/--plot-format, checked before any data loads."""
    from clframework.evaluation.figures import Figures

    return Figures.parse(args.plots, args.plot_format)


WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # wandb.init's modes


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", default="1", metavar="N|auto",
                   help="runs side by side in N worker processes (auto: one per two cores; default 1)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="each run a Ray task: on the cluster at ADDRESS (auto: the one `ray start` started), or on "
                        "a local Ray instance when no address is given (pip install 'clframework[ray]'; docs/scale.md)")
    p.add_argument("--checkpoint-dir", type=Path, metavar="PATH",
                   help="where each run's folder (checkpoints) lives while it trains, e.g. shared storage for Ray "
                        "workers on other machines (default: inside --out)")


def _backend(args):
    """--jobs/--threads/--ray (run: --threads), checked before any data loads."""
    from ..parallel import Backend, parse_jobs

    return Backend(jobs=parse_jobs(getattr(args, "jobs", "1")), threads=args.threads, ray=getattr(args, "ray", None))


def _wandb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (docs/wandb.md)")
    p.add_argument("--wandb-project", help="W&B project (default: $WANDB_PROJECT, else clframework)")
    p.add_argument("--wandb-entity", help="W&B entity, i.e. user or team (default: $WANDB_ENTITY, else yours)")
    p.add_argument("--wandb-tags", help="comma-separated W&B tags (default: $WANDB_TAGS)")
    p.add_argument("--wandb-name", help="W&B run name (default: $WANDB_NAME, else strategy, changed "
                   "hyperparameters and seed, e.g. si-c0.1-seed0; with several runs, a prefix)")
    p.add_argument("--wandb-group", help="W&B group (default: the output folder's name for compare, tune, reproduce)")
    p.add_argument("--wandb-mode", choices=WANDB_MODES, help="default: $WANDB_MODE, else online")
    p.add_argument("--wandb-dir", type=Path, help="where W&B writes its run files (default: the output folder)")


def _wandb_loggers(args, out: Path, group: Optional[str], several: bool):
    """(resolved cfg -> [WandbLogger], summary logger or None) with --wandb, else (None, None); a bad mode or an
    unwritable --wandb-dir fails here, before training."""
    if not getattr(args, "wandb", False):
        return None, None
    try:
        import wandb  # noqa: F401 - only --wandb needs it
    except ImportError:
        raise RuntimeError("--wandb needs the wandb package, which is not installed: pip install wandb "
                           "(or run without --wandb)") from None
    from clframework.evaluation.wandb_logger import WandbLogger, WandbSummary, check_dir, check_mode, run_name, \
        settings_from_env

    mode = check_mode(args.wandb_mode)  # online: the study asks the server once (WandbLogger.prepare_study)
    wandb_dir = check_dir(args.wandb_dir or out)
    tags = [t.strip() for t in (args.wandb_tags or "").split(",") if t.strip()]
    s = settings_from_env(args.wandb_project, args.wandb_entity, tags, args.wandb_name)
    print(f"W&B: project {s['project']}, {mode}; run files under {wandb_dir / 'wandb'}")
    common = dict(project=s["project"], entity=s["entity"], tags=s["tags"], group=group, mode=mode,
                  wandb_dir=wandb_dir)

    def loggers(resolved: dict):
        name = run_name(resolved, s["name"]) if several else (s["name"] or run_name(resolved))
        return [WandbLogger(resolved, name=name, **common)]

    summary = WandbSummary(**{**common, "group": group or out.resolve().name}) if several else None
    return loggers, summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clframework", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clframework {__version__}")
    parser.add_argument("--debug", action="store_true", help="full Python tracebacks for every error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    lp = sub.add_parser("list", help="registered strategies (with hyperparameters) and benchmarks")
    lp.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    lp.add_argument("--benchmark", metavar="NAME",
                    help="the values a run on NAME uses: its training protocol and each strategy's hyperparameters "
                         "with the benchmark's presets applied (per memory size where the paper has several)")
    rp = sub.add_parser("run", help="train one strategy on one benchmark and write results.json")
    rp.add_argument("--strategy", required=True, help="registered strategy, e.g. si, ewc, naive (clframework list)")
    rp.add_argument("--seed", type=int, default=0, help="random seed of the weights and batch order (default 0)")
    _common(rp)
    _plot_args(rp, "all")
    _wandb_args(rp)
    cp = sub.add_parser("compare", help="run strategies x seeds on one benchmark and write summary.json")
    cp.add_argument("--strategies", default=DEFAULT_STRATEGIES, help=f"comma-separated (default {DEFAULT_STRATEGIES})")
    cp.add_argument("--seeds", default="3", help=f"{SEEDS_HELP} (default 3)")
    _common(cp)
    _plot_args(cp, "study")
    _wandb_args(cp)
    _study_args(cp)
    xp = sub.add_parser("reproduce", help="one of the paper's experiments: its arms, seeds, controls, figures, table")
    xp.add_argument("experiment", help="split-mnist, permuted-mnist, split-cifar (the SI paper) or der-table (the DER "
                                       "paper's class-incremental table; writes ledger.md)")
    xp.add_argument("--dataset", help="mnist (default), fashion-mnist or mnist-5k for the MNIST protocols; cifar; "
                                      "seq-cifar10 (default), seq-cifar100, seq-tinyimagenet, seq-mnist or "
                                      "seq-fashion-mnist (MLP, runs on a CPU) for der-table")
    xp.add_argument("--buffer", type=int, help="der-table: the memory size whose row to run (seq-cifar10, "
                                               "seq-tinyimagenet, seq-mnist, seq-fashion-mnist: 200, 500 (default), "
                                               "5120, whose published numbers docs/ledger.md does not list; "
                                               "seq-cifar100: 500, 2000); `reproduce der-table --help` lists the arms")
    xp.add_argument("--quick", action="store_true", help="scale width, epochs, tasks and seeds down (printed)")
    xp.add_argument("--seeds", type=int, help="override the paper's number of seeds")
    xp.add_argument("--epochs", type=int, help="override the epochs per task")
    xp.add_argument("--data-root", help="folder holding the dataset files")
    _recipe_args(xp)
    xp.add_argument("--arms", help="comma-separated arms and controls to run, in this order (default: all); "
                    "an arm may override hyperparameters, e.g. --arms si,sgd,ewc,si:c=0.02,joint")
    xp.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    _threads_arg(xp)
    _model_args(xp)
    xp.add_argument("--out", type=Path, help="output folder")
    xp.add_argument("--quiet", action="store_true", help="no progress bars")
    _folder_args(xp)
    _plot_args(xp, "study")
    _wandb_args(xp)
    _study_args(xp)
    tp = sub.add_parser("tune", help="grid search on a validation hold-out; reports the chosen value's test accuracy")
    tp.add_argument("--strategy", required=True, help="registered strategy whose hyperparameters are searched")
    tp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="values to try")
    tp.add_argument("--validation", type=float, default=0.1, help="fraction of training data held out (default 0.1)")
    tp.add_argument("--seeds", default="1", help=f"per grid point: {SEEDS_HELP} (default 1)")
    _common(tp)
    _plot_args(tp, "study")
    _wandb_args(tp)
    _study_args(tp)
    bp = sub.add_parser("bench", help="time a bare PyTorch loop, our strategies and Avalanche's on one stream")
    bp.add_argument("--benchmark", help=f"registered benchmark (default {DEFAULT_BENCHMARK}; --study: "
                                        f"split-fashion-mnist)")
    bp.add_argument("--epochs", type=int, help="epochs per task (default: the benchmark's protocol; --study: 1)")
    bp.add_argument("--batch-size", type=int, help="minibatch size (default: the benchmark's protocol)")
    bp.add_argument("--repeats", type=int, default=5,
                    help="timed passes over the stream, the entries taking turns task by task (default 5)")
    bp.add_argument("--entries", default="all", help="comma-separated subset of: floor, our strategies (naive,si,ewc,"
                    "mas,lwf,replay,agem) and avalanche-NAME for each (default all), floor-agem (the floor plus the "
                    "reference gradient every A-GEM step computes; not in all); or 'rehearsal': floor, naive, "
                    "er, der, derpp, er_ace, icarl, gdumb and Avalanche's der, er_ace, gdumb (needs "
                    "--setting class)")
    bp.add_argument("--setting", choices=["task", "domain", "class"], help="the benchmark's setting (default: its own)")
    bp.add_argument("--quick", action="store_true", help="tiny: 2 tasks, 256 training examples each, 1 epoch")
    bp.add_argument("--tasks", type=int, default=0, help="first N tasks only (0 = all)")
    bp.add_argument("--max-train", type=int, default=0, help="at most N training examples per task (0 = all)")
    bp.add_argument("--set", action="append", default=[], metavar="STRATEGY.KEY=VALUE", help="e.g. --set si.c=0.1")
    _threads_arg(bp, "torch's own choice")
    bp.add_argument("--targets", action="store_true",
                    help="also judge the speed budgets (docs/performance.md); no verdict on an entry whose "
                         "ratio's spread exceeds --max-spread")
    bp.add_argument("--max-spread", type=float, default=0.03, metavar="FRACTION",
                    help="the widest spread of an entry's ratio at which --targets judges it (default 0.03)")
    bp.add_argument("--device", default="cpu", help="cpu (default), cuda, auto ...")
    bp.add_argument("--out", type=Path, help="folder for bench.json and bench.md")
    bp.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    bp.add_argument("--study", action="store_true",
                    help="instead: time a compare grid with --jobs 1 --threads 1, --jobs 2 and a local Ray, beside the "
                         "machine's capacity (two single-thread processes against one), and print the speed-ups "
                         "(docs/performance.md)")
    bp.add_argument("--strategies", default="naive,si,ewc,er",
                    help="--study: the grid's strategies (default naive,si,ewc,er)")
    bp.add_argument("--seeds", type=int, default=3, help="--study: seeds per strategy (default 3)")
    bp.add_argument("--modes", default=",".join(("jobs1", "jobs2", "ray")),
                    help="--study: which of jobs1,jobs2,ray to time (default all)")
    bp.add_argument("--capacity-steps", type=int, default=1500, metavar="N",
                    help="--study: steps of the loop that measures the machine's capacity (default 1500; 0: skip)")
    rl = sub.add_parser("runs", help="past runs and studies under a folder: label, benchmark, ACC, status, date")
    rl.add_argument("folder", nargs="?", type=Path, default=Path("runs"), help="where to look (default: runs)")
    rp = sub.add_parser("report", help="finished compares' or reproductions' table for a paper: mean +- SEM in %%, "
                        "display names, best in bold, bounds marked, paired-test marks (Markdown, LaTeX or CSV)")
    rp.add_argument("study", type=Path, nargs="+", help="the study's folder (holding summary.json); several studies "
                    "of one protocol (e.g. buffer 200 and 500) make one table with a Buffer column")
    rp.add_argument("--format", default="md", choices=["md", "latex", "csv"], help="output format (default md)")
    rp.add_argument("--scale", default="percent", choices=["percent", "fraction"],
                    help="md and latex: percent with two decimals (default) or fractions with four; csv always "
                         "holds fractions at full precision")
    rp.add_argument("--baseline", metavar="NAME", help="mark differences from this strategy (default: from each "
                    "column's best)")
    rp.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired t-test (default 0.05)")
    rp.add_argument("--metrics", metavar="M1,M2,...",
                    help="columns, from acc, task_il_acc, bwt, fwt, forgetting, (--eval-every studies) min_acc, "
                         "wc_acc, wf10, wp10, lca10, a_auc, and any other metric the study recorded (default: "
                         "class-incremental acc,task_il_acc,forgetting; else acc,bwt,fwt,forgetting)")
    rp.add_argument("--out", type=Path, help="write the table to this file (default: print it)")
    for command in sub.choices.values():  # --debug also after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="full Python tracebacks for every error")
    return parser


def _benchmark_options(args) -> Dict[str, str]:
    options = _parse_sets(args.option, "--option", "n_tasks=3")
    for key, value in (("setting", args.setting), ("data_root", args.data_root)):
        if value is not None:
            if key in options:
                raise RegistryError(f"--option {key}=... and --{key.replace('_', '-')} both given; give one")
            options[key] = value
    return options


def _hidden(args) -> Optional[List[int]]:
    if not args.hidden:
        return None
    try:
        return [int(h) for h in args.hidden.split(",") if h]
    except ValueError:
        raise RegistryError(f"--hidden expects comma-separated integers like 256,256, got {args.hidden!r}") from None


def _check_before_torch(args, strategies: List[str]) -> None:
    """The argument errors found without importing torch, so that they answer at once (run, compare, tune): the
    strategies' names and --set's keys, the benchmark's name and options, --hidden, --jobs/--threads/
    --ray, --plots. What needs the code itself (a hyperparameter's range, the model, the device) is checked next,
    still before any training, by RunConfig.resolved."""
    registry = _strategy_registry(args)
    for strategy in strategies:
        registry.get(strategy)
    for strategy, hparams in _parse_strategy_sets(args.set, strategies, registry).items():
        known = registry.get(strategy).params
        registry.check_hparams(strategy, {k: v for k, v in hparams.items() if k not in known})  # unknown: refused
    from clframework.benchmarks.registry import BENCHMARKS

    BENCHMARKS.check_hparams(args.benchmark, _benchmark_options(args))
    _hidden(args)
    if isinstance(getattr(args, "seeds", 1), str):  # compare's: a count or the seeds named
        args.seeds = parse_seeds(args.seeds)
    elif getattr(args, "seeds", 1) < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {args.seeds!r}")
    _backend(args)
    _figures(args)


def _strategy_registry(args):
    """The registry to check strategy arguments against: the built-ins read from their source (no torch) unless
    plugins or installed entry points may add strategies or the registry is loaded already (main() called from
    Python, whose code may have registered some), else the strategy registry itself."""
    from importlib import metadata

    from ..registry import declared_registry

    loaded = "clframework.plugin" in sys.modules
    if not loaded and not args.plugin and not metadata.entry_points(group="clframework.strategies"):
        declared = declared_registry("strategy", "clframework.strategies", "register_strategy", "Strategy")
        if declared is not None:
            return declared
    from ..plugin import STRATEGIES

    return STRATEGIES


def _base_config(args, strategy: str):
    from ..config import RunConfig

    hidden, options = _hidden(args), _benchmark_options(args)
    return RunConfig(strategy=strategy, benchmark=args.benchmark, seed=getattr(args, "seed", 0), epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, hidden=hidden, dropout=args.dropout, device=args.device,
                     benchmark_options=options, tasks=args.tasks, model=args.model, augment=args.augment,
                     precision=args.precision, compile=args.compile, workers=args.workers,
                     eval_every=args.eval_every, eval_subset=args.eval_subset, small_head=args.small_head,
                     **_recipe(args))


def _folder_options(args) -> dict:
    out = {"resume": args.resume, "overwrite": args.overwrite}
    if getattr(args, "checkpoint_every", None) is not None:
        out["checkpoint_every"] = args.checkpoint_every
    return out


def _strategy_entries(args) -> List[dict]:
    """Name, description and hyperparameter defaults of every strategy. The built-ins are read from their source
    (no torch: `list` answers at once) unless plugins or installed entry points may add or replace some."""
    from importlib import metadata

    from ..registry import declared_entries

    if not args.plugin and not metadata.entry_points(group="clframework.strategies"):
        declared = declared_entries("clframework.strategies", "register_strategy", "Strategy")
        if declared is not None:
            return sorted(({**e, "origin": "built-in"} for e in declared), key=lambda e: e["name"])
    from ..plugin import STRATEGIES

    return [{"name": n, "description": STRATEGIES.get(n).description, "params": STRATEGIES.get(n).defaults,
             "origin": STRATEGIES.get(n).extra.get("origin", "?")} for n in STRATEGIES.names()]


def _model_entries(args) -> List[dict]:
    """The registered models; the built-ins read from clframework/models.py's source (no torch) unless plugins or
    installed entry points may add some."""
    from importlib import metadata

    from ..registry import declared_functions

    if not args.plugin and not metadata.entry_points(group="clframework.models"):
        declared = declared_functions("clframework.models", "register_model")
        if declared is not None:
            return sorted(declared, key=lambda e: e["name"])
    from ..models import MODELS

    return [{"name": n, "description": MODELS.get(n).description, "params": MODELS.get(n).defaults}
            for n in MODELS.names()]


def cmd_list(args) -> int:
    from clframework.benchmarks.registry import BENCHMARKS

    if args.benchmark is not None:
        return _list_on_benchmark(args.benchmark)
    print("strategies:")
    for e in _strategy_entries(args):
        params = ", ".join(f"{k}={v!r}" for k, v in e["params"].items()) or "(no hyperparameters)"
        print(f"  {e['name']:<10} {e['description']}\n  {'':<10} {params}\n  {'':<10} from: {e['origin']}")
    print("models (--model NAME, or your own as --model module:factory):")
    for e in _model_entries(args):
        params = ", ".join(f"{k}={v!r}" for k, v in e["params"].items()) or "(no options)"
        print(f"  {e['name']:<18} {e['description']}\n  {'':<18} {params}")
    print("benchmarks:")
    for name in BENCHMARKS.names():
        e = BENCHMARKS.get(name)
        here = "data on this machine" if e.extra["available"](None) else "data NOT on this machine"
        options = ", ".join(f"{k}={v!r}" for k, v in e.defaults.items()) or "(none)"
        print(f"  {name:<24} {e.description}\n  {'':<24} source: {e.extra['source']} [{here}]\n  {'':<24} "
              f"options (--option KEY=VALUE): {options}")
    return 0


def _list_on_benchmark(name: str) -> int:
    """`list --benchmark NAME`: the training protocol and every strategy's hyperparameters as a run on NAME resolves
    them (RunConfig.resolved: the benchmark's presets over the generic defaults), not the generic defaults alone."""
    from dataclasses import replace as with_fields

    from clframework.benchmarks.registry import BENCHMARKS, benchmark_protocol

    from ..config import RunConfig
    from ..plugin import STRATEGIES

    print(f"benchmark {name}: {BENCHMARKS.get(name).description}")
    protocol = benchmark_protocol(name)
    bare = with_fields(protocol, strategy_hparams={}, method_settings={})  # the training every strategy starts from
    base = RunConfig(strategy="naive", protocol=bare).resolved()["train"]
    print("training (--epochs, --lr, --optimizer ... override it): "
          + ", ".join(f"{k} {v}" for k, v in base.items() if v is not None))
    print("strategies (--set KEY=VALUE overrides; * not the strategy's generic default: set by this benchmark's "
          "protocol):")
    for strategy in STRATEGIES.names():
        defaults = STRATEGIES.get(strategy).defaults
        cfg = RunConfig(strategy=strategy, benchmark=name).resolved()
        hparams = ", ".join(f"{k}={v!r}{'*' if defaults[k] != v else ''}" for k, v in cfg["hparams"].items())
        train = ", ".join(f"{k} {v}*" for k, v in cfg["train"].items() if v != base[k])
        print(f"  {strategy:<10} {hparams or '(no hyperparameters)'}" + (f"; training: {train}" if train else ""))
        for size in sorted(s for s in protocol.method_settings.get(strategy, {}) if s not in (-1, cfg["hparams"].get(
                "memory_size"))):
            other = RunConfig(strategy=strategy, benchmark=name, hparams={"memory_size": size}).resolved()
            changed = [f"{k}={v!r}" for k, v in other["hparams"].items() if k != "memory_size"
                       and v != cfg["hparams"][k]] + [f"{k} {v}" for k, v in other["train"].items()
                                                      if v != cfg["train"][k]]
            if changed:
                print(f"  {'':<10} --set memory_size={size}: {', '.join(changed)}")
    return 0


def cmd_run(args) -> int:
    _check_before_torch(args, [args.strategy])
    from ..runner import run

    cfg = _base_config(args, args.strategy)
    cfg.hparams = _parse_sets(args.set)
    cfg.resolved()  # every error before training
    figures = _figures(args)
    out = args.out or Path("runs") / f"{args.benchmark}-{args.strategy}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    loggers, _ = _wandb_loggers(args, out, args.wandb_group, several=False)
    res = run(cfg, out, quiet=args.quiet, callbacks=loggers(cfg.resolved()) if loggers else (),
              **_folder_options(args), figures=figures, threads=args.threads)
    m = res.metrics
    print(f"{args.strategy} on {args.benchmark} (seed {args.seed}): acc {m['acc']:.4f}  bwt {m['bwt']:+.4f}  "
          f"forgetting {m['forgetting']:.4f}  ({res.train_seconds:.1f} s training)")
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_compare(args) -> int:
    from ..progress import StudyProgress

    with StudyProgress("compare", args.quiet) as progress:  # before torch loads: the first output within a second
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        if not strategies:
            raise ValueError(f"give at least one strategy to compare (e.g. --strategies naive,si), got "
                             f"{args.strategies!r}")
        _check_before_torch(args, strategies)
        backend = _backend(args)
        figures = _figures(args)
        from clframework.evaluation.aggregate import format_console

        from ..study import compare

        hparams = _parse_strategy_sets(args.set, strategies)
        out = args.out or Path("runs") / f"compare-{args.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
        base = _base_config(args, strategies[0])
        loggers, summary_logger = _wandb_loggers(args, out, args.wandb_group or out.resolve().name, several=True)
        callbacks_for = ((lambda s, seed: loggers(replace(base, strategy=s, hparams=hparams[s], seed=seed)
                                                  .resolved())) if loggers else None)
        summary = compare(strategies, args.benchmark, args.seeds, out, quiet=args.quiet, base=base, hparams=hparams,
                          callbacks_for=callbacks_for, summary_callbacks=[summary_logger] if summary_logger else (),
                          **_folder_options(args), backend=backend, progress=progress,
                          checkpoint_dir=args.checkpoint_dir, figures=figures)
    print(format_console(summary))
    print(f"summary: {out / 'summary.json'}")
    if summary["failed"]:
        names = ", ".join(f"{f['strategy']} seed {f['seed']}" for f in summary["failed"])
        print(f"clframework: error: {len(summary['failed'])} run(s) failed (see above) and "
              f"were left out of the statistics: {names}; --resume continues them from their checkpoints once the "
              f"cause is fixed", file=sys.stderr)
        _diverged_exit(summary["diverged"])
        return EXIT_CRASH
    return _diverged_exit(summary["diverged"])


def _diverged_exit(diverged) -> int:
    """0, or EXIT_DIVERGED with one line naming the runs that diverged (left out of the statistics)."""
    if not diverged:
        return 0
    names = ", ".join(f"{d.get('strategy') or d.get('point')} seed {d['seed']}" for d in diverged)  # compare | tune
    print(f"clframework: error: {len(diverged)} run(s) diverged and were left out of the statistics: {names}",
          file=sys.stderr)
    return EXIT_DIVERGED


def cmd_reproduce(args) -> int:
    from ..progress import StudyProgress

    with StudyProgress(f"reproduce {args.experiment}", args.quiet) as progress:
        backend = _backend(args)
        figures = _figures(args)
        from .paper import check_request

        check_request(args.experiment, args.dataset, args.buffer)
        from .reproduce import reproduce

        out = args.out or Path("runs") / f"reproduce-{args.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms is not None else None
        loggers, summary_logger = _wandb_loggers(args, out, args.wandb_group or out.resolve().name, several=True)
        result = reproduce(args.experiment, out, dataset=args.dataset, quick=args.quick, seeds=args.seeds,
                           epochs=args.epochs, data_root=args.data_root, quiet=args.quiet, log=progress.note,
                           arms=arms, device=args.device, model=args.model, augment=args.augment,
                           recipe=_recipe(args), buffer=args.buffer,
                           callbacks_for=(lambda cfg: loggers(cfg.resolved())) if loggers else None,
                           summary_callbacks=[summary_logger] if summary_logger else (), **_folder_options(args),
                           backend=backend, progress=progress, checkpoint_dir=args.checkpoint_dir, figures=figures)
    return _diverged_exit(result.get("diverged", []))


def cmd_tune(args) -> int:
    from ..progress import StudyProgress

    with StudyProgress(f"tune {args.strategy}", args.quiet) as progress:
        _check_before_torch(args, [args.strategy])
        backend = _backend(args)
        figures = _figures(args)
        from .tune import parse_grid, tune

        grid = parse_grid(args.grid)
        base = _base_config(args, args.strategy)
        base.hparams = _parse_sets(args.set)
        out = args.out or Path("runs") / f"tune-{args.strategy}-{args.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
        loggers, _ = _wandb_loggers(args, out, args.wandb_group or out.resolve().name, several=True)
        result = tune(base, grid, validation=args.validation, seeds=args.seeds, out_dir=out, quiet=args.quiet,
                      log=progress.note, callbacks_for=(lambda cfg: loggers(cfg.resolved())) if loggers else None,
                      **_folder_options(args), backend=backend, progress=progress,
                      checkpoint_dir=args.checkpoint_dir, figures=figures)
    print(f"results: {out / 'tune.json'}")
    return _diverged_exit(result.get("diverged", []))


def cmd_bench(args) -> int:
    if args.study:
        return _bench_study(args)
    import torch

    from .bench import ENTRIES, OURS, QUICK, REHEARSAL, REHEARSAL_ENTRIES, BenchConfig, format_table, run_bench, \
        write_outputs

    threads = torch.get_num_threads()
    groups = {"all": list(ENTRIES), "rehearsal": list(REHEARSAL_ENTRIES)}
    entries = groups.get(args.entries) or [e.strip() for e in args.entries.split(",") if e.strip()]
    quick = QUICK if args.quick else {}
    config = BenchConfig(benchmark=args.benchmark or DEFAULT_BENCHMARK, epochs=args.epochs or quick.get("epochs"),
                         batch_size=args.batch_size, tasks=args.tasks or quick.get("tasks", 0),
                         max_train=args.max_train or quick.get("max_train", 0), repeats=args.repeats,
                         entries=entries, device=args.device,
                         hparams=_parse_strategy_sets(args.set, list(OURS + REHEARSAL)), max_spread=args.max_spread,
                         setting=args.setting or "")
    torch.set_num_threads(args.threads or threads)
    try:
        result = run_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        torch.set_num_threads(threads)
    print(format_table(result, show_targets=args.targets))
    if args.out:
        write_outputs(result, args.out)
        print(f"table: {args.out / 'bench.md'}  data: {args.out / 'bench.json'}")
    return 0


def cmd_report(args) -> int:
    from clframework.evaluation.results import write_text

    from .report import report

    metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",") if m.strip()]
    text = report(args.study, args.format, args.baseline, args.alpha, metrics, args.scale)
    if args.out:
        write_text(args.out, text)
        print(f"table: {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_runs(args) -> int:
    from .runs import list_runs

    print(list_runs(args.folder))
    return 0


def _bench_study(args) -> int:
    import json

    from .bench import StudyBenchConfig, format_study, run_study_bench

    config = StudyBenchConfig(args.benchmark or StudyBenchConfig.benchmark,
                              [s.strip() for s in args.strategies.split(",") if s.strip()], args.seeds,
                              args.epochs or StudyBenchConfig.epochs,
                              [m.strip() for m in args.modes.split(",") if m.strip()], args.tasks or None,
                              args.capacity_steps)
    result = run_study_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_study(result, show_targets=args.targets))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "study.json").write_text(json.dumps(result, indent=2))
        print(f"data: {args.out / 'study.json'}")
    return 0


EXIT_USER_ERROR, EXIT_CRASH, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 1, 3, 130, 141


def main(argv: Optional[List[str]] = None) -> int:
    """Exit codes: 0 done, 2 a user error (one line), 3 a run diverged, 1 an exception in a strategy or the user's
    code (traceback and where), 130 interrupted (Ctrl-C at any moment; one line, the checkpoints kept for --resume),
    141 stdout's reader stopped reading (`| head`; quietly)."""
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    with deferred_in_imports(keep=own_process) as sigint:
        parser = build_parser()
        _experiment_help(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        provenance.set_command(argv)
        try:
            with warnings.catch_warnings():
                if own_process:  # main() called from Python leaves warnings to its caller
                    warnings.showwarning = _one_line
                code = _command(args)
            try:
                sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
            except BrokenPipeError:
                code = _reader_gone()
            sigint.stop()
            if sigint.received:  # it came while an import was deferring it, and the command ended meanwhile
                raise KeyboardInterrupt
            return code
        except KeyboardInterrupt:
            sigint.stop()
            if args.debug:
                raise
            out = getattr(args, "out", None)
            where = f"the checkpoints in {out} are kept; " if out else ""
            print(f"\nclframework: interrupted; {where}continue with the same command plus --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            provenance.set_command(None)


def _experiment_help(argv: List[str]) -> None:
    """`clframework reproduce EXPERIMENT --help`: that experiment's datasets, seeds, buffers and arms first (the
    generic help follows)."""
    if len(argv) >= 2 and argv[0] == "reproduce" and ("-h" in argv or "--help" in argv):
        from .paper import EXPERIMENTS, describe

        if argv[1] in EXPERIMENTS:
            print(describe(argv[1]) + "\n")


def _command(args) -> int:
    """Run the command; an error becomes its message and exit code (a KeyboardInterrupt passes through)."""
    check = getattr(args, "check_data", False) and os.environ.get("CLFRAMEWORK_CHECK_DATA") != "1"
    if check:  # read where image trees are built (here and in --jobs workers)
        os.environ["CLFRAMEWORK_CHECK_DATA"] = "1"
    try:
        for module in getattr(args, "plugin", []):
            import_plugin(module)
        return {"list": cmd_list, "run": cmd_run, "compare": cmd_compare, "reproduce": cmd_reproduce,
                "tune": cmd_tune, "bench": cmd_bench, "runs": cmd_runs, "report": cmd_report}[args.command](args)
    except BrokenPipeError:
        return _reader_gone()
    except _training_error("TrainingDiverged") as exc:
        if args.debug:
            raise
        print(f"clframework: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except _training_error("TrainingFailed") as exc:
        if args.debug:
            raise
        traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"clframework: error in a strategy or model during training: {exc}. Finished tasks are kept in the "
              f"checkpoint (--resume continues from it once the cause is fixed).", file=sys.stderr)
        return EXIT_CRASH
    except (RegistryError, ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        if str(exc).startswith("DataLoader worker (pid"):  # torch imported already: raised outside the training loop
            from ..trainer import DataWorkerDied, worker_death
            exc = DataWorkerDied(exc) if worker_death(exc) else exc
        print(f"clframework: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if check:
            del os.environ["CLFRAMEWORK_CHECK_DATA"]


def _one_line(message, category, *args, **kwargs) -> None:
    """A warning as one line on stderr (not Python's file:line and source line)."""
    print(f"clframework: warning: {message}", file=sys.stderr)


def _reader_gone() -> int:
    """stdout's reader stopped reading (`clframework ... | head`): end quietly, as a program killed by SIGPIPE
    would, and point stdout at /dev/null so that Python's own flush at exit has nowhere to fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def _training_error(name: str):
    """The trainer's exception class `name` once a command has loaded the trainer, else () (matches nothing), so
    that `list`, `runs` and `--help` never import torch."""
    trainer = sys.modules.get("clframework.trainer")
    return getattr(trainer, name) if trainer is not None else ()
