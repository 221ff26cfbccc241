import pytest
import torch
from torch import nn

from convscope.core.errors import LayerNotFoundError, MethodError
from convscope.core.hooks import capture, count_hooks, resolve_layers


def test_resolve_layers_globs_and_close_matches(tiny):
    assert resolve_layers(tiny, "conv*") == ["conv1", "conv2"]
    assert resolve_layers(tiny, ["fc", "relu?"]) == ["fc", "relu1", "relu2"]
    with pytest.raises(LayerNotFoundError, match="close matches: conv1"):
        resolve_layers(tiny, "conv_1")
    with pytest.raises(LayerNotFoundError, match="no layer named 'layer9\\.\\*'"):
        resolve_layers(tiny, "layer9.*")


def test_capture_records_and_cleans_up(tiny):
    tiny.train()
    x = torch.randn(2, 3, 8, 8, requires_grad=False)
    before = count_hooks(tiny)
    with capture(tiny, ["conv1", "conv2"]) as cap:
        assert not tiny.training
        assert all(not p.requires_grad for p in tiny.parameters())
        tiny(x)
        a = cap.activation("conv1")
        assert a.shape == (2, 6, 8, 8)
        # conv1's output is followed by an in-place ReLU: the stored tensor must keep negatives
        assert (a < 0).any()
    assert count_hooks(tiny) == before
    assert tiny.training
    assert all(p.requires_grad for p in tiny.parameters())


def test_capture_restores_on_error(tiny):
    tiny.train()
    tiny.fc.eval()  # mixed per-module modes must come back exactly
    tiny.conv1.weight.requires_grad_(False)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    g = torch.ones_like(x)
    x.grad = g
    with pytest.raises(RuntimeError, match="injected"), capture(tiny, "conv2", tensors=[x]):
        tiny(x).sum().backward()
        raise RuntimeError("injected")
    assert count_hooks(tiny) == 0
    assert tiny.training and not tiny.fc.training
    assert not tiny.conv1.weight.requires_grad and tiny.conv2.weight.requires_grad
    assert x.grad is g and torch.equal(x.grad, torch.ones_like(x))
    assert x.requires_grad


def test_gradient_wrt_activation_with_inplace_relu(tiny):
    # gradient w.r.t. conv1's pre-ReLU output equals an independent computation
    x = torch.randn(2, 3, 8, 8, requires_grad=True)  # frozen weights: the graph starts at x
    with capture(tiny, "conv1") as cap:
        out = tiny(x)
        a = cap.activation("conv1")
        (g,) = torch.autograd.grad(out[:, 0].sum(), a)
    pre = tiny.conv1(x.detach()).detach().requires_grad_(True)
    h = torch.relu(pre)
    h = torch.relu(tiny.conv2(h))
    ref = tiny.fc(tiny.pool(h).flatten(1))[:, 0].sum()
    (g_ref,) = torch.autograd.grad(ref, pre)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_reused_module_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.block(self.block(x)).mean((2, 3))

    m = Twice()
    with capture(m, "block") as cap:
        m(torch.randn(1, 3, 4, 4))
        with pytest.raises(MethodError, match="ran 2 times"):
            cap.activation("block")
    assert count_hooks(m) == 0


def test_run_stop_after_cuts_the_pass_and_keeps_what_ran(tiny):
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        full = tiny.conv2(tiny.relu1(tiny.conv1(x.clone())))
    with capture(tiny, ["conv1", "conv2", "fc"]) as cap:
        assert cap.run(x, stop_after=["conv1", "conv2"]) is None
        assert len(cap.outputs("fc")) == 0  # the head never ran
        torch.testing.assert_close(cap.activation("conv2"), full)
        cap.reset()
        out = cap.run(x)  # no stop: the whole pass, the output returned
        assert out.shape == (2, 5) and len(cap.outputs("fc")) == 1
        cap.reset()
        with pytest.raises(MethodError, match="not captured"):
            cap.run(x, stop_after=["relu1"])
        # the stop state is cleared after a stop: the next pass runs to the end
        assert cap.run(x, stop_after=["conv1"]) is None
        assert cap.run(x) is not None
    assert count_hooks(tiny) == 0


def test_run_stop_after_a_layer_that_does_not_run():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    net = Skip()
    with capture(net, ["a", "unused"]) as cap:
        with pytest.raises(MethodError, match="'?unused'? did not run|unused did not run"):
            cap.run(torch.randn(1, 3), stop_after=["a", "unused"])
        assert cap.run(torch.randn(1, 3)) is not None  # not left half-stopped
