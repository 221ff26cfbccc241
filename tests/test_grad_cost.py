"""Issue #29: every gradient path asks autograd for exactly what it needs, and gives the same maps.

* Identity, generated from the registry: every registered method gives bit-identical maps with
  the CAM pass that builds no graph below the layer (``Capture.run_above``) and with that fast
  path turned off (the graph from the input, as before the change), on a plain module defined
  here (unnormalised [0, 1] pixels, functional ReLUs), a bundled model and a small random ViT.
* Oracle: the gradient CAMs equal a hand-written reference computed by a full ``backward()``
  through every weight (plain autograd, no convscope code), to float tolerance (rtol 1e-5).
* State: after every method, success or injected error, the model's state is identical, no
  parameter has a ``.grad`` (no parameter gradient is computed at all), every ``requires_grad``
  is as the user left it; the same for feature visualisation and adversarial images.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_state, model_state, plain_vit
from torch import nn

import convscope as cs
from convscope.core.hooks import capture
from convscope.methods.attribution import _cam_engine

METHODS = cs.method_names()
NOT_ON_PLAIN = {"cam"}  # the plain module's head is not GAP + linear right after "conv2"


class Plain(nn.Module):
    """Two convolutions, functional ReLUs, global average pooling, a linear head; [0, 1] pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean((2, 3)))


def _plain(name: str | None = None) -> tuple[cs.LoadedModel, torch.Tensor]:
    """The plain CNN, or for an attention method a plain ViT (``helpers.TinyViT``, 4x4 patches)."""
    torch.manual_seed(0)
    attention = name is not None and cs.get_method(name).family == "attention"
    net = plain_vit(name, 16, 5) if attention else Plain()
    pixels = {"size": (16, 16), "resize": None, "mean": (0.0,) * 3, "std": (1.0,) * 3}  # the ViT's size
    lm = cs.load_model(net, class_names=[f"c{i}" for i in range(5)],
                       preprocessing=pixels if attention else "none",
                       default_layer=None if attention else "conv2")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return lm, x


def _vit() -> tuple[cs.LoadedModel, torch.Tensor]:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4,
                            depth=3).eval()
    pre = {"size": (32, 32), "resize": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    lm = cs.load_model(net, class_names=[f"c{i}" for i in range(4)], preprocessing=pre,
                       default_layer="blocks.1.norm1")
    return lm, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _digits() -> tuple[cs.LoadedModel, torch.Tensor]:
    lm = cs.load_model("digits-cnn")
    pixels = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    return lm, lm.preprocessing.normalize(pixels)


MODELS = {"plain": _plain, "digits-cnn": _digits, "vit": _vit}


def _run(lm: cs.LoadedModel, x: torch.Tensor, name: str, **kw: object) -> cs.Explanation:
    info = cs.get_method(name)
    opts = dict(info.fast_options)
    if "nonrelu" in {s.name for s in info.option_specs}:
        opts["nonrelu"] = "gradient"  # the ViT's GELUs pass the ordinary gradient
    return cs.explain(lm, x, method=name, target=[1] * len(x), **{**opts, **kw})


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_input(request):
    return request.param, *MODELS[request.param]()


@pytest.mark.parametrize("name", METHODS)
def test_same_maps_with_and_without_the_graph_below_the_layer(name, model_and_input, monkeypatch):
    kind, lm, x = model_and_input
    try:
        fast = _run(lm, x, name)
    except cs.ConvscopeError as err:  # refused on this model (a CAM head, a 3-D layer for Score-CAM)
        with monkeypatch.context() as m:
            m.setattr(_cam_engine, "_pass_above", lambda ctx, rows: None)
            with pytest.raises(type(err)):
                _run(lm, x, name)
        return
    with monkeypatch.context() as m:
        m.setattr(_cam_engine, "_pass_above", lambda ctx, rows: None)  # the graph from the input
        full = _run(lm, x, name)
    assert torch.equal(fast.map, full.map), (kind, name)
    assert (fast.raw is None) == (full.raw is None)
    if fast.raw is not None:
        assert torch.equal(fast.raw, full.raw)
    assert torch.equal(fast.probabilities, full.probabilities)


@pytest.mark.parametrize("kind", ["plain", "digits-cnn"])
def test_the_pass_above_the_layer_serves_the_gradient_cams(kind, monkeypatch):
    """The identity test above would pass if the fast pass always fell back to the graph from the
    input: here a spy shows that it serves every gradient CAM on a conv model (review of #29)."""
    lm, x = MODELS[kind]()
    real, served = _cam_engine._pass_above, []

    def spy(ctx, rows):
        out = real(ctx, rows)
        served.append(out is not None)
        return out

    monkeypatch.setattr(_cam_engine, "_pass_above", spy)
    cams = [n for n in METHODS if cs.get_method(n).family == "cam" and cs.get_method(n).needs_gradients]
    # CAM weighs by the head's weights: no gradient pass; guided Grad-CAM's layer gradient comes
    # from its one forward pass with guided backprop (test_guided_gradcam_makes_one_forward_pass...)
    for name in [n for n in cams if n not in ("cam", "guided_gradcam")]:
        served.clear()
        _run(lm, x, name)
        assert served and all(served), (kind, name, served)


def _oracle_grads(net: nn.Module, layer: nn.Module, x: torch.Tensor, t: list[int]):
    """A and dS/dA by one plain backward() through everything (weights' gradients included)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer.register_forward_hook(hook)
    try:
        xr = x.clone().requires_grad_(True)
        out = net(xr)
        out[torch.arange(len(t)), t].sum().backward()
    finally:
        h.remove()
        net.zero_grad(set_to_none=True)
    return store["a"].detach(), store["a"].grad.detach()


def _oracle_map(rule: str, a: torch.Tensor, g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if rule == "gradcam":
        m = (g.mean((2, 3), keepdim=True) * a).sum(1)
    elif rule == "hirescam":
        m = (g * a).sum(1)
    elif rule == "layercam":
        m = (g.clamp(min=0) * a).sum(1)
    elif rule == "xgradcam":
        s = a.sum((2, 3), keepdim=True)
        w = torch.where(s != 0, (a * g).sum((2, 3), keepdim=True) / torch.where(s != 0, s, 1.0), 0.0)
        m = (w * a).sum(1)
    else:  # gradcam_pp, the paper's closed form
        d = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
        alpha = torch.where(d != 0, g**2 / torch.where(d != 0, d, 1.0), 0.0)
        m = ((alpha * g.clamp(min=0)).sum((2, 3), keepdim=True) * a).sum(1)
    return F.interpolate(m.clamp(min=0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("rule", ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam_pp"])
@pytest.mark.parametrize("which", ["plain", "resnet18"])
def test_gradient_cams_equal_a_full_backward_oracle(rule, which):
    if which == "plain":
        lm, x = _plain()
        net, layer = lm.model, lm.model.conv2
    else:
        from torchvision.models import resnet18

        torch.manual_seed(0)
        net = resnet18(weights=None).eval()
        lm = cs.load_model(net, class_names=[f"c{i}" for i in range(1000)], preprocessing="none",
                           default_layer="layer4")
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
        layer = net.layer4
    t = [1, 4, 3][: len(x)]
    a, g = _oracle_grads(net, layer, x, t)
    want = _oracle_map(rule, a, g, tuple(x.shape[-2:]))
    got = cs.explain(lm, x, method=rule, target=t).map
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", METHODS)
def test_no_parameter_gradient_and_state_kept(name):
    lm, x = _plain(name)
    net = lm.model
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    first.weight.requires_grad_(False)  # a user's mix of frozen and trainable weights
    net.train()
    x = x.clone().requires_grad_(True)
    before = model_state(net)
    computed: list[tuple[int, ...]] = []  # a tensor hook fires whenever a gradient is computed for it
    handles = [p.register_hook(lambda g: computed.append(tuple(g.shape)))
               for p in net.parameters() if p.requires_grad]
    try:
        if name not in NOT_ON_PLAIN:
            _run(lm, x, name)
    finally:
        for hd in handles:
            hd.remove()
    assert not computed, f"parameter gradients computed: {computed}"
    assert_same_state(before, model_state(net))
    assert all(p.grad is None for p in net.parameters()), "a parameter gradient was stored"
    assert x.requires_grad and x.grad is None

    def boom(_m, _i, _o):
        raise RuntimeError("injected failure")

    h = (net.heads if hasattr(net, "heads") else net.head).register_forward_hook(boom)
    try:
        with pytest.raises((RuntimeError, cs.ConvscopeError)):
            _run(lm, x, name)
    finally:
        h.remove()
    assert_same_state(before, model_state(net))
    assert all(p.grad is None for p in net.parameters())
    assert x.requires_grad and x.grad is None and torch.is_grad_enabled()


def test_optimisation_engine_computes_no_parameter_gradient():
    lm, x = _plain()
    net = lm.model
    before = model_state(net)
    cs.visualize(lm, "conv2:3", size=16, steps=3, param="pixel", transforms=None, progress=False)
    cs.attack(lm, x[:1], eps=0.03, steps=2)
    assert_same_state(before, model_state(net))
    assert all(p.grad is None for p in net.parameters())


def test_run_above_builds_no_graph_below_the_layer():
    lm, x = _plain()
    net = lm.model
    seen = {}

    def spy(_m, inputs, _o):
        seen["conv2_input_grad_fn"] = inputs[0].grad_fn

    h = net.conv1.register_forward_hook(lambda _m, _i, o: seen.setdefault("conv1", o))
    h2 = net.conv2.register_forward_hook(spy)
    try:
        with capture(net, "conv2") as cap:
            out = cap.run_above(x)
            a = cap.activation("conv2")
        assert torch.is_grad_enabled()  # the caller's mode is back
        assert a.is_leaf and a.requires_grad and out.requires_grad
        assert seen["conv1"].grad_fn is None and seen["conv2_input_grad_fn"] is None
        (g,) = torch.autograd.grad(out[:, 1].sum(), a)
        assert g.shape == a.shape
        with torch.no_grad():
            with capture(net, "conv2") as cap:
                cap.run_above(x)
            assert not torch.is_grad_enabled()  # the caller's no_grad is kept after the layer

        def boom(_m, _i, _o):
            raise RuntimeError("boom")

        h3 = net.head.register_forward_hook(boom)
        try:
            with capture(net, "conv2") as cap, pytest.raises(RuntimeError, match="boom"):
                cap.run_above(x)
        finally:
            h3.remove()
    finally:
        h.remove()
        h2.remove()
    assert torch.is_grad_enabled()


def test_seeding_touches_only_the_generator_it_uses():
    """explain seeds a forked CPU generator: the caller's RNG state is unchanged and no seed is
    queued for CUDA (``torch.manual_seed`` queues one that would seed the caller's CUDA generator
    when CUDA starts)."""
    lm, x = _plain()
    state = torch.get_rng_state()
    tracker = torch.cuda._lazy_seed_tracker  # seeds queued for CUDA until it starts
    queued = [c[0] for c in tracker.get_calls() if c]
    a = _run(lm, x, "smoothgrad", seed=5).map
    b = _run(lm, x, "smoothgrad", seed=5).map
    assert torch.equal(a, b) and not torch.equal(a, _run(lm, x, "smoothgrad", seed=6).map)
    assert torch.equal(torch.get_rng_state(), state)
    if not torch.cuda.is_initialized():
        assert [c[0] for c in tracker.get_calls() if c] == queued


@pytest.mark.parametrize("which", ["plain", "resnet18"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_guided_gradcam_makes_one_forward_pass_per_chunk(which, batch_size):
    """Guided Grad-CAM takes both gradients from one forward pass per chunk (it took two), and
    its map is still guided backprop's gradient times Grad-CAM's map, each run on its own through
    the public API (to the bit)."""
    if which == "plain":
        lm, x = _plain()
        net = lm.model
    else:
        from torchvision.models import resnet18

        torch.manual_seed(0)
        net = resnet18(weights=None).eval()
        lm = cs.load_model(net, class_names=[f"c{i}" for i in range(1000)], preprocessing="none",
                           default_layer="layer4")
        x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    calls = []
    h = net.register_forward_pre_hook(lambda _m, _i: calls.append(1))
    try:
        got = cs.explain(lm, x, method="guided_gradcam", target="top2", batch_size=batch_size)
    finally:
        h.remove()
    chunks = -(-len(x) // batch_size)
    assert len(calls) == chunks  # the facade reads the logits from the method: no other pass
    gb = cs.explain(lm, x, method="guided_backprop", target="top2", batch_size=batch_size)
    gc = cs.explain(lm, x, method="gradcam", target="top2", batch_size=batch_size)
    assert gc.map.abs().max() > 0
    assert torch.equal(got.raw, gb.raw * gc.map[:, None])
    assert torch.equal(got.map, got.raw.abs().amax(1))
    assert torch.equal(got.probabilities, gc.probabilities)


@pytest.mark.parametrize("act", ["relu", "relu_", "relu6", "hardtanh", "module_inplace"])
def test_rule_switch_gives_autograds_gradient_then_the_guided_rule(act):
    """``RuleSwitch("plain")`` gives the ordinary gradient (autograd's own, to the bit), and the same
    graph then gives the guided rule's gradient once switched."""
    from convscope.methods.attribution._guided import RuleSwitch, relu_rules

    torch.manual_seed(0)
    lin = nn.Linear(6, 6)
    fns = {"relu": F.relu, "relu_": torch.relu_, "relu6": F.relu6,
           "hardtanh": lambda h: F.hardtanh(h, 0.0, 0.5), "module_inplace": nn.ReLU(inplace=True)}

    def f(x: torch.Tensor) -> torch.Tensor:
        return lin(fns[act](lin(x) * 3)).sum(1)

    x = torch.randn(4, 6)
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(f(xr).sum(), xr)
    xr = x.clone().requires_grad_(True)
    with relu_rules("guided"):
        out = f(xr)
    (want_guided,) = torch.autograd.grad(out.sum(), xr)
    switch = RuleSwitch("plain")
    xr = x.clone().requires_grad_(True)
    with relu_rules(switch):
        out = f(xr)
    (plain,) = torch.autograd.grad(out.sum(), xr, retain_graph=True)
    switch.rule = "guided"
    (guided,) = torch.autograd.grad(out.sum(), xr)
    assert torch.equal(plain, want) and torch.equal(guided, want_guided)
    assert not torch.equal(plain, guided)  # the rule changes something here


def test_nested_state_guards_hold_what_changed_between_them_and_close_in_any_order():
    """A guard nested in one on the same model freezes and evaluates what the code between them
    changed (a parameter unfrozen, a submodule back in training), restores it on exit, errors
    included; guards closed out of order (a generator holding one open, closed later) leave no
    stale record: a later guard still freezes the model, and restores it."""
    from convscope.core.state import state_guard

    lm, _ = _plain()
    net = lm.model.train()
    net.conv1.weight.requires_grad_(False)
    before = model_state(net)
    with pytest.raises(RuntimeError, match="inner"):
        with state_guard(net):
            assert not net.training and not any(p.requires_grad for p in net.parameters())
            net.conv2.weight.requires_grad_(True)
            net.conv2.train()
            with state_guard(net):
                assert not net.conv2.training and not net.conv2.weight.requires_grad
                raise RuntimeError("inner")
    assert_same_state(before, model_state(net))

    def held():  # a guard kept open by a generator
        with state_guard(net, memory_format=torch.channels_last):
            yield

    gen = held()
    outer = state_guard(net)
    outer.__enter__()
    next(gen)
    outer.__exit__(None, None, None)  # closed before the generator's guard
    gen.close()  # restores what it saw when it opened (inside the outer guard): frozen, eval
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    unfrozen = model_state(net)
    with state_guard(net):  # no stale record of the closed guards: it freezes the model itself
        assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert_same_state(unfrozen, model_state(net))


def test_state_guard_walk_finds_every_module_once_shared_and_wrapped_ones_included():
    """The guard's own walk (``_modules``, faster than ``modules()``) records every module the
    model's ``eval()`` reaches, a shared one once and a wrapper overriding ``named_modules`` too;
    everything is restored, errors included. A guard that changes nothing on the model still
    restores what its block changed, and the caller's tensors."""
    from torchvision.models import resnet18

    from convscope.core.state import _modules, state_guard
    from convscope.models.outputs import ScoresModel

    shared = nn.Conv2d(3, 3, 1)
    net = nn.Sequential(shared, nn.Sequential(shared, nn.ReLU()), nn.Flatten(), nn.Linear(12, 2))
    wrapped = ScoresModel(net)
    for model in (resnet18(weights=None), net, wrapped):
        walked = _modules(model)
        assert len(walked) == len({id(m) for m in walked})
        reach: list[nn.Module] = []
        model.apply(reach.append)  # what eval() and train() visit
        assert {id(m) for m in walked} == {id(m) for m in reach}
    wrapped.train()
    net[1].eval()
    shared.weight.requires_grad_(False)
    before = model_state(wrapped.wrapped)
    with pytest.raises(RuntimeError, match="inside"):
        with state_guard(wrapped):
            assert not wrapped.training and not any(m.training for m in net.modules())
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("inside")
    assert wrapped.training
    assert_same_state(before, model_state(wrapped.wrapped))
    x = torch.ones(2, requires_grad=True)
    x.grad = torch.zeros(2)
    grad = x.grad
    with state_guard(wrapped, [x], eval_mode=False, freeze=False):
        assert wrapped.training and x.grad is None  # nothing on the model changed
        wrapped.eval()  # the block's own change is undone on exit
    assert x.requires_grad and x.grad is grad and wrapped.training
    assert_same_state(before, model_state(wrapped.wrapped))


def test_public_capture_restores_what_the_block_changed_and_the_engine_runs_in_eval_mode() -> None:
    """``capture(eval_mode=False, freeze=False)`` still restores modes and flags the block changed
    (the documented contract); only ``restore=False`` (the method engines', inside the facade's
    guard) skips that. A Grad-CAM call on a train-mode BatchNorm + Dropout net sees eval mode and
    frozen weights at every capture, gives the eval-mode map, and leaves the buffers untouched."""
    import convscope as cs
    from convscope.core.errors import MethodError
    from convscope.core.hooks import capture
    from convscope.methods.attribution import _cam_engine

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.train()
    with capture(net, "4", eval_mode=False, freeze=False):
        net.eval()
        net.requires_grad_(False)
    assert net.training and all(p.requires_grad for p in net.parameters())
    with pytest.raises(MethodError, match="restore=False"):
        with capture(net, "4", restore=False):
            pass
    seen: list[tuple[bool, bool]] = []
    real = _cam_engine.capture_layers

    def spy(ctx):  # type: ignore[no-untyped-def]
        seen.append((any(m.training for m in ctx.model.modules()),
                     any(p.requires_grad for p in ctx.model.parameters())))
        return real(ctx)

    x = torch.rand(2, 3, 12, 12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _cam_engine.capture_layers = spy
    try:
        got = cs.explain(net, x, method="gradcam", target=0, layer="4", preprocessing="none").map
    finally:
        _cam_engine.capture_layers = real
    assert seen and not any(training or grad for training, grad in seen)
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    ref = cs.explain(net.eval(), x, method="gradcam", target=0, layer="4", preprocessing="none").map
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(ref), rtol=0, atol=0)
