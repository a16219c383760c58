"""CPU cost of LwF's distillation loss (forward + backward), the current form against the earlier
sum q (log q - log_softmax(z)) form, interleaved, best of 5 x 2000, one thread: `python scripts/lwf_loss_micro.py`."""
import time

import torch
import torch.nn.functional as F

from clframework.strategies.lwf import distillation_loss


def earlier_form(logits, old_logits, temperature):
    log_p, log_q = F.log_softmax(logits / temperature, -1), F.log_softmax(old_logits / temperature, -1)
    return (log_q.exp() * (log_q - log_p)).sum() / logits.shape[0]


def microseconds(loss, shape, n=2000):
    z, z_old = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            loss(z, z_old, 2.0).backward()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


if __name__ == "__main__":
    torch.set_num_threads(1)
    for shape in [(64, 1, 2), (64, 4, 2), (128, 4, 2)]:
        runs = [microseconds(f, shape) for f in (earlier_form, distillation_loss, earlier_form, distillation_loss)]
        print(f"{shape}: earlier {min(runs[0], runs[2]):.1f} us, now {min(runs[1], runs[3]):.1f} us")
