"""Where a penalized SI step spends its time, phase by phase, on the bench's MLP (784-256-256-2, minibatch 64, Adam,
one thread): forward+backward, SI's hook before the optimizer step, Adam's step, SI's hook after it, zero_grad.
Its bookkeeping as shipped (fused `torch._foreach_*` ops) against the same bookkeeping compiled by torch.compile
(one fused loop per parameter before and after the step, inductor's C++ on CPU), checked equal first.
`python scripts/si_step_profile.py` (needs a C++ compiler for the compiled variant)."""
import statistics
import time

import torch
import torch.nn.functional as F

from clframework.plugin import make_strategy

PHASES = ("forward+backward", "before step", "adam step", "after step", "zero_grad")


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 2))


def compiled_hooks(si):
    """SI's two hooks (Eq. 3 and Eq. 4's gradient) as one compiled loop each."""
    c = si.c

    def before(params, grads, Omega, Omega_ref, snapshot, task_grad):
        for p, g, o, r, s, t in zip(params, grads, Omega, Omega_ref, snapshot, task_grad):
            s.copy_(p)
            t.copy_(g)
            g.add_(2 * c * (o * p) - 2 * c * r)

    def after(params, snapshot, task_grad, omega):
        for p, s, t, w in zip(params, snapshot, task_grad, omega):
            w.add_(t * (s - p))

    before, after = torch.compile(before), torch.compile(after)

    def hook_before(m):
        plan = si._plan(m)
        with torch.no_grad():
            before(plan.params, [p.grad for p in plan.params], plan.pen_Omega, plan.pen_Omega_ref, plan.before,
                   plan.pen_task_grad)

    def hook_after(m):
        plan = si._plan(m)
        with torch.no_grad():
            after(plan.params, plan.before, plan.pen_task_grad, plan.omega)

    return hook_before, hook_after


def penalized(x, y):
    """A model, its Adam and an SI strategy after one task: every weight penalized, as from the second task on."""
    m = model()
    opt, si = torch.optim.Adam(m.parameters(), 1e-3), make_strategy("si", c=0.1)
    si.on_task_start(m, 0)
    train(m, opt, x, y, 100, si.on_before_step, si.on_after_step, {})
    si.on_task_end(m)
    si.on_task_start(m, 1)
    return m, opt, si


def train(m, opt, x, y, steps, before, after, times, gen=None):
    for _ in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(y), (64,), generator=gen)
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        t1 = time.perf_counter()
        before(m)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        after(m)
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times.setdefault(phase, []).append(dt)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(12000, 784), torch.randint(0, 2, (12000,))
    (m1, o1, s1), (m2, o2, s2) = penalized(x, y), penalized(x, y)
    fused_before, fused_after = compiled_hooks(s2)
    train(m1, o1, x, y, 30, s1.on_before_step, s1.on_after_step, {}, torch.Generator().manual_seed(1))
    train(m2, o2, x, y, 30, fused_before, fused_after, {}, torch.Generator().manual_seed(1))  # compiles
    diff = max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))
    omega = max((s1.omega[n] - s2.omega[n]).abs().max().item() / s1.omega[n].abs().max().item() for n in s1.omega)
    print(f"compiled against foreach after 30 steps: weights differ by at most {diff:.1e}, omega by {omega:.1e} "
          f"(relative): float32 round-off of another summation order")
    for rep in range(3):
        for name, (m, o, hb, ha) in (("foreach (shipped)", (m1, o1, s1.on_before_step, s1.on_after_step)),
                                     ("torch.compile", (m2, o2, fused_before, fused_after))):
            times = {}
            train(m, o, x, y, 500, hb, ha, times)
            ms = {p: 1e3 * statistics.median(v) for p, v in times.items()}
            print(f"{name:<18} " + ", ".join(f"{p} {v:.3f}" for p, v in ms.items()) +
                  f" ms; SI's hooks {ms['before step'] + ms['after step']:.3f} of {sum(ms.values()):.3f} ms")
