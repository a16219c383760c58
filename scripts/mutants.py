"""Mutation check of the conformance suite (tests/conformance): plausible mistakes in each method, applied one at a
time in memory (monkeypatched functions and methods of the imported modules; no file is edited), each running the
conformance tests of its method in this process. A mutant is killed when a test fails; a survivor means the suite
cannot tell that mistake from the method. Prints the table; exits 1 on a survivor (or an unkilled baseline failure).

    python scripts/mutants.py              # every mutant (a baseline run of the selected tests first)
    python scripts/mutants.py --list       # the mutants, without running them
    python scripts/mutants.py --only si    # the mutants whose method or name contains "si"

A mutant whose target code or conformance test file is not in this checkout is reported 'pending' (not run).
Tests run on one torch thread (float64 convolutions; deterministic on CPU whatever the count).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
REG = "tests/conformance/test_regularizers.py"


@dataclass
class Mutant:
    method: str
    name: str
    tests: str      # the conformance test file of the method
    select: str     # pytest -k expression: the cases that run (the MLP unless the mistake needs BatchNorm)
    apply: Callable[[contextlib.ExitStack], None]  # installs the patches on the stack; raises LookupError if absent


MUTANTS: List[Mutant] = []


def mutant(method: str, name: str, tests: str, select: str):
    def deco(fn):
        MUTANTS.append(Mutant(method, name, tests, select, fn))
        return fn
    return deco


def patch(stack: contextlib.ExitStack, owner, attr: str, new) -> None:
    if not hasattr(owner, attr):
        raise LookupError(f"{getattr(owner, '__name__', owner)}.{attr}")
    stack.enter_context(mock.patch.object(owner, attr, new))


def wrap_method(stack, cls, attr, before=None, after=None):
    """cls.attr with `before(self, *args)` run first and `after(self, result, *args)` run after it."""
    original = getattr(cls, attr)

    def method(self, *args, **kwargs):
        if before is not None:
            before(self, *args)
        result = original(self, *args, **kwargs)
        return result if after is None else after(self, result, *args)

    patch(stack, cls, attr, method)


@contextlib.contextmanager
def no_eval(model):
    """`model.eval()` does nothing while inside (the mistake of forgetting it): the model stays in train mode."""
    model.train()
    model.eval = lambda: model
    try:
        yield
    finally:
        del model.eval


def stays_in_train_mode(stack, module, fn_name: str) -> None:
    """module.fn_name(model, ...) run with the model left in train mode (eval() forgotten)."""
    original = getattr(module, fn_name)

    def mutated(model, *args, **kwargs):
        with no_eval(model):
            return original(model, *args, **kwargs)

    patch(stack, module, fn_name, mutated)


def moves_running_stats(stack, module, fn_name: str) -> None:
    """module.fn_name(model, batches, head, ...) preceded by train-mode forwards over the same batches: the side effect
    of an importance pass that forgets eval() (BatchNorm's running statistics move; the vectorized per-example
    gradients themselves need eval mode)."""
    import torch
    from clframework.models import forward_head
    original = getattr(module, fn_name)

    def mutated(model, batches, head=0, *args, **kwargs):
        batches = list(batches)
        model.train()
        with torch.no_grad():
            for x, _ in batches:
                forward_head(model, x, head)
        return original(model, batches, head, *args, **kwargs)

    patch(stack, module, fn_name, mutated)


def summed_not_averaged(stack, module, fn_name: str) -> None:
    """module.fn_name(model, batches, ...) -> {name: mean} returning sums over the examples instead."""
    original = getattr(module, fn_name)

    def mutated(model, batches, *args, **kwargs):
        count = [0]

        def counting():
            for x, y in batches:
                count[0] += len(x)
                yield x, y

        out = original(model, counting(), *args, **kwargs)
        return {n: t * count[0] for n, t in out.items()}

    patch(stack, module, fn_name, mutated)


# ---- naive and the trainer -----------------------------------------------------------------------------------------

@mutant("naive", "stale gradients: the optimizer's zero_grad skipped", REG, "naive and mlp")
def _(stack):
    import torch
    patch(stack, torch.optim.SGD, "zero_grad", lambda self, set_to_none=True: None)


@mutant("naive", "each epoch's short last minibatch dropped", REG, "naive and mlp")
def _(stack):
    from clframework.benchmarks.stream import TensorExamples
    original = TensorExamples.minibatches

    def minibatches(self, order, start, batch_size, device, workers=0):
        return (b for b in original(self, order, start, batch_size, device, workers) if len(b[1]) == batch_size)

    patch(stack, TensorExamples, "minibatches", minibatches)


@mutant("naive", "evaluation in train mode (BatchNorm batch statistics, running statistics moved)", REG,
        "naive[resnet-task]")
def _(stack):
    from clframework.evaluation import evaluator
    stays_in_train_mode(stack, evaluator, "task_accuracy")


# ---- the bounds ----------------------------------------------------------------------------------------------------

@mutant("cumulative", "each task trained on its own data only", REG, "cumulative and mlp")
def _(stack):
    from clframework.strategies.cumulative import Cumulative
    patch(stack, Cumulative, "task_data", lambda self, stream, i: stream.tasks[i])


@mutant("cumulative", "the union taken in reverse task order", REG, "cumulative and mlp")
def _(stack):
    from clframework.strategies import cumulative
    patch(stack, cumulative.Cumulative, "task_data",
          lambda self, stream, i: cumulative.union(stream.tasks[:i + 1][::-1]))


@mutant("joint", "earlier tasks also trained (on the data so far)", REG, "joint and mlp")
def _(stack):
    from clframework.strategies import cumulative
    patch(stack, cumulative.Joint, "task_data", lambda self, stream, i: cumulative.union(stream.tasks[:i + 1]))


@mutant("joint", "the last task left out of the union", REG, "joint and mlp")
def _(stack):
    from clframework.strategies import cumulative
    patch(stack, cumulative.Joint, "task_data", lambda self, stream, i:
          cumulative.union(stream.tasks[:-1]) if i == len(stream.tasks) - 1 else None)


# ---- EWC -----------------------------------------------------------------------------------------------------------

@mutant("ewc", "empirical Fisher (true labels) instead of the exact one", REG, "ewc and mlp and exact")
def _(stack):
    from clframework.strategies.ewc import EWC
    wrap_method(stack, EWC, "on_task_end", before=lambda self, *a: setattr(self, "fisher_kind", "empirical"))


@mutant("ewc", "penalty without the 1/2: lambda sum F (theta - theta*)^2", REG, "ewc and mlp and exact")
def _(stack):
    from clframework.strategies.ewc import EWC
    original = EWC.on_before_step

    def on_before_step(self, model):
        self.ewc_lambda *= 2
        try:
            original(self, model)
        finally:
            self.ewc_lambda /= 2

    patch(stack, EWC, "on_before_step", on_before_step)


@mutant("ewc", "Fisher summed over the examples, not averaged", REG, "ewc and mlp and exact")
def _(stack):
    from clframework.strategies import ewc
    summed_not_averaged(stack, ewc, "mean_over_examples")


@mutant("ewc", "only the latest task's Fisher and anchor kept", REG, "ewc and mlp and exact")
def _(stack):
    from clframework.strategies.ewc import EWC

    def keep_last(self, result, *args):
        self.fishers, self.anchors = self.fishers[-1:], self.anchors[-1:]
        self._rebuild_sums()

    wrap_method(stack, EWC, "on_task_end", after=keep_last)


@mutant("ewc", "anchor taken at the task's start instead of its end", REG, "ewc and mlp and exact")
def _(stack):
    from clframework.strategies.ewc import EWC

    def remember(self, model, task_index):
        self._start_weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    def swap_anchor(self, result, *args):
        self.anchors[-1] = {n: self._start_weights[n] for n in self.anchors[-1]}
        self._rebuild_sums()

    wrap_method(stack, EWC, "on_task_start", before=remember)
    wrap_method(stack, EWC, "on_task_end", after=swap_anchor)


@mutant("ewc", "Fisher pass in train mode: BatchNorm running statistics moved by it", REG, "ewc[resnet-task-exact]")
def _(stack):
    from clframework.strategies import ewc
    moves_running_stats(stack, ewc, "fisher_diagonal")


# ---- SI ------------------------------------------------------------------------------------------------------------

@mutant("si", "omega from the total (regularized) loss's gradient, not the task loss's", REG, "si and mlp")
def _(stack):
    from clframework.strategies.si import SI
    wrap_method(stack, SI, "on_before_step", before=lambda self, *a: setattr(self, "omega_from_total_loss", True))


@mutant("si", "Omega not clamped at zero", REG, "si and mlp")
def _(stack):
    from clframework.strategies.si import SI
    wrap_method(stack, SI, "on_task_end", before=lambda self, *a: setattr(self, "clamp", False))


@mutant("si", "penalty gradient without its factor 2 (c Omega d)", REG, "si and mlp")
def _(stack):
    from clframework.strategies.si import SI
    original = SI.on_before_step

    def on_before_step(self, model):
        self.c /= 2
        try:
            original(self, model)
        finally:
            self.c *= 2

    patch(stack, SI, "on_before_step", on_before_step)


@mutant("si", "importance over |Delta| + xi instead of Delta^2 + xi", REG, "si and mlp")
def _(stack):
    from clframework.strategies import si
    patch(stack, si, "importance", lambda omega, delta, xi: omega / (delta.abs() + xi))


@mutant("si", "path integral with the wrong sign (+g delta)", REG, "si and mlp")
def _(stack):
    from clframework.strategies.si import SI
    original = SI.on_after_step

    def on_after_step(self, model):
        before = {n: w.clone() for n, w in self.omega.items()}
        original(self, model)
        for n, w in self.omega.items():
            w.copy_(2 * before[n] - w)

    patch(stack, SI, "on_after_step", on_after_step)


# ---- MAS -----------------------------------------------------------------------------------------------------------

@mutant("mas", "no absolute value: signed gradients averaged", REG, "mas and not reduced")
def _(stack):
    import torch
    from torch.func import functional_call, grad, vmap
    from clframework.strategies import mas

    def closed_form(model, modules, x, y, head):
        out, used, inputs, outputs = mas.tapped_forward(model, modules, x, head)
        deltas = torch.autograd.grad(mas.output_sensitivity(out).sum(), outputs)
        return {m: (d.T @ a, d.sum(0)) for m, d, a in zip(used, deltas, inputs)}

    def per_example(model, params, x, y, head, memory_mb=256):
        buffers = dict(model.named_buffers())

        def sensitivity(p, xi):
            return mas.output_sensitivity(functional_call(model, (p, buffers), (xi.unsqueeze(0), head))).squeeze(0)

        return {n: g.sum(0) for n, g in vmap(grad(sensitivity), in_dims=(None, 0))(params, x).items()}

    patch(stack, mas, "_closed_form_batch", closed_form)
    patch(stack, mas, "_per_example_batch", per_example)


@mutant("mas", "importance summed over the examples, not averaged", REG, "mas and mlp")
def _(stack):
    from clframework.strategies import mas
    summed_not_averaged(stack, mas, "mean_over_examples")


@mutant("mas", "sensitivity of ||f(x)|| instead of ||f(x)||^2", REG, "mas and mlp")
def _(stack):
    from clframework.strategies import mas
    patch(stack, mas, "output_sensitivity", lambda out: out.pow(2).sum(-1).sqrt())


@mutant("mas", "Omega replaced at each task, not accumulated", REG, "mas and mlp")
def _(stack):
    from clframework.strategies.mas import MAS

    def replace(self, result, model, data, head=0):
        for n in self.omega:
            self.omega[n] = self.omega[n] - self._before.get(n, 0)

    wrap_method(stack, MAS, "on_task_end", before=lambda self, *a: setattr(
        self, "_before", {n: w.clone() for n, w in self.omega.items()}), after=replace)


@mutant("mas", "importance pass in train mode: BatchNorm running statistics moved by it", REG, "mas[resnet-task]")
def _(stack):
    from clframework.strategies import mas
    moves_running_stats(stack, mas, "mas_importance")


# ---- LwF -----------------------------------------------------------------------------------------------------------

@mutant("lwf", "no temperature (T = 1)", REG, "lwf and mlp")
def _(stack):
    from clframework.strategies import lwf
    original = lwf.distillation_loss
    patch(stack, lwf, "distillation_loss", lambda logits, old, temperature: original(logits, old, 1.0))


@mutant("lwf", "Hinton's T^2 factor on the distillation term (not in Li & Hoiem's code)", REG, "lwf and mlp")
def _(stack):
    from clframework.strategies import lwf
    original = lwf.distillation_loss
    patch(stack, lwf, "distillation_loss",
          lambda logits, old, temperature: temperature ** 2 * original(logits, old, temperature))


@mutant("lwf", "class-IL: every output of the head distilled (new classes included)", REG, "lwf and mlp and class")
def _(stack):
    from clframework.strategies.lwf import LwF
    patch(stack, LwF, "_outputs", lambda self, head, out, device: out)


@mutant("lwf", "teacher in train mode (BatchNorm batch statistics, its running statistics moved)", REG,
        "lwf[resnet-task]")
def _(stack):
    from clframework.strategies.lwf import LwF
    wrap_method(stack, LwF, "on_task_end", after=lambda self, result, *a: self._old.train())


# ---- the rehearsal family (tests by conf-rehearsal: stream_rehearsal, replay_agem) ---------------------------------

REH = "tests/conformance/test_stream_rehearsal.py"
EPI = "tests/conformance/test_replay_agem.py"


@mutant("er", "two means summed: CE(incoming) + CE(memory sample)", REH, "[er- and mlp")
def _(stack):
    import torch.nn.functional as F
    from clframework.strategies.er import ER

    def task_loss(self, model, batch):
        return sum(F.cross_entropy(batch.out[a:b], batch.y[a:b]) for a, b in self.rows)

    patch(stack, ER, "task_loss", task_loss)


@mutant("er", "reservoir index off by one: j ~ U{0..i-1} instead of U{0..i}", REH, "[er- and mlp")
def _(stack):
    import torch
    from clframework.strategies import memory

    def off_by_one(seen, incoming, capacity, generator):
        count = torch.arange(seen, seen + incoming, dtype=torch.long)
        draw = (torch.rand(incoming, generator=generator, dtype=torch.float64) * count).long()
        slot = torch.where(count < capacity, count, draw)
        keep = slot < capacity
        slot, index = slot[keep], torch.arange(incoming)[keep]
        last = torch.full((capacity,), -1, dtype=torch.long).scatter_reduce_(0, slot, torch.arange(len(slot)), "amax")
        won = last[last >= 0]
        return slot[won], index[won]

    patch(stack, memory, "reservoir_slots", off_by_one)


@mutant("der", "logits stored after the optimizer step (not the training forward's)", REH, "[der- and mlp")
def _(stack):
    import torch
    from clframework.models import forward_heads
    from clframework.strategies.der import DER
    original = DER.on_after_step

    def on_after_step(self, model):
        if self.offer.get("logits") is not None:
            with torch.no_grad():
                self.offer["logits"] = forward_heads(model, self.offer["x"], self.offer["head"])
        original(self, model)

    patch(stack, DER, "on_after_step", on_after_step)


@mutant("der", "BatchNorm statistics from the joined batch (one forward pass over incoming + memory rows)", REH,
        "[der- and resnet")
def _(stack):
    from clframework.models import forward_heads
    from clframework.strategies.memory import SeparatePasses
    patch(stack, SeparatePasses, "forward", lambda self, model, batch, run=forward_heads: run(model, batch.x,
                                                                                              batch.head))


@mutant("derpp", "the same memory sample drawn twice (for the logit and the label terms)", REH, "[derpp- and mlp")
def _(stack):
    from clframework.strategies.memory import StreamRehearsal
    original = StreamRehearsal.replayed

    def replayed(self, batch, *sizes):
        draw, first = self.memory.draw, []
        self.memory.draw = lambda k: first[0] if first else first.append(draw(k)) or first[0]
        try:
            return original(self, batch, *sizes)
        finally:
            del self.memory.draw

    patch(stack, StreamRehearsal, "replayed", replayed)


@mutant("er_ace", "incoming mask without the classes not yet seen (present classes only)", REH,
        "[er_ace- and mlp and class")
def _(stack):
    from clframework.strategies import er_ace
    patch(stack, er_ace, "ace_mask", lambda now, seen: now)


@mutant("agem", "projection with the wrong sign (g + (g.r / r.r) r)", EPI, "[agem- and mlp")
def _(stack):
    from clframework.strategies import agem
    original = agem.agem_project

    def flipped(g, g_ref):
        out = original(g, g_ref)
        if not isinstance(out, (list, tuple)):
            return 2 * g - out
        return [o if o is None or gi is None else 2 * gi - o for o, gi in zip(out, g)]

    patch(stack, agem, "agem_project", flipped)


@mutant("derpp", "BatchNorm statistics from the joined batch (one forward pass over incoming + both samples)", REH,
        "[derpp- and resnet and class")
def _(stack):
    from clframework.models import forward_heads
    from clframework.strategies.memory import SeparatePasses
    patch(stack, SeparatePasses, "forward", lambda self, model, batch, run=forward_heads: run(model, batch.x,
                                                                                              batch.head))


@mutant("er_ace", "BatchNorm statistics from the joined batch (one forward pass over incoming + memory rows)", REH,
        "[er_ace- and resnet and class")
def _(stack):
    from clframework.models import forward_heads
    from clframework.strategies.memory import SeparatePasses
    patch(stack, SeparatePasses, "forward", lambda self, model, batch, run=forward_heads: run(model, batch.x,
                                                                                              batch.head))


@mutant("er_ace", "mask and replay from the first task in the task-based mode (Mammoth: from the second)", REH,
        "[er_ace- and mlp and class")
def _(stack):
    from clframework.strategies.er_ace import ERACE
    patch(stack, ERACE, "_asymmetric", lambda self: True)


@mutant("agem", "projection when g.g_ref > 0 instead of < 0", EPI, "[agem- and mlp and class")
def _(stack):
    from clframework.strategies import agem
    original = agem.agem_project

    def other_side(g, g_ref):
        flipped = [None if r is None else -r for r in g_ref] if isinstance(g_ref, (list, tuple)) else -g_ref
        return original(g, flipped)  # projects onto the plane of -g_ref: the same plane, the opposite condition

    patch(stack, agem, "agem_project", other_side)


@mutant("agem", "reference gradient in eval mode (BatchNorm running statistics instead of the sample's)", EPI,
        "[agem- and resnet and class")
def _(stack):
    from clframework.strategies import agem
    original = agem.grouped_loss

    def in_eval(model, *args):
        model.eval()
        try:
            return original(model, *args)
        finally:
            model.train()

    patch(stack, agem, "grouped_loss", in_eval)


@mutant("replay", "memory sample of half the minibatch's size", EPI, "[replay- and mlp and class")
def _(stack):
    from clframework.strategies.memory import ReplayMemory
    original = ReplayMemory.sample
    patch(stack, ReplayMemory, "sample", lambda self, k: original(self, max(1, k // 2)))


# ---- iCaRL and GDumb (tests by conf-icarl-gdumb) -------------------------------------------------------------------

IG = "tests/conformance/test_icarl_gdumb.py"


@mutant("icarl", "herding on unnormalized features", IG, "test_icarl_conforms and mlp")
def _(stack):
    import torch
    from clframework.models import penultimate
    from clframework.strategies.icarl import ICaRL

    def unnormalized(self, model, x):
        with torch.no_grad():
            return penultimate(model, x)

    patch(stack, ICaRL, "_features", unnormalized)


@mutant("icarl", "loss without the old model's targets (old classes' outputs pushed to 0)", IG,
        "test_icarl_conforms and mlp")
def _(stack):
    from clframework.strategies import icarl
    original = icarl.icarl_targets
    patch(stack, icarl, "icarl_targets", lambda y, width, n_past, old: original(y, width, n_past, None))


@mutant("gdumb", "the fit without gradient clipping", IG, "test_gdumb_fit_conforms and mlp")
def _(stack):
    import torch
    patch(stack, torch.nn.utils, "clip_grad_norm_", lambda params, clip, *a, **k: None)


@mutant("gdumb", "the fit without cutmix", IG, "test_gdumb_fit_conforms and resnet")
def _(stack):
    from clframework.strategies import gdumb
    patch(stack, gdumb, "cutmix_draw", lambda *args: None)


@mutant("icarl", "evaluation that moves BatchNorm statistics (a train-mode forward after the class means)", IG,
        "test_icarl_conforms and resnet")
def _(stack):
    import torch
    from clframework.strategies.icarl import ICaRL

    def after(self, scorer, model):
        with torch.no_grad():
            model(self.exemplars[0][:2], 0)
        return scorer

    wrap_method(stack, ICaRL, "eval_model", after=after)


@mutant("icarl", "weight penalty taken as an optimizer weight decay of wd_reg (half Mammoth's step)", IG,
        "test_icarl_conforms and mlp")
def _(stack):
    from clframework.strategies.icarl import ICaRL
    patch(stack, ICaRL, "penalty", lambda self, model: self.wd_reg / 2 * sum(p.pow(2).sum() for p in
                                                                             model.parameters()))


@mutant("icarl", "class means without the exemplars' flips", IG, "test_icarl_conforms and resnet")
def _(stack):
    from clframework.strategies import icarl
    original = icarl.class_means
    patch(stack, icarl, "class_means", lambda features, exemplars, n, flip: original(features, exemplars, n, False))


@mutant("gdumb", "the fit without its warm-up epoch (max lr from the start)", IG, "test_gdumb_fit_conforms and mlp")
def _(stack):
    from clframework.strategies import gdumb
    original = gdumb.sgdr_lr
    patch(stack, gdumb, "sgdr_lr", lambda epoch, lr, min_lr: lr if epoch == 0 else original(epoch, lr, min_lr))


@mutant("gdumb", "the memory fitted without the training augmentation", IG, "test_gdumb_fit_conforms and resnet")
def _(stack):
    from clframework.strategies.gdumb import GDumb
    patch(stack, GDumb, "on_prepare", lambda self, prepare: None)


# ---- running them --------------------------------------------------------------------------------------------------

class _Session:
    """A pytest plugin: one torch thread (set after the suite's conftest, which may give two), and the type of each
    exception a test raised (a mutant is killed by an AssertionError: a conformance check that failed)."""

    import pytest as _pytest

    def __init__(self):
        self.raised: List[str] = []

    @_pytest.hookimpl(trylast=True)
    def pytest_configure(self, config):
        import torch
        torch.set_num_threads(1)

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        yield
        if call.when == "call" and call.excinfo is not None:
            self.raised.append(call.excinfo.typename)


def run_tests(tests: str, select: str) -> Tuple[int, List[str]]:
    """(pytest's exit code, the exception types the tests raised) for the selected tests, run in this process."""
    import pytest
    args = [tests, "-k", select, "-x", "-q", "-n", "0", "-p", "no:cacheprovider", "--tb=no", "--no-header",
            "-W", "ignore"]
    session = _Session()
    with contextlib.redirect_stdout(io.StringIO()):
        return int(pytest.main(args, plugins=[session])), session.raised


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", default="", help="run the mutants whose method or name contains this text")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    chosen = [m for m in MUTANTS if args.only.lower() in f"{m.method} {m.name}".lower()]
    if args.list:
        for m in chosen:
            print(f"{m.method:12} {m.name}  [{m.tests} -k '{m.select}']")
        return 0
    start, cpu = time.perf_counter(), time.process_time()
    rows, failed = [], False
    baseline = {}
    for m in chosen:
        t0 = time.perf_counter()
        if not (ROOT / m.tests).exists():
            rows.append((m, "pending", f"no {m.tests}", 0.0))
            continue
        key = (m.tests, m.select)
        if key not in baseline:  # the unmutated code must pass the very tests that are to kill the mutant
            baseline[key] = run_tests(*key)[0]
        if baseline[key] != 0:
            rows.append((m, "BASELINE FAILS", f"pytest exit {baseline[key]} without the mutant", 0.0))
            failed = True
            continue
        with contextlib.ExitStack() as stack:
            try:
                m.apply(stack)
            except (LookupError, ImportError) as exc:
                rows.append((m, "pending", f"target not found: {exc}", 0.0))
                continue
            code, raised = run_tests(m.tests, m.select)
        # killed: a conformance assertion failed; a mutant that only crashes the tests is a broken mutant
        status = "SURVIVED" if code == 0 else "killed" if code == 1 and "AssertionError" in raised else \
            f"crashed ({', '.join(sorted(set(raised))) or f'pytest exit {code}'})"
        failed |= status != "killed"
        rows.append((m, status, f"-k '{m.select}'", time.perf_counter() - t0))
    print(f"| method | mutant | result | tests run | seconds |")
    print(f"|---|---|---|---|---|")
    for m, status, note, secs in rows:
        print(f"| {m.method} | {m.name} | {status} | {note} | {secs:.1f} |")
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("killed", "SURVIVED", "pending")}
    print(f"\n{counts['killed']} killed, {counts['SURVIVED']} survived, {counts['pending']} pending, "
          f"{len(rows) - sum(counts.values())} other, of {len(rows)} mutants over "
          f"{len({m.method for m, *_ in rows})} methods in {time.perf_counter() - start:.0f} s "
          f"({time.process_time() - cpu:.0f} CPU s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
