"""One plain SGD step from a trained seq-cifar10 run's model, on k examples of its last task, and that task's
eval-mode task-IL accuracy after it: how a short final minibatch can leave a just-trained task at chance under
BatchNorm (docs/fidelity.md, "BatchNorm and a tiny final minibatch").

    python scripts/tiny_batch_step.py RUN_DIR --data-root DIR [--task 2] [--sizes 2,2,4,4,8,32]

The step is the reference code's (Mammoth's sgd.observe: train mode, net(x), cross-entropy, backward, SGD step at the
run's learning rate), on k examples drawn at random from the task's training split (seeded), each from a fresh copy
of the trained model. A batch of one class is normalized by its own statistics, which removes what tells the classes
apart: its loss is large, and so is its step.
"""
import argparse
import copy

import torch
import torch.nn.functional as F

import clframework
from clframework.benchmarks import make_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished run's folder (seq-cifar10 or another image benchmark)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--task", type=int, default=-1, help="the task to step on and score (default: the run's last)")
    p.add_argument("--sizes", default="2,4,8,32", help="minibatch sizes to try: for each, one step on examples drawn "
                   "from the whole task and one on examples of one class (each class in turn)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    trained = clframework.load(args.run)
    config = trained.config
    stream = make_benchmark(config["benchmark"] if "benchmark" in config else "seq-cifar10",
                            data_root=args.data_root)
    task = stream.tasks[args.task if args.task >= 0 else len(trained.tasks) - 1]
    classes = torch.tensor(task.classes)
    test, train = task.examples("test"), task.examples("train")
    x_test, y_test = task.inputs(test.raw(slice(0, len(test)))), test.y
    x_train, y_train = task.inputs(train.raw(slice(0, len(train)))), train.y

    @torch.no_grad()
    def task_il_accuracy(model) -> float:
        model.eval()
        out = torch.cat([model(x_test[i:i + 500], task.head) for i in range(0, len(x_test), 500)])
        return (classes[out[:, classes].argmax(1)] == y_test).float().mean().item()

    print(f"task {task.name}: task-IL accuracy of the trained model {task_il_accuracy(copy.deepcopy(trained.model)):.4f}")
    g = torch.Generator().manual_seed(args.seed)
    draws = []
    for k in (int(s) for s in args.sizes.split(",")):
        draws.append(torch.randperm(len(x_train), generator=g)[:k])
        for c in task.classes:
            of_c = torch.nonzero(y_train == c).flatten()
            draws.append(of_c[torch.randperm(len(of_c), generator=g)[:k]])
    for rows in draws:
        k = len(rows)
        model = copy.deepcopy(trained.model).train()
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
        loss = F.cross_entropy(model(x_train[rows], task.head), y_train[rows])
        loss.backward()
        opt.step()
        labels = sorted(set(y_train[rows].tolist()))
        print(f"k={k:3d} classes {labels}: loss {loss.item():.4f}, task-IL accuracy after the step "
              f"{task_il_accuracy(model):.4f}")


if __name__ == "__main__":
    main()
