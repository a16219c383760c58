"""Why `clframework bench` pairs timings: an A/A test of this machine. Eight identical training loops (the bench's
MLP 784-256-256, minibatch 64, Adam, one thread) train in turn, in blocks of STEPS steps (a 2-epoch split
Fashion-MNIST task is 375), for SECONDS. Loop 0 is compared with loop j (j blocks later in each round, seconds
apart): the true ratio is 1. Printed per j: the median over rounds of the paired ratio (both halves of the rounds)
and the ratio of the two loops' fastest blocks. `python scripts/bench_pairing.py [SECONDS] [STEPS]`."""
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def loop():
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def train(model, opt, x, y, steps):
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def ratios(rounds, j):
    paired = [r[0] / r[j] for r in rounds]
    fastest = min(r[0] for r in rounds) / min(r[j] for r in rounds)
    return statistics.median(paired[0::2]), statistics.median(paired[1::2]), statistics.median(paired), fastest


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 375
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(12000, 784), torch.randint(0, 10, (12000,))
    loops, rounds = [loop() for _ in range(8)], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        times = []
        for model, opt in loops:
            start = time.perf_counter()
            train(model, opt, x, y, steps)
            times.append(time.perf_counter() - start)
        rounds.append(times)
    blocks = [t for r in rounds for t in r]
    print(f"{len(rounds)} rounds of 8 blocks of {steps} steps; a block took {min(blocks):.3f}-{max(blocks):.3f} s "
          f"(the machine's speed moved {max(blocks) / min(blocks):.2f}x)")
    for j in range(1, 8):
        even, odd, both, fastest = ratios(rounds, j)
        print(f"loop 0 / loop {j} ({j} blocks apart): paired median {both:.3f} (halves {even:.3f}, {odd:.3f}); "
              f"ratio of the fastest blocks {fastest:.3f}")
