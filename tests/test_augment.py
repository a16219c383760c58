"""Per-example crop-and-flip augmentation: Kornia fed our generator's parameters, checked against a hand-made pad,
slice and flip; distinct per example; identical across a resume; applied to replayed examples too."""
import copy

import pytest
import torch
import torch.nn.functional as F

from clframework import Batch, Strategy, Trainer, join
from clframework.augment import CropFlip, make_augment
from clframework.benchmarks import Stream, Task
from clframework.models import MultiHeadNet, resnet_trunk


def reference_crop_flip(x, offsets, flips, padding):
    """The DER protocol's transform, one example at a time: zero-pad, cut the window at (x, y), maybe flip."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    out = []
    for i, (ox, oy) in enumerate(offsets.tolist()):
        crop = padded[i, :, oy:oy + h, ox:ox + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


def test_kornia_applies_our_parameters_exactly():
    aug = CropFlip((3, 8, 6), padding=2, seed=1)
    x = torch.randn(64, 3, 8, 6)
    params = aug.sample(len(x))
    assert torch.equal(aug.apply(x, params), reference_crop_flip(x, params["offsets"], params["flips"], 2))
    assert params["offsets"].min() >= 0 and params["offsets"].max() <= 4


def test_each_example_gets_its_own_parameters():
    aug = make_augment("crop-flip", (3, 32, 32), seed=0)
    x = torch.randn(1, 3, 32, 32).expand(256, 3, 32, 32).contiguous()  # one image, 256 times
    params = aug.sample(256)
    out = aug.apply(x, params)
    assert len({tuple(o) for o in params["offsets"].tolist()}) > 50  # 81 possible windows
    assert 0.35 < params["flips"].float().mean() < 0.65
    assert len({o.numpy().tobytes() for o in out}) > 50  # the outputs differ example by example
    assert make_augment("none", (3, 32, 32)) is None
    with pytest.raises(ValueError, match="augment must be one of"):
        make_augment("rotate", (3, 32, 32))
    with pytest.raises(ValueError, match="flat inputs"):
        make_augment("crop-flip", (784,))


def _stream():
    g = torch.Generator().manual_seed(0)
    tasks = [Task(f"t{i}", torch.randn(40, 3, 8, 8, generator=g), torch.arange(40) % 2,
                  torch.randn(10, 3, 8, 8, generator=g), torch.arange(10) % 2, (2 * i, 2 * i + 1), head=0)
             for i in range(2)]
    return Stream("tiny-images", tasks, [4], "class")


class RecordingReplay(Strategy):
    """Replays a few stored raw examples every step (through `batch.inputs`, as memories do) and records what the
    augmentation's generator state was just before, to recompute the expected replayed inputs."""

    def __init__(self, stored):
        self.stored, self.seen = stored, []

    def on_before_forward(self, model, batch: Batch) -> Batch:
        state = self.augment.generator.get_state()  # the trainer's augmentation, set by _trainer
        replayed = batch.inputs(self.stored)
        self.seen.append((state, replayed))
        return join(batch, replayed, torch.zeros(len(self.stored), dtype=torch.long), 0, raw=self.stored)


def _trainer(strategy, **kw):
    torch.manual_seed(0)
    model = MultiHeadNet(resnet_trunk(3, 4), 32, [4])
    strategy.augment = CropFlip((3, 8, 8), seed=5)
    return Trainer(model, strategy, epochs=2, batch_size=16, lr=0.05, optimizer="sgd", quiet=True,
                   augment=strategy.augment, **kw)


@pytest.mark.slow
def test_replayed_examples_are_augmented_like_incoming_ones():
    stored = torch.randn(6, 3, 8, 8)
    strategy = RecordingReplay(stored)
    _trainer(strategy).fit(_stream())
    assert len(strategy.seen) == 2 * 2 * 3
    for state, replayed in strategy.seen:
        again = CropFlip((3, 8, 8))
        again.generator.set_state(state)
        params = again.sample(len(stored))
        assert torch.equal(replayed, reference_crop_flip(stored, params["offsets"], params["flips"], 4))
        assert not torch.equal(replayed, stored)


@pytest.mark.slow
def test_resume_draws_the_same_augmentations():
    states = []
    whole = _trainer(RecordingReplay(torch.randn(6, 3, 8, 8)), checkpoint_every=4,
                     on_checkpoint=lambda s: states.append(copy.deepcopy(s)))
    whole.fit(_stream())
    mid = next(s for s in states if s["position"]["task"] == 1 and s["epoch_in_flight"] is not None)
    assert mid["augment"]["name"] == "crop-flip"
    resumed = _trainer(RecordingReplay(torch.randn(6, 3, 8, 8)))
    resumed.strategy.stored = whole.strategy.stored
    resumed.fit(_stream(), resume=mid)
    for (n, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    # the resumed run's replayed inputs are the tail of the original run's, bit for bit
    tail = whole.strategy.seen[-len(resumed.strategy.seen):]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(tail, resumed.strategy.seen))


def test_crops_pad_with_the_stored_images_black_as_the_der_transforms_do():
    """torchvision's RandomCrop(padding=4) runs on the stored image before ToTensor and Normalize: the border is a
    black pixel normalized. Padding the normalized image with `black_fill` must give those inputs exactly."""
    from clframework.augment import black_fill
    from clframework.benchmarks.stream import Normalize

    decode = Normalize(255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    raw = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = make_augment("crop-flip", (3, 8, 8), seed=3, decode=decode)
    params = aug.sample(len(raw))
    expected = decode(reference_crop_flip(raw, params["offsets"], params["flips"], aug.padding))
    assert torch.allclose(aug.apply(decode(raw), params), expected, atol=1e-6, rtol=0)
    assert black_fill(decode, (3, 8, 8)) == pytest.approx([-m / s for m, s in zip(decode.mean, decode.std)], rel=1e-6)
    assert black_fill(None, (3, 8, 8)) == [0.0, 0.0, 0.0]  # stored as model inputs: black unknown, pad with 0
