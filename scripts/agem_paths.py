"""Which way A-GEM's projection took on each step of the bench's protocol (split Fashion-MNIST, MLP 784-256-256,
batch 64, Adam, seed 0): from the unscaled dot products (`_project_unscaled`) or the scaled fallback, how many steps
had a conflict (g . g_ref < 0), and in how many g_ref . g_ref overflowed float32. Counts, not times.

    python scripts/agem_paths.py                    # REF_SCALE as it is (2^48)
    python scripts/agem_paths.py --ref-scale-log2 64  # the former 2^64
"""
import argparse
import math
from collections import Counter

import torch

from clframework import Trainer, make_strategy, mlp
from clframework.benchmarks import make_benchmark
from clframework.strategies import agem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-scale-log2", type=int, default=None, help="REF_SCALE = 2^this (default: the code's)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ref_scale_log2 is not None:
        agem.REF_SCALE = 2.0 ** args.ref_scale_log2
    counts = Counter(dict.fromkeys(("steps", "g_ref . g_ref overflowed float32", "conflicts (g . g_ref < 0)",
                                    "scaled fallback"), 0))
    unscaled, scaled = agem._project_unscaled, agem._project_scaled

    def counted_unscaled(gs, refs, both):
        counts["steps"] += 1
        norm2 = torch.stack(torch._foreach_powsum(refs, 2)).sum().item()
        counts["g_ref . g_ref overflowed float32"] += not math.isfinite(norm2)
        dot = sum(torch.dot(gs[j].reshape(-1), refs[j].reshape(-1)).double().item() for j in both)
        counts["conflicts (g . g_ref < 0)"] += dot < 0
        return unscaled(gs, refs, both)

    def counted_scaled(*a):
        counts["scaled fallback"] += 1
        return scaled(*a)

    agem._project_unscaled, agem._project_scaled = counted_unscaled, counted_scaled
    stream = make_benchmark("split-fashion-mnist")
    torch.manual_seed(0)
    model = mlp(784, stream.head_sizes, hidden=(256, 256))
    trainer = Trainer(model, make_strategy("agem"), epochs=args.epochs, batch_size=64, quiet=True, device="cpu",
                      seed=0)
    for i, task in enumerate(stream.tasks):
        trainer.train_task(task, i)
    print(f"REF_SCALE 2^{int(math.log2(agem.REF_SCALE))}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
