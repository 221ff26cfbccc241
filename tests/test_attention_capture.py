"""How the attention methods read a ViT's attention (issue #32): module hooks on torchvision,
timm and Hugging Face ViTs, the function mode for other models, ``eval_batch_size``.

Oracle for the hooks: the function mode (every fused kernel replaced by step-by-step attention,
a separate computation) gives the same maps, for every method, whichever path the model's owner
chose. State after success and error: hooks, flags and the model's own call arguments.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch
import torchvision
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.core.hooks import count_hooks
from convscope.methods.attribution import _attn_capture
from convscope.methods.attribution._attn_capture import attention_capture
from convscope.models.preprocessing import Preprocessing

ATTENTION = ("raw_attention", "rollout", "chefer", "legrad")


def _explain(model, x, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cs.explain(model, x, method=method, **kw)


def _tv():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    nn.init.normal_(model.heads.head.weight)
    return model


def _timm():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=(32, 48), patch_size=8, embed_dim=16, depth=2, num_heads=2,
                             num_classes=3, reg_tokens=2).eval()


def _hf():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)
    net = ViTForImageClassification(cfg).eval()
    return net, cs.load_model(net, preprocessing=Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                                                               resize=None))


def _paths(kind):
    """(model to explain, input, [(setting the owner's path, reading it back)])."""
    if kind == "torchvision":
        x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        return _tv(), x, [(lambda: None, lambda: None)]
    if kind == "timm":
        m = _timm()
        attn = [a for a in m.modules() if hasattr(a, "fused_attn")]

        def put(v):
            return lambda: [setattr(a, "fused_attn", v) for a in attn]

        return m, torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)), [
            (put(v), lambda: [a.fused_attn for a in attn]) for v in (True, False)]
    net, lm = _hf()
    return lm, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), [
        (lambda v=v: setattr(net.config, "_attn_implementation", v), lambda: net.config._attn_implementation)
        for v in ("sdpa", "eager")]


@pytest.mark.parametrize("kind", ["torchvision", "timm", "hf"])
def test_hooks_give_the_maps_of_the_function_mode_on_every_path(kind, monkeypatch):
    model, x, paths = _paths(kind)
    for put, get in paths:
        put()
        before = get()
        for method in ATTENTION:
            hooked = _explain(model, x, method, target=1)
            assert hooked.diagnostics["attention_capture"] == "hooks", method
            assert get() == before
            with monkeypatch.context() as mp:  # no module is hookable: the whole call runs under the mode
                mp.setattr(_attn_capture, "_site", lambda _m: None)
                moded = _explain(model, x, method, target=1)
            assert moded.diagnostics["attention_capture"] == "function mode"
            assert get() == before
            assert hooked.diagnostics["attention_blocks"] == moded.diagnostics["attention_blocks"]
            assert hooked.map.abs().max() > 0
            torch.testing.assert_close(hooked.map, moded.map, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(hooked.probabilities, moded.probabilities, rtol=1e-5, atol=1e-6)


def test_raw_attention_asks_only_the_last_block_for_its_weights():
    model = _tv()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    asked: list[bool] = []
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    def spy(_m, _a, kw, _o):  # registered first: sees the arguments the call ran with
        asked.append(kw["need_weights"])

    spies = [m.register_forward_hook(spy, with_kwargs=True) for m in mhas]
    try:
        with torch.no_grad(), attention_capture(model, last_of=3) as last:
            model(x)
        assert asked == [False, False, True] and len(last.maps) == 1 and last.modules == 3
        asked.clear()
        with torch.no_grad(), attention_capture(model) as every:
            model(x)
        assert asked == [True] * 3 and len(every.maps) == 3
        torch.testing.assert_close(last.maps[0], every.maps[-1])
        with torch.no_grad(), attention_capture(model, last_of=4) as other:  # not one module per block
            model(x)
        assert len(other.maps) == 3
    finally:
        for h in spies:
            h.remove()
    assert count_hooks(model) == 0


class _WeightsUser(nn.Module):
    """Self-attention through nn.MultiheadAttention (sequence-first) whose caller asks for the
    head-averaged weights and uses them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8 + 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).permute(2, 0, 1)  # (N, B, C)
        t = torch.cat([self.cls.expand(1, t.shape[1], -1), t])
        y, w = self.attn(t, t, t)  # need_weights and average_attn_weights left at True
        assert w.shape == (t.shape[1], 5, 5)
        return self.head(torch.cat([y[0], w[:, 0]], -1))


def test_a_caller_that_asks_for_the_weights_gets_what_it_asked_for():
    torch.manual_seed(0)
    model = _WeightsUser().eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x)
    for method in ("rollout", "chefer"):
        e = _explain(model, x, method, target=0, preprocessing=Preprocessing(size=(16, 16)))
        assert e.diagnostics["attention_capture"] == "hooks" and e.diagnostics["prefix_tokens"] == 1
        torch.testing.assert_close(e.probabilities, want.softmax(1), rtol=1e-5, atol=1e-6)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("kind", ["torchvision", "timm", "hf"])
def test_hooks_and_flags_are_gone_after_an_error_inside_the_forward_pass(kind):
    size = (32, 32)
    if kind == "torchvision":
        net = _tv()
        model = cs.load_model(net, preprocessing=Preprocessing(size=(32, 32), resize=None))
        inner = net.encoder.layers[1]
    elif kind == "timm":
        net, size = _timm(), (32, 48)
        model = cs.load_model(net, preprocessing=Preprocessing(size=size, resize=None))
        inner = net.blocks[1]
        assert [b.attn.fused_attn for b in net.blocks] == [True, True]  # the capture switches them off
    else:
        net, model = _hf()
        inner = net.vit.layers[1] if hasattr(net.vit, "layers") else net.vit.encoder.layer[1]
        net.config._attn_implementation = "sdpa"

    armed = []

    def boom(*_a):
        if armed:
            raise RuntimeError("injected")

    h = inner.register_forward_hook(boom)
    try:
        _explain(model, torch.rand(1, 3, *size), "rollout")  # the facade's probe of the model, once
        armed.append(True)
        for method in ATTENTION:
            with pytest.raises(RuntimeError, match="injected"):
                _explain(model, torch.rand(1, 3, *size), method, target=0)
            assert count_hooks(net) == 1  # ours only
            if kind == "hf":
                assert net.config._attn_implementation == "sdpa"
            if kind == "timm":
                assert [b.attn.fused_attn for b in net.blocks] == [True, True]
    finally:
        h.remove()


def test_eval_batch_size_auto_and_fixed_give_the_same_maps(monkeypatch):
    model = _tv()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for method in ATTENTION:
        whole = _explain(model, x, method, target=2)
        assert whole.diagnostics["eval_batch_size"] == 5  # the chunk used: batch_size 32 on 5 images
        huge = _explain(model, x, method, target=2, eval_batch_size=10**9)
        assert huge.diagnostics["eval_batch_size"] == 5
        torch.testing.assert_close(huge.map, whole.map, rtol=0, atol=0)
        two = _explain(model, x, method, target=2, eval_batch_size=2)
        assert two.diagnostics["eval_batch_size"] == 2
        torch.testing.assert_close(two.map, whole.map, rtol=1e-5, atol=1e-6)
        auto = _explain(model, x, method, target=2, eval_batch_size="auto")
        assert auto.diagnostics["eval_batch_size"] == 5  # a budget of 256 MiB holds them all
        torch.testing.assert_close(auto.map, whole.map, rtol=1e-5, atol=1e-6)
    sizes = {}
    for method in ("rollout", "chefer"):
        for mb in ("0.2", "0.4"):
            monkeypatch.setenv("CONVSCOPE_PERTURB_BUDGET_MB", mb)
            e = _explain(model, x, method, target=2, eval_batch_size="auto")
            sizes[method, mb] = e.diagnostics["eval_batch_size"]
            torch.testing.assert_close(e.map, _explain(model, x, method, target=2).map, rtol=1e-5, atol=1e-6)
    # the chunk follows the budget, and the gradient method (graph, gradients) gets fewer images
    assert 1 <= sizes["chefer", "0.2"] < sizes["rollout", "0.2"] < 5
    assert sizes["rollout", "0.2"] <= sizes["rollout", "0.4"] <= 2 * sizes["rollout", "0.2"] + 1
    for bad in (0, -1, "big", 2.5):
        with pytest.raises(InputError) as info:
            _explain(model, x, "rollout", eval_batch_size=bad)
        assert "\n" not in str(info.value)


def _family(kind):
    """(model, input) of a small torchvision or timm ViT."""
    if kind == "torchvision":
        return _tv(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    return _timm(), torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_another_threads_forward_pass_is_neither_captured_nor_changed(kind):
    model, x = _family(kind)
    with torch.no_grad():
        plain = model(x[1:])
    seen = []
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    def spy(_m, _a, kw, _o):
        seen.append(kw.get("need_weights"))

    spies = [m.register_forward_hook(spy, with_kwargs=True) for m in mhas]
    other: list[torch.Tensor] = []
    try:
        with torch.no_grad(), attention_capture(model) as cap:
            model(x[:1])
            mine = [m.clone() for m in cap.maps]
            seen.clear()
            t = threading.Thread(target=lambda: other.append(model(x[1:]).detach()))
            t.start()
            t.join()
            assert len(cap.maps) == len(mine) == cap.modules and all(m.shape[0] == 1 for m in cap.maps)
            for a, b in zip(cap.maps, mine, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        for h in spies:
            h.remove()
    assert seen == [False] * len(mhas)  # the other thread's MHA calls ran with the arguments it gave
    torch.testing.assert_close(other[0], plain, rtol=1e-5, atol=1e-6)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_captures_of_one_model_wait_for_each_other_also_through_a_wrapper(kind):
    if kind == "timm":
        net = _timm()
        pairs = [(net, net)]
        attn = [b.attn for b in net.blocks]

        def flags():
            return [a.fused_attn for a in attn]

        during, after = [False, False], [True, True]
    else:
        net, lm = _hf()  # lm.model wraps net: another module object, the same attention modules
        pairs = [(net, net), (net, lm.model)]

        def flags():
            return net.config._attn_implementation

        during, after = "eager", "sdpa"
    for first, second in pairs:
        entered, failed = threading.Event(), []

        def open_second(second=second, entered=entered, failed=failed):
            try:
                with attention_capture(second):
                    entered.set()
            except Exception as e:  # pragma: no cover - reported below
                failed.append(e)

        with attention_capture(first) as cap:
            t = threading.Thread(target=open_second)
            t.start()
            assert not entered.wait(0.2)  # the second capture waits while the first is open
            assert flags() == during and cap.switched
        t.join(10)
        assert entered.is_set() and not failed
        assert flags() == after and count_hooks(net) == 0


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_two_threads_explaining_one_model_get_the_sequential_maps(kind):
    model, x = _family(kind)
    lm = cs.load_model(model, preprocessing=Preprocessing(size=tuple(x.shape[-2:]), resize=None))
    blocks = model.encoder.layers if kind == "torchvision" else model.blocks
    # a short sleep before each block lets the threads' passes overlap (it releases the GIL)
    slow = [b.register_forward_pre_hook(lambda *_: time.sleep(0.002)) for b in blocks]
    inputs = (x[:1], x[1:])
    for method in ("rollout", "chefer"):
        want = [_explain(lm, xi, method, target=1).map for xi in inputs]
        got: list[list[torch.Tensor]] = [[], []]
        errors: list[str] = []
        start = threading.Barrier(2)

        def work(i, method=method, got=got, errors=errors, start=start):
            start.wait()
            for _ in range(6):
                try:
                    got[i].append(_explain(lm, inputs[i], method, target=1).map)
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        for i in (0, 1):
            assert len(got[i]) == 6
            for m in got[i]:
                torch.testing.assert_close(m, want[i], rtol=0, atol=0)
    for h in slow:
        h.remove()
    assert count_hooks(model) == 0
    assert all(getattr(m, "fused_attn", True) for m in model.modules())
