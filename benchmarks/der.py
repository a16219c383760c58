"""The class-incremental protocols of the DER line, with their published settings.

Sources: Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple Baseline" (NeurIPS 2020),
and its code, aimagelab/mammoth: `datasets/seq_cifar10.py`, `seq_tinyimagenet.py`, `seq_cifar100.py` (tasks, epochs,
batch size, augmentation, backbone, scheduler) and `utils/best_args.py` (each method's learning rate and
hyperparameters per buffer size); seq-CIFAR-100 follows Boschini et al., "Class-Incremental Continual Learning into
the eXtended DER-verse" (X-DER, TPAMI 2022), whose settings are in the same files. Every run: SGD without momentum or
weight decay unless the table says otherwise, the optimizer reset per task, random crop with 4-pixel padding and
horizontal flip on incoming and replayed examples, a ResNet-18 (3x3 stem, no max-pool) with one output per class.

`BEST[protocol][(strategy, buffer)]` = (training settings, strategy hyperparameters) in our names (Mammoth's
`sgd` is our `naive`, its `minibatch_size` our `minibatch_size`, A-GEM's our `sample_size`, `softmax_temp` our
`temperature`, `optim_wd` our `weight_decay`, iCaRL's `wd_reg` our `wd_reg`, a loss penalty); buffer None for methods without a memory. A run takes the row of its
`memory_size` (`--set memory_size=500`; the strategies default to 200), as the seq-MNIST protocol below does;
`clframework reproduce der-table --buffer N` takes the row of N. A-GEM runs our default memory (every example of
each finished task offered to the reservoir), not the per-task batch of Mammoth's models/agem.py (`--set
per_task=B//n_tasks` gives that one); ER-ACE runs task-based, as Mammoth's models/er_ace.py (docs/fidelity.md).

seq-MNIST (DER paper, Sec. 5 and best_args.py 'seq-mnist'): 5 tasks of 2 consecutive digits, class-incremental, MLP
784-100-100-10 initialized as Mammoth's MNISTMLP (`xavier_mlp`: Xavier-uniform weights, zero biases), one epoch per
task, minibatch 10, plain SGD. Its per-method settings are listed per memory size
(200, 500, 5120) in `SEQ_MNIST.method_settings` and chosen by the run's `memory_size` (`--set memory_size=500`);
sizes not listed get the base lr 0.03 and the strategy's defaults. Not published for this protocol, so our choice:
ER-ACE takes ER's settings, GDumb the recipe of its authors' MNIST runs (128 fit epochs, no cutmix); LwF's weight decay (5e-4 there) is not applied; online EWC (gamma 1)
maps onto our exact-Fisher EWC with online=True, but with lambda 10, not Mammoth's 90: with the exact Fisher, lambda
90 makes SGD at lr 0.03 unstable (the penalty's curvature lambda * F exceeds 2 / lr; measured: the loss reached 6e26
on seq-fashion-mnist), and 10 is the larger of the two values we tried (1, 10) that trains stably. seq-fashion-mnist: the same protocol on Fashion-MNIST
(no published numbers; ours are in docs/results.md and docs/ledger.md).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from . import datasets
from .registry import Protocol, register_benchmark

Row = Tuple[Dict[str, object], Dict[str, object]]
BUFFERS = (200, 500, 5120)
CIFAR100_BUFFERS = (500, 2000)


def _memory(lr: float, buffers, **hparams) -> Dict[Tuple[str, Optional[int]], Row]:
    return {b: ({"lr": lr}, dict(hparams)) for b in buffers}


# iCaRL's weight decay is its own penalty wd_reg * sum(theta^2) added to the loss (Mammoth's wd_reg / opt_wd), not the
# optimizer's weight decay (which would be 2 * wd_reg for the same step); its class means average each exemplar with
# its horizontal flip on these protocols, which train with flips (Mammoth's compute_class_means)
ICARL = {"wd_reg": 1e-5, "flip_means": True}


def _rows(strategy: str, per_buffer: Dict[Optional[int], Row]) -> Dict[Tuple[str, Optional[int]], Row]:
    return {(strategy, b): row for b, row in per_buffer.items()}


BEST: Dict[str, Dict[Tuple[str, Optional[int]], Row]] = {
    "seq-cifar10": {  # best_args.py 'seq-cifar10'; batch 32, minibatch_size 32, 50 epochs
        **_rows("naive", {None: ({"lr": 0.1}, {})}),
        **_rows("si", {None: ({"lr": 0.03}, {"c": 0.5, "xi": 1.0})}),
        **_rows("lwf", {None: ({"lr": 0.01, "weight_decay": 5e-4}, {"alpha": 3.0, "temperature": 2.0})}),
        **_rows("er", _memory(0.1, BUFFERS, minibatch_size=32)),
        **_rows("agem", _memory(0.03, BUFFERS, sample_size=32)),
        **_rows("icarl", {200: ({"lr": 0.1}, ICARL), 500: ({"lr": 0.1}, ICARL), 5120: ({"lr": 0.03}, ICARL)}),
        **_rows("der", _memory(0.03, BUFFERS, alpha=0.3, minibatch_size=32)),
        **_rows("derpp", {200: ({"lr": 0.03}, {"alpha": 0.1, "beta": 0.5, "minibatch_size": 32}),
                          500: ({"lr": 0.03}, {"alpha": 0.2, "beta": 0.5, "minibatch_size": 32}),
                          5120: ({"lr": 0.03}, {"alpha": 0.1, "beta": 1.0, "minibatch_size": 32})}),
    },
    "seq-tinyimagenet": {  # best_args.py 'seq-tinyimg'; batch 32, minibatch_size 32, 100 epochs
        **_rows("naive", {None: ({"lr": 0.03}, {})}),
        **_rows("si", {None: ({"lr": 0.03}, {"c": 0.5, "xi": 1.0})}),
        **_rows("lwf", {None: ({"lr": 0.01, "weight_decay": 5e-4}, {"alpha": 1.0, "temperature": 2.0})}),
        **_rows("er", {200: ({"lr": 0.1}, {"minibatch_size": 32}), 500: ({"lr": 0.03}, {"minibatch_size": 32}),
                       5120: ({"lr": 0.1}, {"minibatch_size": 32})}),
        **_rows("agem", _memory(0.01, BUFFERS, sample_size=32)),
        **_rows("icarl", {b: ({"lr": 0.03}, ICARL) for b in BUFFERS}),
        **_rows("der", _memory(0.03, BUFFERS, alpha=0.1, minibatch_size=32)),
        **_rows("derpp", {200: ({"lr": 0.03}, {"alpha": 0.1, "beta": 1.0, "minibatch_size": 32}),
                          500: ({"lr": 0.03}, {"alpha": 0.2, "beta": 0.5, "minibatch_size": 32}),
                          5120: ({"lr": 0.03}, {"alpha": 0.1, "beta": 0.5, "minibatch_size": 32})}),
    },
    "seq-cifar100": {  # best_args.py 'seq-cifar100' (X-DER); batch 32 = minibatch_size, 50 epochs, lr decay
        **_rows("naive", {None: ({"lr": 0.03}, {})}),
        **_rows("lwf", {None: ({"lr": 0.03, "weight_decay": 5e-4}, {})}),
        **_rows("er", _memory(0.1, CIFAR100_BUFFERS, minibatch_size=32)),
        **_rows("er_ace", _memory(0.03, CIFAR100_BUFFERS, minibatch_size=32)),
        **_rows("icarl", {b: ({"lr": 0.3}, ICARL) for b in CIFAR100_BUFFERS}),
        **_rows("der", _memory(0.03, CIFAR100_BUFFERS, alpha=0.3, minibatch_size=32)),
        **_rows("derpp", _memory(0.03, CIFAR100_BUFFERS, alpha=0.1, beta=0.5, minibatch_size=32)),
    },
}

# Published final class-incremental accuracy (%), (mean, std or None), from ../shared/reference/PROTOCOLS.md:
# DER paper Table 2 (seq-CIFAR-10, seq-TinyImageNet; 10 runs) and X-DER paper Table 2 (seq-CIFAR-100).
DER_TABLE = "Buzzega et al. 2020 (DER), Table 2"
XDER_TABLE = "Boschini et al. 2022 (X-DER), Table 2"
PUBLISHED: Dict[str, Dict[Tuple[str, Optional[int]], Tuple[float, Optional[float]]]] = {
    "seq-cifar10": {("joint", None): (92.20, None), ("naive", None): (19.62, None), ("si", None): (19.48, None),
                    ("lwf", None): (19.61, None), ("er", 200): (44.79, 1.86), ("agem", 200): (20.04, 0.34),
                    ("icarl", 200): (49.02, 3.20), ("der", 200): (61.93, 1.79), ("derpp", 200): (64.88, 1.17),
                    ("er", 500): (57.74, 0.27), ("agem", 500): (22.67, 0.57), ("icarl", 500): (47.55, 3.95),
                    ("der", 500): (70.51, 1.67), ("derpp", 500): (72.70, 1.36)},
    "seq-tinyimagenet": {("joint", None): (59.99, None), ("er", 500): (9.99, None), ("der", 500): (17.75, None),
                         ("derpp", 500): (19.38, None)},
    "seq-cifar100": {("er", 500): (22.10, None), ("er", 2000): (38.58, None), ("er_ace", 500): (38.75, None),
                     ("er_ace", 2000): (49.72, None), ("icarl", 500): (46.52, None), ("icarl", 2000): (49.82, None),
                     ("derpp", 500): (38.25, None), ("derpp", 2000): (53.63, None)},
}
# seq-MNIST (S-MNIST, Class-IL), 10 runs, means only: the results table of the authors' README at the DER paper's
# code, aimagelab/mammoth commit 7ab9db97e3b5df6e1d9974468c7958f5c07696e1, README.md "Continual Learning Results";
# its S-CIFAR-10 and S-Tiny-ImageNet columns equal the paper's Table 2 as quoted above, digit for digit. The paper
# itself could not be read here (the stored copies the search tool finds return only their opening pages).
DER_README = "Buzzega et al. 2020 (DER), the authors' results table (aimagelab/mammoth 7ab9db9, README.md)"
PUBLISHED["seq-mnist"] = {
    ("joint", None): (95.57, None), ("naive", None): (19.60, None), ("si", None): (19.27, None),
    ("lwf", None): (19.62, None),
    ("er", 200): (80.43, None), ("agem", 200): (45.72, None), ("icarl", 200): (70.51, None),
    ("der", 200): (84.55, None), ("derpp", 200): (85.61, None),
    ("er", 500): (86.12, None), ("agem", 500): (46.66, None), ("icarl", 500): (70.10, None),
    ("der", 500): (90.54, None), ("derpp", 500): (91.00, None)}  # 5120: in the same table, not in the ledger's rows
PUBLISHED["seq-fashion-mnist"] = {}  # the DER line publishes no Fashion-MNIST table
SOURCES = {"seq-cifar10": DER_TABLE, "seq-tinyimagenet": DER_TABLE, "seq-cifar100": XDER_TABLE,
           "seq-mnist": DER_README, "seq-fashion-mnist": ""}


def best_row(protocol: str, strategy: str, buffer: Optional[int]) -> Optional[Row]:
    """(training settings, hyperparameters incl. memory_size) of `strategy` at `buffer`, None if not published."""
    rows = BEST[protocol]
    if (strategy, None) in rows:
        return rows[(strategy, None)]
    row = rows.get((strategy, buffer))
    if row is None:
        return None
    return dict(row[0]), {**row[1], "memory_size": buffer}


def _protocol(name: str, model: str, epochs: int, **train) -> Protocol:
    """The benchmark's protocol: the shared settings, and each method's BEST rows as method_settings, chosen by the
    run's memory_size (-1: methods without a memory)."""
    settings: Dict[str, Dict[int, dict]] = {}
    for (strategy, buffer), (row_train, hparams) in BEST[name].items():
        settings.setdefault(strategy, {})[-1 if buffer is None else buffer] = {**row_train, **hparams}
    return Protocol(model=model, epochs=epochs, batch_size=32, lr=0.1, optimizer="sgd", reset_optimizer=True,
                    augment="crop-flip", method_settings=settings, **train)


SEQ_CIFAR10 = _protocol("seq-cifar10", "resnet18", 50)
SEQ_TINYIMAGENET = _protocol("seq-tinyimagenet", "resnet18", 100)
SEQ_CIFAR100 = _protocol("seq-cifar100", "resnet18", 50, lr_schedule="multistep", lr_milestones=(35, 45),
                         lr_gamma=0.1)  # mammoth datasets/seq_cifar100.py: MultiStepLR([35, 45], gamma=0.1)


def _split(key: str, data_root: str, classes_per_task: int, n_tasks: int, setting: str, name: str):
    from .scenarios import split

    data = datasets.load(key, data_root or None)
    return split(data, classes_per_task, n_tasks=n_tasks or None, setting=setting, name=name)


@register_benchmark("seq-cifar10", protocol=SEQ_CIFAR10, source=datasets.describe("cifar10"),
                    available=lambda root=None: datasets.available("cifar10", root),
                    description="DER protocol: CIFAR-10 in 5 tasks of 2 classes, class-incremental, ResNet-18, 50 "
                                "epochs, batch 32, SGD, crop+flip (Buzzega et al. 2020)")
def seq_cifar10(data_root: str = "", setting: str = "class", n_tasks: int = 5):
    return _split("cifar10", data_root, 2, n_tasks, setting, "seq-cifar10")


@register_benchmark("seq-cifar100", protocol=SEQ_CIFAR100, source=datasets.describe("cifar100"),
                    available=lambda root=None: datasets.available("cifar100", root),
                    description="X-DER protocol: CIFAR-100 in 10 tasks of 10 classes, class-incremental, ResNet-18, "
                                "50 epochs, batch 32, SGD, crop+flip (Boschini et al. 2022)")
def seq_cifar100(data_root: str = "", setting: str = "class", n_tasks: int = 10):
    return _split("cifar100", data_root, 10, n_tasks, setting, "seq-cifar100")


def _buffers(**by_size) -> dict:
    return {int(k[1:]): v for k, v in by_size.items()}


SEQ_MNIST = Protocol(  # the DER paper's seq-MNIST protocol (module docstring)
    model="xavier_mlp", hidden=(100, 100), epochs=1, batch_size=10, lr=0.03, optimizer="sgd", reset_optimizer=True,
    method_settings={
        "naive": {-1: {"lr": 0.03}},
        "si": {-1: {"lr": 0.1, "c": 1.0, "xi": 0.9}},
        "ewc": {-1: {"lr": 0.03, "ewc_lambda": 10.0, "online": True, "gamma": 1.0}},
        "lwf": {-1: {"lr": 0.03, "alpha": 1.0, "temperature": 2.0}},
        "er": _buffers(b200={"lr": 0.01, "minibatch_size": 10}, b500={"lr": 0.1, "minibatch_size": 10},
                       b5120={"lr": 0.1, "minibatch_size": 10}),
        "er_ace": _buffers(b200={"lr": 0.01, "minibatch_size": 10}, b500={"lr": 0.1, "minibatch_size": 10},
                           b5120={"lr": 0.1, "minibatch_size": 10}),
        "agem": {k: {"lr": 0.1, "sample_size": 128} for k in (200, 500, 5120)},
        "der": _buffers(b200={"lr": 0.03, "minibatch_size": 10, "alpha": 0.2},
                        b500={"lr": 0.03, "minibatch_size": 128, "alpha": 1.0},
                        b5120={"lr": 0.1, "minibatch_size": 128, "alpha": 0.5}),
        "derpp": _buffers(b200={"lr": 0.03, "minibatch_size": 128, "alpha": 0.2, "beta": 1.0},
                          b500={"lr": 0.03, "minibatch_size": 10, "alpha": 1.0, "beta": 0.5},
                          b5120={"lr": 0.1, "minibatch_size": 64, "alpha": 0.2, "beta": 0.5}),
        "icarl": {k: {"lr": 0.1, "minibatch_size": 10} for k in (200, 500, 5120)},
        "gdumb": {-1: {"fit_epochs": 128, "cutmix_prob": 0.0}},  # the GDumb authors' MNIST runs (scripts/replicate.sh)
    })



def per_class_subset(stream, n: int, seed: int = 0):
    """Each task keeps n training examples per class, drawn once by a fixed seed (test data unchanged)."""
    import torch

    if n < 1:
        raise ValueError(f"train_per_class must be >= 1 (or 0 for all), got {n}")
    gen, tasks = torch.Generator().manual_seed(seed), []
    for t in stream.tasks:
        keep = []
        for c in t.train_y.unique().tolist():
            rows = (t.train_y == c).nonzero().squeeze(1)
            keep.append(rows[torch.randperm(len(rows), generator=gen)[:n]])
        keep = torch.cat(keep).sort().values
        tasks.append(t.with_splits(train=t.examples("train").take(keep)))  # rows of the same stored data
    out = type(stream)(stream.name, tasks, list(stream.head_sizes), stream.setting, stream.input_shape,
                       {**{k: v for k, v in stream.info.items() if k != "_validated"}, "train_per_class": n})
    return out


def _register_seq_mnist(key: str, label: str, name: str):
    @register_benchmark(name, protocol=SEQ_MNIST, source=datasets.describe(key),
                        available=lambda root=None: datasets.available(key, root),
                        description=f"DER protocol: {label} in 5 class-incremental tasks of 2 classes, MLP 100-100, "
                                    f"1 epoch, batch 10, SGD, per-method lr by memory size (Buzzega et al. 2020)")
    def factory(data_root: str = "", setting: str = "class", n_tasks: int = 5, train_per_class: int = 0):
        """train_per_class > 0: that many training examples of each class (a fixed draw, the same for every run and
        seed), to scale the protocol down; 0 keeps them all."""
        stream = _split(key, data_root, 2, n_tasks, setting, name)
        return per_class_subset(stream, train_per_class) if train_per_class else stream


def _rows_of(settings: Dict[str, Dict[int, dict]]) -> Dict[Tuple[str, Optional[int]], Row]:
    """BEST's rows from a protocol's method_settings (-1: no memory): the lr and weight decay are training
    settings, the rest the strategy's hyperparameters."""
    rows = {}
    for strategy, by_size in settings.items():
        for size, values in by_size.items():
            train = {k: v for k, v in values.items() if k in ("lr", "weight_decay")}
            rows[(strategy, None if size == -1 else size)] = (train, {k: v for k, v in values.items()
                                                                     if k not in train})
    return rows


BEST["seq-mnist"] = BEST["seq-fashion-mnist"] = _rows_of(SEQ_MNIST.method_settings)
_register_seq_mnist("mnist", "MNIST", "seq-mnist")
_register_seq_mnist("fashion-mnist", "Fashion-MNIST", "seq-fashion-mnist")


@register_benchmark("seq-tinyimagenet", protocol=SEQ_TINYIMAGENET,
                    available=lambda root=None: (datasets.resolve_root(root) / "tiny-imagenet-200").is_dir(),
                    source="the user's tiny-imagenet-200 folder (standard layout) under --data-root / "
                           "$CLFRAMEWORK_DATA, read by benchmarks/folders.py",
                    description="DER protocol: TinyImageNet in 10 tasks of 20 classes, 64 px, class-incremental, "
                                "ResNet-18, 100 epochs, batch 32, SGD, crop+flip (Buzzega et al. 2020)")
def seq_tinyimagenet(data_root: str = "", setting: str = "class", n_tasks: int = 10, classes_per_task: int = 20):
    """`classes_per_task` other than 20 is for small test folders; the protocol's tasks have 20 classes."""
    from .folders import split_tinyimagenet

    stream = split_tinyimagenet(datasets.resolve_root(data_root or None) / "tiny-imagenet-200", setting,
                                classes_per_task, n_tasks or None)
    stream.name = "seq-tinyimagenet"
    return stream
