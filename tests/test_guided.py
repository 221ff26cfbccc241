"""Guided backprop and deconvnet: hand-computed oracle, independent reference implementations on
torchvision architectures (in-place ReLUs, functional ReLUs, ReLU6, reused modules), refusal of
activations without a rule, and no global patching."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import convscope as cs
from convscope.core.errors import MethodError
from convscope.core.hooks import count_hooks

RULES = {"guided_backprop": "guided", "deconvnet": "deconvnet"}


# --- independent reference: ReLUs replaced by modules with an explicit backward ---------------
class _RefFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, hi):
        ctx.save_for_backward(x)
        ctx.rule, ctx.hi = rule, hi
        return x.clamp(0, hi) if hi is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        up = torch.where(g > 0, g, torch.zeros_like(g))
        if ctx.rule == "guided":
            keep = x > 0
            if ctx.hi is not None:
                keep = keep & (x < ctx.hi)
            up = torch.where(keep, up, torch.zeros_like(up))
        return up, None, None


class RefReLU(nn.Module):
    def __init__(self, rule, hi=None):
        super().__init__()
        self.rule, self.hi = rule, hi

    def forward(self, x):
        return _RefFn.apply(x, self.rule, self.hi)


def swap_relus(model, rule):
    """A deep copy with every nn.ReLU / nn.ReLU6 module replaced by the reference module."""
    ref = copy.deepcopy(model)
    for mod in list(ref.modules()):
        for cname, child in list(mod.named_children()):
            if type(child) is nn.ReLU:
                setattr(mod, cname, RefReLU(rule))
            elif type(child) is nn.ReLU6:
                setattr(mod, cname, RefReLU(rule, 6.0))
    return ref


def ref_grad(model, x, targets):
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    out.gather(1, torch.tensor(targets).view(-1, 1)).sum().backward()
    return xr.grad


# --- a tiny net and its guided / deconvnet gradient by hand -----------------------------------
class HandNet(nn.Module):
    """Flatten -> L1 -> ReLU(inplace, module) -> L2 -> F.relu -> L3 -> ReLU6 -> L4 -> same ReLU
    module again -> L5. The in-place ReLU module runs twice (a reused module)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        dims = [6, 7, 6, 5, 5, 3]
        self.lins = nn.ModuleList()
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            lin = nn.Linear(a, b)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(b, a, generator=g))
                lin.bias.copy_(torch.randn(b, generator=g) * 0.5)
            self.lins.append(lin)
        self.act = nn.ReLU(inplace=True)
        self.act6 = nn.ReLU6(inplace=True)

    def forward(self, x):
        h = x.flatten(1)
        h = self.act(self.lins[0](h))
        h = F.relu(self.lins[1](h))
        h = self.act6(self.lins[2](h) * 3.0)
        h = self.act(self.lins[3](h))
        return self.lins[4](h)


def hand_rule_gradient(net, x, target, rule):
    """Forward with numpy, backward with explicit masks: guided g <- relu(g) * mask, deconv
    g <- relu(g)."""
    W = [lin.weight.detach().double().numpy() for lin in net.lins]
    b = [lin.bias.detach().double().numpy() for lin in net.lins]
    h = x.detach().double().numpy().reshape(-1)
    z1 = W[0] @ h + b[0]
    a1 = np.maximum(z1, 0)
    z2 = W[1] @ a1 + b[1]
    a2 = np.maximum(z2, 0)
    z3 = 3.0 * (W[2] @ a2 + b[2])
    a3 = np.clip(z3, 0, 6)
    z4 = W[3] @ a3 + b[3]
    masks = [z1 > 0, z2 > 0, (z3 > 0) & (z3 < 6), z4 > 0]

    def through(g, m):
        g = np.maximum(g, 0)
        return g * m if rule == "guided" else g

    g = W[4][target]
    g = through(g, masks[3])
    g = W[3].T @ g
    g = through(g, masks[2]) * 3.0
    g = W[2].T @ g
    g = through(g, masks[1])
    g = W[1].T @ g
    g = through(g, masks[0])
    return W[0].T @ g


@pytest.mark.parametrize("method", list(RULES))
def test_hand_computed_rule_on_tiny_net(method):
    net = HandNet().eval()
    torch.manual_seed(1)
    x = torch.randn(6, 1, 2, 3)
    targets = [0, 1, 2, 2, 1, 0]
    e = cs.explain(net, x, method=method, target=targets)
    for i, t in enumerate(targets):
        want = torch.from_numpy(hand_rule_gradient(net, x[i], t, RULES[method])).float()
        torch.testing.assert_close(e.raw[i].flatten(), want, atol=1e-5, rtol=1e-4)
    # the oracle is sharp: the plain gradient differs from it
    plain = cs.explain(net, x, method="saliency", target=targets).raw
    assert not torch.allclose(plain, e.raw, atol=1e-3)


def test_rules_differ_from_each_other():
    net = HandNet().eval()
    x = torch.randn(32, 1, 2, 3, generator=torch.Generator().manual_seed(5))
    t = torch.arange(32) % 3
    gb = cs.explain(net, x, method="guided_backprop", target=t).raw
    dc = cs.explain(net, x, method="deconvnet", target=t).raw
    assert not torch.allclose(gb, dc, atol=1e-3)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def densenet121():
    torch.manual_seed(0)
    return torchvision.models.densenet121(weights=None).eval()


@pytest.mark.parametrize("method", list(RULES))
def test_resnet18_inplace_and_reused_relu_matches_reference(resnet18, method):
    # BasicBlock.relu is nn.ReLU(inplace=True) and runs twice per block
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = [3, 7]
    e = cs.explain(resnet18, x, method=method, target=targets)
    want = ref_grad(swap_relus(resnet18, RULES[method]), x, targets)
    torch.testing.assert_close(e.raw, want, atol=1e-6, rtol=1e-4)
    plain = ref_grad(resnet18, x, targets)
    assert (plain - want).abs().max() > 0.1 * want.abs().max()  # the check can fail
    assert count_hooks(resnet18) == 0


def densenet_reference(model, rule):
    """Reference for DenseNet: modules swapped, and the F.relu in DenseNet.forward replaced."""
    ref = swap_relus(model, rule)
    final = RefReLU(rule)

    def forward(self, x):
        out = final(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))

    ref.forward = types.MethodType(forward, ref)
    return ref


@pytest.mark.parametrize("method", list(RULES))
def test_densenet121_functional_relu_matches_reference(densenet121, method):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [5, 900]
    e = cs.explain(densenet121, x, method=method, target=targets)
    want = ref_grad(densenet_reference(densenet121, RULES[method]), x, targets)
    torch.testing.assert_close(e.raw, want, atol=1e-6, rtol=1e-4)
    # handling the module ReLUs alone is not enough: the functional ReLU changes the result
    modules_only = ref_grad(swap_relus(densenet121, RULES[method]), x, targets)
    assert (modules_only - want).abs().max() > 0.01 * want.abs().max()


@pytest.mark.parametrize("method", list(RULES))
def test_mobilenet_v2_relu6_matches_reference(method):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    e = cs.explain(net, x, method=method, target=[1, 2])
    want = ref_grad(swap_relus(net, RULES[method]), x, [1, 2])
    torch.testing.assert_close(e.raw, want, atol=1e-6, rtol=1e-4)


def test_unsupported_activation_is_refused_or_passed_on_request():
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None).eval()  # ReLU and Hardswish
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with pytest.raises(MethodError, match=r"Hardswish.*nonrelu='gradient'"):
        cs.explain(net, x, method="guided_backprop", target=4)
    assert count_hooks(net) == 0 and torch._C._len_torch_function_stack() == 0
    e = cs.explain(net, x, method="guided_backprop", target=4, nonrelu="gradient")
    want = ref_grad(swap_relus(net, "guided"), x, [4])  # ReLUs guided, Hardswish plain
    torch.testing.assert_close(e.raw, want, atol=1e-6, rtol=1e-4)
    with pytest.raises(cs.errors.InputError, match="nonrelu='maybe'"):  # the registry's declared choices
        cs.explain(net, x, method="deconvnet", nonrelu="maybe")


def test_silu_network_refused_with_clear_message():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(1, 3, 8, 8)
    net(x)
    with pytest.raises(MethodError, match="SiLU"):
        cs.explain(net, x, method="deconvnet")
    # a net without any rectifier and nonrelu="gradient" gives the plain gradient
    e = cs.explain(net, x, method="deconvnet", nonrelu="gradient", target=0)
    torch.testing.assert_close(e.raw, cs.explain(net, x, method="saliency", target=0).raw)


def test_functional_forms_all_get_the_rule():
    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            h = self.lin(x.flatten(1))
            h = torch.relu(h) + h.relu() + F.relu(h.clone(), inplace=True)
            h = F.relu6(h) + F.hardtanh(h, 0.0, 6.0) + torch.relu_(h.clone())
            return self.out(h)

    class RefForms(Forms):
        def forward(self, x):
            r, r6 = RefReLU("guided"), RefReLU("guided", 6.0)
            h = self.lin(x.flatten(1))
            h = r(h) + r(h) + r(h)
            h = r6(h) + r6(h) + r(h)
            return self.out(h)

    torch.manual_seed(0)
    net = Forms().eval()
    ref = RefForms().eval()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(5, 1, 2, 3)
    e = cs.explain(net, x, method="guided_backprop", target=1)
    torch.testing.assert_close(e.raw, ref_grad(ref, x, [1] * 5), atol=1e-6, rtol=1e-5)


def test_nothing_global_is_patched(resnet18):
    before = (torch.relu, F.relu, torch.relu_, F.relu6, F.hardtanh, torch.Tensor.relu)
    x = torch.randn(1, 3, 32, 32)
    lm = cs.load_model(resnet18)
    cs.explain(lm, x, method="guided_backprop")

    def boom(_m, _i, _o):
        raise RuntimeError("injected")

    h = resnet18.layer2.register_forward_hook(boom)  # fails inside the scoped forward pass
    try:
        with pytest.raises(RuntimeError, match="injected"):
            cs.explain(lm, x, method="guided_backprop")
    finally:
        h.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert (torch.relu, F.relu, torch.relu_, F.relu6, F.hardtanh, torch.Tensor.relu) == before
    # after the call the ordinary gradient is back
    t = torch.tensor([-1.0, 2.0], requires_grad=True)
    torch.relu(t).mul(-1).sum().backward()
    assert t.grad.tolist() == [0.0, -1.0]
