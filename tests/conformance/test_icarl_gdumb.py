"""iCaRL and GDumb against reference steps written from their authors' code, through our Trainer, from the same
weights on the same minibatches and draws (harness.py), on the MLP and the BatchNorm ResNet. The mistakes these tests
must catch (herding on unnormalized features, the loss without the old model's targets, an evaluation that moves
BatchNorm statistics, GDumb's fit without clipping, cutmix, warm-up or augmentation...) are in scripts/mutants.py."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clframework import Trainer, make_strategy
from clframework.augment import CropFlip
from clframework.strategies import gdumb as gdumb_module

from .harness import Run, assert_conforms, make_model, make_stream, outputs, run_ours, snapshot

LR = 0.1


# ---- iCaRL ------------------------------------------------------------------------------------------------------

class ICaRLReference:
    """iCaRL as aimagelab/mammoth e75a491c models/icarl.py (observe, get_loss, end_task, compute_class_means,
    forward) and utils/buffer.py (icarl_replay, fill_buffer with use_herding and normalize_features): each task trains
    on its data followed by the buffer; the loss is BCE-with-logits over every output against one-hot labels whose
    first n_past columns are the old network's sigmoid outputs, plus wd * sum(theta^2); at the task's end the old
    network is an eval-mode copy, old classes keep the first samples_per_class of their buffer rows, new classes are
    chosen by herding on normalized eval-mode features (the chosen row's cost pushed up by 1e6); prediction is minus
    the squared distance of normalized features to the classes' normalized mean features (averaged with the flipped
    exemplars' with `flip`), all in eval mode."""

    def __init__(self, lr, memory_size, wd, flip, n_classes):
        self.lr, self.memory_size, self.wd, self.flip, self.n_classes = lr, memory_size, wd, flip, n_classes
        self.buf_x = self.buf_y = self.old_net = None
        self.task = self.n_past = 0

    def train_data(self, task):
        if self.buf_x is None:
            return task.train_x, task.train_y
        return torch.cat([task.train_x, self.buf_x]), torch.cat([task.train_y, self.buf_y])

    def observe(self, model, x, y):
        logits = None
        if self.task > 0:
            with torch.no_grad():
                logits = torch.sigmoid(outputs(self.old_net, x, 0))
        out = outputs(model, x, 0)
        targets = torch.eye(self.n_classes, dtype=out.dtype)[y]
        if self.task > 0:
            targets = torch.cat([logits[:, :self.n_past], targets[:, self.n_past:]], 1)
        loss = F.binary_cross_entropy_with_logits(out, targets)
        loss = loss + self.wd * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= self.lr * p.grad
                p.grad = None

    @torch.no_grad()
    def end_task(self, model, task):
        model.eval()
        self.old_net = copy.deepcopy(model)
        n_seen = self.n_past + len(task.classes)
        per_class = self.memory_size // n_seen
        xs, ys = [], []
        if self.buf_x is not None:
            for c in self.buf_y.unique():
                xs.append(self.buf_x[self.buf_y == c][:per_class])
                ys.append(self.buf_y[self.buf_y == c][:per_class])
        x, y = task.train_x, task.train_y
        feats = model.trunk(x)
        feats = feats / feats.norm(dim=1, keepdim=True)
        for c in y.unique():
            fc, xc = feats[y == c].clone(), x[y == c]
            mean = fc.mean(0, keepdim=True)
            running = torch.zeros_like(mean)
            for i in range(min(per_class, len(fc))):
                best = int((mean - (fc + running) / (i + 1)).norm(2, 1).argmin())
                xs.append(xc[best:best + 1])
                ys.append(y[y == c][best:best + 1])
                running += fc[best:best + 1]
                fc[best] = fc[best] + 1e6
        self.buf_x, self.buf_y = torch.cat(xs), torch.cat(ys)
        self.n_past, self.task = n_seen, self.task + 1
        model.train()

    @torch.no_grad()
    def scores(self, model, x):
        was = model.training
        model.eval()
        means = []
        for c in range(self.n_past):
            xc = self.buf_x[self.buf_y == c]
            f = model.trunk(xc)
            mean = (f / f.norm(dim=1, keepdim=True)).mean(0)
            if self.flip:
                g = model.trunk(xc.flip(-1))
                mean = (mean + (g / g.norm(dim=1, keepdim=True)).mean(0)) / 2
            means.append(mean / mean.norm())
        f = model.trunk(x)
        f = f / f.norm(dim=1, keepdim=True)
        pred = -(torch.stack(means)[None] - f[:, None]).pow(2).sum(2)
        model.train(was)
        return torch.cat([pred, pred.new_full((len(x), self.n_classes - self.n_past), float("-inf"))], 1)

    def memory(self):
        return {"x": self.buf_x, "y": self.buf_y}


def _scored(scores, stream):
    """Class-IL and task-IL accuracy of every task from a scoring function."""
    row, til, first = [], [], 0
    for task in stream.tasks:
        s, y, k = scores(task.test_x), task.test_y, len(task.classes)
        row.append((s.argmax(1) == y).double().mean().item())
        til.append(((s[:, first:first + k].argmax(1) + first) == y).double().mean().item())
        first += k
    return row, til


def run_icarl_reference(ref, model, stream, epochs=1, batch_size=4, seed=0):
    """The reference over the stream, each epoch's order drawn as the Trainer draws it (harness.run_reference), on
    the task's data joined by the buffer (Mammoth's icarl_replay)."""
    g = torch.Generator().manual_seed(seed)
    run = Run()
    model.train()
    for task in stream.tasks:
        x, y = ref.train_data(task)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                ref.observe(model, x[order[i:i + batch_size]], y[order[i:i + batch_size]])
        ref.end_task(model, task)
        row, til = _scored(lambda inputs: ref.scores(model, inputs), stream)
        run.accuracy.append(row)
        run.task_il.append(til)
        run.snapshots.append(snapshot(model, ref.memory()))
    return run


def exemplars_of(strategy):
    classes = sorted(strategy.exemplars)
    return {"x": torch.cat([strategy.exemplars[c] for c in classes]),
            "y": torch.cat([torch.full((len(strategy.exemplars[c]),), c) for c in classes])}


def check_icarl(model_kind, memory_size=12, wd=1e-3):
    flip = model_kind != "mlp"  # image inputs: the class means average each exemplar with its flip
    stream = make_stream("class", image=flip)
    initial = make_model(model_kind, stream)
    hp = {"memory_size": memory_size, "wd_reg": wd, "flip_means": flip}
    ours = run_ours(make_strategy("icarl", **hp), copy.deepcopy(initial), stream, lr=LR, memory_of=exemplars_of)
    ref = run_icarl_reference(ICaRLReference(LR, memory_size, wd, flip, stream.head_sizes[0]),
                              copy.deepcopy(initial), stream)
    assert_conforms(ours, ref)
    return ours, ref


@pytest.mark.parametrize("model_kind", ["mlp", "resnet"])
def test_icarl_conforms(model_kind):
    ours, _ = check_icarl(model_kind)
    assert max(ours.accuracy[-1]) > 0.5  # it learned something (chance: 1/6)
    assert len(ours.snapshots[-1].memory["y"]) == 12  # 2 per class after the last task


# ---- GDumb ------------------------------------------------------------------------------------------------------

class FitRecorder:
    """Wraps gdumb.fit_memory: keeps what each fit started from (weights, memory, the draws' states, the augmentation's
    state) and the model it returned."""

    def __init__(self, monkeypatch, augment=None):
        self.fits, self.augment = [], augment
        fit = gdumb_module.fit_memory

        def recording(model, raw, y, head, prepare, **kw):
            start = {"model": copy.deepcopy(model), "raw": raw.clone(), "y": y.clone(), "head": head.clone(),
                     "generator": kw["generator"].get_state(), "rng": copy.deepcopy(kw["rng"]),
                     "augment": None if augment is None else augment.state_dict()}
            fitted = fit(model, raw, y, head, prepare, **kw)
            self.fits.append((start, fitted))
            return fitted

        monkeypatch.setattr(gdumb_module, "fit_memory", recording)


def reference_fit(start, *, epochs, max_lr, min_lr, batch_size, momentum, weight_decay, clip, cutmix_alpha,
                  cutmix_prob, image_shape=None):
    """GDumb's training on the memory as drimpossible/GDumb 4f412d7 src/main.py (experiment, train) and src/utils.py
    (cutmix_data, rand_bbox): SGD(momentum, weight_decay) with CosineAnnealingWarmRestarts(T_0=1, T_mult=2,
    eta_min); epoch 0 at maxlr / 10, epoch 1 at maxlr, later epochs after one scheduler step each; per minibatch
    cutmix with probability cutmix_prob (lam ~ Beta(alpha, alpha), a permutation, the box centre drawn over size[2]
    then size[3], lam corrected to the pasted area), cross-entropy mixed by lam, gradients clipped to norm `clip`
    (written out here), a step. The draws (each epoch's order and the memory's augmentation, the cutmix numbers) come
    from the recorded states, in the authors' order. Returns the model and how often cutmix and clipping acted."""
    model = copy.deepcopy(start["model"])
    g = torch.Generator()
    g.set_state(start["generator"])
    rng = copy.deepcopy(start["rng"])
    augment = None
    if start["augment"] is not None:
        augment = CropFlip(image_shape)
        augment.load_state_dict(start["augment"])
    raw, y = start["raw"], start["y"]
    opt = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=min_lr)
    mixed = clipped = 0
    for epoch in range(epochs):
        if epoch <= 0:
            for group in opt.param_groups:
                group["lr"] = max_lr * 0.1
        elif epoch == 1:
            for group in opt.param_groups:
                group["lr"] = max_lr
        else:
            scheduler.step()
        model.train()
        order = torch.randperm(len(y), generator=g)
        inputs = raw[order] if augment is None else augment(raw[order])
        for i in range(0, len(y), batch_size):
            x, labels = inputs[i:i + batch_size].clone(), y[order[i:i + batch_size]]
            do_cutmix = x.dim() == 4 and rng.random() < cutmix_prob
            if do_cutmix:
                lam = rng.beta(cutmix_alpha, cutmix_alpha)
                index = torch.from_numpy(rng.permutation(len(x)))
                W, H = x.size(2), x.size(3)
                cut_rat = np.sqrt(1. - lam)
                cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
                cx, cy = rng.integers(W), rng.integers(H)
                bbx1, bby1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H)
                bbx2, bby2 = np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H)
                x[:, :, bbx1:bbx2, bby1:bby2] = x[index, :, bbx1:bbx2, bby1:bby2]
                lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (x.size()[-1] * x.size()[-2]))
                out = outputs(model, x, 0)
                loss = lam * F.cross_entropy(out, labels) + (1 - lam) * F.cross_entropy(out, labels[index])
                mixed += 1
            else:
                loss = F.cross_entropy(outputs(model, x, 0), labels)
            opt.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.sqrt(sum(gr.pow(2).sum() for gr in grads))
            if norm > clip:
                clipped += 1
                for gr in grads:
                    gr.mul_(clip / (norm + 1e-6))
            opt.step()
    return model.eval(), mixed, clipped


GDUMB = {"memory_size": 10, "fit_epochs": 6, "fit_lr": 0.05, "fit_min_lr": 5e-4, "fit_batch_size": 4,
         "fit_momentum": 0.9, "fit_weight_decay": 1e-3, "fit_clip": 1.0, "cutmix_alpha": 1.0, "cutmix_prob": 0.5}


def check_gdumb(monkeypatch, model_kind, **hp):
    """Our GDumb through our Trainer (with the crop-flip augmentation on images) and each of its fits against the
    reference fit from the same start; the accuracy matrix against the reference models' own scores."""
    hp = {**GDUMB, **hp}
    image = model_kind != "mlp"
    stream = make_stream("class", image=image)
    augment = CropFlip(stream.input_shape, seed=3) if image else None
    recorder = FitRecorder(monkeypatch, augment)
    strategy = make_strategy("gdumb", **hp)
    result = Trainer(make_model(model_kind, stream), strategy, epochs=1, batch_size=4, lr=LR, optimizer="sgd",
                     device="cpu", quiet=True, augment=augment).fit(stream)
    ours, ref, counts = Run(), Run(), []
    for start, fitted in recorder.fits:
        model, mixed, clipped = reference_fit(
            start, epochs=hp["fit_epochs"], max_lr=hp["fit_lr"], min_lr=hp["fit_min_lr"],
            batch_size=hp["fit_batch_size"], momentum=hp["fit_momentum"], weight_decay=hp["fit_weight_decay"],
            clip=hp["fit_clip"], cutmix_alpha=hp["cutmix_alpha"], cutmix_prob=hp["cutmix_prob"],
            image_shape=stream.input_shape)
        counts.append((mixed, clipped))
        memory = {"x": start["raw"], "y": start["y"]}
        ours.snapshots.append(snapshot(fitted, memory))
        ref.snapshots.append(snapshot(model, memory))
        with torch.no_grad():
            row = [(outputs(model, t.test_x, 0).argmax(1) == t.test_y).double().mean().item() for t in stream.tasks]
        ref.accuracy.append(row)
    ours.accuracy = result.accuracy_matrix[-len(recorder.fits):]
    assert_conforms(ours, ref)
    return result, recorder, counts


@pytest.mark.parametrize("model_kind", ["mlp", "resnet"])
def test_gdumb_fit_conforms(monkeypatch, model_kind):
    result, recorder, counts = check_gdumb(monkeypatch, model_kind)
    assert len(recorder.fits) == 3  # a fit after every task
    assert all(clipped for _, clipped in counts)  # clipping acted, so a fit without it would differ
    if model_kind == "resnet":
        assert all(mixed for mixed, _ in counts)  # cutmix acted on image minibatches
        first, second = (start["augment"]["generator"] for start, _ in recorder.fits[:2])
        assert not torch.equal(first, second)  # the memory went through the augmentation
    assert max(result.accuracy_matrix[-1]) > 0.3  # it learned something (chance: 1/6)


def test_gdumb_fits_once_after_the_last_task(monkeypatch):
    result, recorder, _ = check_gdumb(monkeypatch, "mlp", fit_after="last")
    assert len(recorder.fits) == 1 and len(result.accuracy_matrix) == 3
    assert result.accuracy_matrix[0] == result.accuracy_matrix[1] == result.initial_accuracy  # untrained rows
