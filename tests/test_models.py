"""Backbones (the DER/GEM ResNet-18s), the model registry and `--model module:factory`, BatchNorm under SI/EWC/MAS."""
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from clframework import RegistryError, Trainer, make_strategy
from clframework.benchmarks import Stream, Task
from clframework import RunConfig
from clframework.models import (MODELS, MultiHeadNet, available_models, build_model, model_name, register_model,
                                resnet_trunk)
from clframework.strategies.ewc import fisher_diagonal


def _basic_block_params(cin, cout, stride):
    """Parameters of one BasicBlock counted by hand: two 3x3 convs (no bias), two BNs, a 1x1 projection + BN when
    the shape changes."""
    n = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
    return n + (cin * cout + 2 * cout if stride != 1 or cin != cout else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name,nf", [("resnet18", 64), ("reduced_resnet18", 20)])
def test_resnet18_is_the_der_gem_network(name, nf):
    model = build_model(name, (3, 32, 32), [10])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.out_channels == nf
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.feature_size == 8 * nf
    expected = 27 * nf + 2 * nf  # stem conv + BN
    cin = nf
    for stage in range(4):
        cout = nf * 2 ** stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            expected += _basic_block_params(cin, cout, stride)
            cin = cout
    expected += 8 * nf * 10 + 10  # the head
    assert sum(p.numel() for p in model.parameters()) == expected
    if name == "resnet18":
        assert expected == 11_173_962  # the count Mammoth's resnet18(10) reports
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.features(x).shape == (2, 8 * nf)
    big = build_model(name, (3, 64, 64), [20, 20])  # TinyImageNet's 64 px: global average pooling
    assert big(torch.randn(2, 3, 64, 64), 1).shape == (2, 20)


def test_registry_lists_and_refuses_silent_replacement():
    assert {"mlp", "cnn", "resnet18", "reduced_resnet18"} <= set(available_models())
    with pytest.raises(RegistryError, match="already registered"):
        register_model("resnet18")(lambda input_shape, head_sizes: nn.Linear(1, 1))
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        build_model("resnet81", (3, 32, 32), [2])
    with pytest.raises(RegistryError, match="dropout"):
        build_model("mlp", (1, 4, 4), [2], dropout=1.5)
    with pytest.raises(ValueError, match="takes images"):
        build_model("resnet18", (784,), [2])


def test_own_model_by_name_by_module_and_by_callable(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(input_shape, head_sizes):
            return nn.Sequential(nn.Flatten(), nn.Linear(int(input_shape[0]), sum(head_sizes)))

        not_a_factory = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model("my_nets:tiny", (5,), [2, 3])
    assert net(torch.randn(4, 5)).shape == (4, 5)
    with pytest.raises(RegistryError, match="not callable"):
        build_model("my_nets:not_a_factory", (5,), [2])
    with pytest.raises(RegistryError, match="has no 'missing'"):
        build_model("my_nets:missing", (5,), [2])
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module'"):
        RunConfig("naive", "split-mnist-5k", model="no_such_module:net").resolved()
    cfg = RunConfig("naive", "split-mnist-5k", model=sys.modules["my_nets"].tiny).resolved()
    assert cfg["train"]["model"] == "my_nets:tiny" == model_name(sys.modules["my_nets"].tiny)
    with pytest.raises(ValueError, match="returned int"):
        build_model(lambda input_shape, head_sizes: 3, (5,), [2])


def test_model_registration_by_decorator_and_override(monkeypatch):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # undone after the test

    @register_model("test-linear", description="one linear layer")
    def linear(input_shape, head_sizes, bias: bool = True):
        return nn.Linear(int(input_shape[0]), head_sizes[0], bias=bias)

    assert "test-linear" in available_models() and MODELS.get("test-linear").defaults == {"bias": True}
    assert build_model("test-linear", (3,), [2])(torch.randn(1, 3)).shape == (1, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_model("test-linear", override=True)(lambda input_shape, head_sizes: nn.Identity())
    assert "replaced" in str(caught[0].message)


def _tiny_resnet(heads=(2, 2)):
    torch.manual_seed(0)
    return MultiHeadNet(resnet_trunk(3, 4), 32, list(heads))


def _image_stream():
    g = torch.Generator().manual_seed(0)
    tasks = [Task(f"t{i}", torch.randn(24, 3, 8, 8, generator=g), torch.arange(24) % 2,
                  torch.randn(8, 3, 8, 8, generator=g), torch.arange(8) % 2, (2 * i, 2 * i + 1), head=i)
             for i in range(2)]
    return Stream("tiny-images", tasks, [2, 2], "task")


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _tensor_keys(state, prefix=""):
    """Every key path of a (nested) strategy state that leads to a tensor, or to a dict keyed by names."""
    keys = []
    if isinstance(state, dict):
        for k, v in state.items():
            keys.append(str(k))
            keys += _tensor_keys(v, f"{prefix}{k}.")
    elif isinstance(state, (list, tuple)):
        for v in state:
            keys += _tensor_keys(v, prefix)
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("name,hparams", [("si", {"c": 1.0}), ("ewc", {"ewc_lambda": 10.0}),
                                          ("mas", {"mas_lambda": 1.0})])
def test_regularizers_skip_batchnorm_statistics(name, hparams):
    """Running statistics are buffers, not parameters: SI, EWC and MAS keep no importance or anchor for them, and
    their penalty does not move when only the statistics change."""
    model, stream = _tiny_resnet(), _image_stream()
    strategy = make_strategy(name, **hparams)
    Trainer(model, strategy, epochs=1, batch_size=8, lr=0.05, optimizer="sgd", quiet=True).fit(stream)
    keys = _tensor_keys(strategy.state_dict())
    assert not [k for k in keys if k.endswith(BUFFERS)]
    assert any(k.endswith("bn1.weight") for k in keys)  # BN's affine weights are parameters: penalized
    with torch.no_grad():  # away from the anchor the last task left: a positive penalty
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = float(strategy.penalty_value(model).detach())
    assert before > 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.add_(1.0)
            m.running_var.mul_(3.0)
    assert float(strategy.penalty_value(model).detach()) == before


def test_fisher_runs_in_eval_mode_and_leaves_running_statistics_alone():
    """The Fisher is an expectation under the trained network as it predicts (eval mode: BN uses its running
    statistics, so examples do not interact through batch statistics and the statistics are not updated)."""
    model = _tiny_resnet().double()
    model.train()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    fisher = fisher_diagonal(model, [(x, torch.zeros(6, dtype=torch.long))], head=0)
    assert model.training
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
    # one example at a time in eval mode gives the same Fisher: no batch statistics involved
    model.eval()
    one = [fisher_diagonal(model, [(x[i:i + 1], torch.zeros(1, dtype=torch.long))], head=0) for i in range(6)]
    for n, f in fisher.items():
        assert torch.allclose(f, sum(o[n] for o in one) / 6, rtol=1e-9, atol=1e-15), n


@pytest.mark.slow
def test_models_doc_runs(tmp_path, docs_python):
    """docs/models.md: an own model by module:factory from the CLI, then clframework.load and predict."""
    from test_docs import DOCS, run_document

    run_document(DOCS / "models.md", tmp_path, docs_python)


def test_list_shows_the_models_read_without_torch():
    """`clframework list` reads the built-in models from source (no torch import); what it reads is the registry."""
    import subprocess

    from clframework.registry import declared_functions

    declared = {e["name"]: e for e in declared_functions("clframework.models", "register_model")}
    assert set(declared) == set(MODELS.names())
    for name, e in declared.items():
        assert e["params"] == MODELS.get(name).defaults and e["description"] == MODELS.get(name).description
    code = "import sys; from clframework.apps.cli import main; main(['list']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "reduced_resnet18" in out and "hidden=(256, 256), dropout=0.0" in out
    assert out.strip().endswith("False")
