"""Shared check for quadratic-penalty strategies: the gradient a hook adds equals autograd's on the explicit penalty."""
import torch


def assert_hook_adds_autograd_penalty_gradient(strategy, model) -> None:
    """`strategy.on_before_step` on zero gradients must add exactly d penalty_value / d theta (float64 models)."""
    auto = torch.autograd.grad(strategy.penalty_value(model), list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    strategy.on_before_step(model)
    for a, p in zip(auto, model.parameters()):
        assert torch.allclose(p.grad, a, rtol=1e-10, atol=1e-12)
