"""The CUDA path against the CPU: the same training, strategy state, exact Fisher, and checkpoints across devices.

Marked `cuda` and skipped where CUDA is absent (the CI machine); `scripts/gpu_check.sh` runs them on a GPU. Matrix
products run in full float32 on the GPU (TF32 off), so the two devices differ by float round-off only, which a few
dozen Adam steps keep at the 1e-5 level.
"""
import pytest
import torch

from clframework import Trainer, make_strategy, mlp
from clframework.benchmarks import from_tensors, permuted, split
from clframework.strategies.ewc import fisher_diagonal

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def full_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def data():
    """Learnable random data: 10 classes of 8x8 inputs, each a noisy copy of its class's random pattern."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 10
    x = (torch.rand(10, 1, 8, 8, generator=g)[y] + torch.rand(400, 1, 8, 8, generator=g)) / 2
    return from_tensors(x[:320], y[:320], x[320:], y[320:], "tiny")


STREAMS = {"permuted": lambda: permuted(data(), n_tasks=2, seed=0),  # one shared head, as in the paper's Sec. 5.2
           "split": lambda: split(data(), classes_per_task=5, setting="task")}  # multi-head


def close(cpu: torch.Tensor, other: torch.Tensor, rtol: float = 1e-3) -> None:
    """Equal up to float round-off grown over training: relative to the tensor's own scale."""
    assert not cpu.is_cuda
    scale = cpu.abs().max().item()
    torch.testing.assert_close(other.cpu(), cpu, rtol=rtol, atol=rtol * scale + 1e-7)


def train(stream, device, strategy, **hparams):
    torch.manual_seed(0)
    model = mlp(64, stream.head_sizes, hidden=(32, 32))
    trainer = Trainer(model, make_strategy(strategy, **hparams), epochs=2, batch_size=32, seed=0, quiet=True,
                      reset_optimizer=False, device=device)
    return trainer, trainer.fit(stream)


@pytest.mark.parametrize("kind", sorted(STREAMS))
@pytest.mark.parametrize("strategy,hparams", [("naive", {}), ("si", {"c": 0.1, "xi": 0.1}), ("ewc", {})])
def test_trainer_on_cuda_equals_cpu(kind, strategy, hparams):
    stream = STREAMS[kind]()
    cpu, res_cpu = train(stream, "cpu", strategy, **hparams)
    gpu, res_gpu = train(stream, "cuda", strategy, **hparams)
    assert next(gpu.model.parameters()).is_cuda
    for p, q in zip(cpu.model.parameters(), gpu.model.parameters()):
        close(p.detach(), q.detach())
    for task in stream:
        with torch.no_grad():
            close(cpu.model(task.test_x, task.head), gpu.model(task.test_x.cuda(), task.head))
    for row_cpu, row_gpu in zip(res_cpu.accuracy_matrix, res_gpu.accuracy_matrix):  # at most one flipped example
        assert max(abs(a - b) for a, b in zip(row_cpu, row_gpu)) <= 1 / len(stream[0].test_y) + 1e-9
    assert [c["loss"] for c in res_cpu.curves] == pytest.approx([c["loss"] for c in res_gpu.curves], rel=1e-4)


def test_si_state_on_cuda_matches_cpu():
    stream = STREAMS["permuted"]()
    cpu, _ = train(stream, "cpu", "si", c=0.1, xi=0.1)
    gpu, _ = train(stream, "cuda", "si", c=0.1, xi=0.1)
    a, b = cpu.strategy, gpu.strategy
    assert set(a.Omega) == set(b.Omega) and len(a.omega_history) == len(b.omega_history) == 2
    for n in a.Omega:
        assert b.Omega[n].is_cuda and b.reference[n].is_cuda
        close(a.Omega[n], b.Omega[n])
        close(a.reference[n], b.reference[n])
        assert (b.Omega[n] >= 0).all()  # clamped at zero after each task, as on the CPU
    for ha, hb in zip(a.omega_history, b.omega_history):  # each task's omega, kept on the CPU from either device
        for n in ha:
            close(ha[n], hb[n])


@pytest.mark.parametrize("method", ["auto", "per-sample"])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_exact_fisher_on_cuda_matches_cpu(method, kind):
    stream = STREAMS["split"]()
    torch.manual_seed(0)
    model = mlp(64, stream.head_sizes, hidden=(32, 32))
    task = stream[1]

    def fisher(device):
        m = model.to(device)
        batches = [(task.train_x[i:i + 64].to(device), task.train_y[i:i + 64].to(device))
                   for i in range(0, len(task.train_y), 64)]
        return fisher_diagonal(m, batches, head=task.head, kind=kind, method=method)

    on_cpu, on_gpu = fisher("cpu"), fisher("cuda")
    assert set(on_cpu) == set(on_gpu)
    for n in on_cpu:
        assert on_gpu[n].is_cuda
        close(on_cpu[n], on_gpu[n], rtol=1e-4)


def test_ewc_state_on_cuda_matches_cpu():
    stream = STREAMS["permuted"]()
    cpu, _ = train(stream, "cpu", "ewc")
    gpu, _ = train(stream, "cuda", "ewc")
    a, b = cpu.strategy, gpu.strategy
    assert len(a.fishers) == len(b.fishers) == 2
    for fa, fb, aa, ab in zip(a.fishers, b.fishers, a.anchors, b.anchors):
        for n in fa:
            assert fb[n].is_cuda
            close(fa[n], fb[n])
            close(aa[n], ab[n])


def test_checkpoint_written_on_cuda_resumes_on_cpu(tmp_path):
    """A mid-task checkpoint file written while training on the GPU (model, Adam, SI state, batch order, position)
    loads on the CPU, every tensor there, and the CPU finishes the stream as the GPU did."""
    from clframework.checkpoint import load_checkpoint, save_checkpoint

    stream = STREAMS["permuted"]()
    files = []

    def trainer(device, **kw):
        torch.manual_seed(0)
        return Trainer(mlp(64, stream.head_sizes, hidden=(32, 32)), make_strategy("si", c=0.1, xi=0.1), epochs=2,
                       batch_size=32, seed=0, quiet=True, reset_optimizer=False, device=device, **kw)

    gpu = trainer("cuda", checkpoint_every=5,
                  on_checkpoint=lambda state: files.append(save_checkpoint(tmp_path / f"{len(files)}.pt", state)))
    res_gpu = gpu.fit(stream)
    states = [load_checkpoint(f) for f in files]
    state = next(s for s in states if s["position"]["task"] == 1 and s["position"]["step"] > 0)  # inside task 2
    assert state["epoch_in_flight"] is not None and state["strategy"]["Omega"]

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    assert all(not t.is_cuda for t in tensors(state))
    cpu = trainer("cpu")
    res_cpu = cpu.fit(stream, resume=state)
    assert next(cpu.model.parameters()).device.type == "cpu"
    for p, q in zip(cpu.model.parameters(), gpu.model.parameters()):
        close(p.detach(), q.detach())
    for n, t in cpu.strategy.Omega.items():
        assert not t.is_cuda
        close(t, gpu.strategy.Omega[n])
    for row_cpu, row_gpu in zip(res_cpu.accuracy_matrix, res_gpu.accuracy_matrix):
        assert max(abs(a - b) for a, b in zip(row_cpu, row_gpu)) <= 1 / len(stream[0].test_y) + 1e-9


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_continual_eval_on_cuda_leaves_training_alone_and_never_waits_for_the_gpu(kind):
    """--eval-every on CUDA: the same weights as without (the evaluation draws nothing, changes nothing), and an
    evaluation point launches its kernels without a host synchronisation (torch's sync debug mode raises on one)."""
    stream = STREAMS[kind]()
    plain, _ = train(stream, "cuda", "er")
    torch.manual_seed(0)
    watched = Trainer(mlp(64, stream.head_sizes, hidden=(32, 32)), make_strategy("er"), epochs=2, batch_size=32,
                      seed=0, quiet=True, reset_optimizer=False, device="cuda", eval_every=3, eval_subset=40)
    res = watched.fit(stream)
    for p, q in zip(plain.model.parameters(), watched.model.parameters()):
        assert torch.equal(p, q)
    assert len(res.continual_eval["points"]) > 5
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = watched._evaluator.evaluate(watched.model, len(stream) - 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counts.is_cuda and counts.shape == (len(stream), 2)
