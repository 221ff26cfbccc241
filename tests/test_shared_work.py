"""One report pass computes what several methods share once (issue #19), with the same results.

Every comparison is between the same methods run with sharing (``shared_work()``, what the report
does) and without (each method on its own, as before): maps, raw attributions, probabilities,
targets and diagnostics must be equal to the bit. Forward passes are counted with a pre-hook on
the model (registered through ``convscope.core.hooks``), so the savings are measured, not assumed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.core.hooks import stop_forward_when
from convscope.frontends.report.build import MethodRun, explain_report, resolve_methods, run_methods
from convscope.methods.attribution._shared import _MEMO, shared_work


class ConvReLU(nn.Module):
    """A convolution then ``F.relu`` (a call in ``forward``, no ReLU module)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class FunctionalNet(nn.Module):
    """A plain CNN with functional ReLUs and a global-average-pooling + linear head (so CAM
    applies at ``block3``)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = ConvReLU(3, 8)
        self.block2 = ConvReLU(8, 12, stride=2)
        self.block3 = ConvReLU(12, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block1(x) - 0.1)
        return self.fc(self.block3(self.block2(x)).mean((2, 3)))


@pytest.fixture
def net_lm():
    torch.manual_seed(0)
    return cs.load_model(FunctionalNet(), preprocessing={"preset": "none", "size": 20},
                         class_names=[f"c{i}" for i in range(5)], default_layer="block3")


@pytest.fixture
def images():
    return torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))


@contextlib.contextmanager
def forward_count(model: nn.Module) -> Iterator[list[int]]:
    """Count the calls of ``model`` in the block (a forward pre-hook through convscope.core.hooks)."""
    n = [0]

    def tick() -> bool:
        n[0] += 1
        return False

    with stop_forward_when(model, tick, RuntimeError):
        yield n


def _assert_same(a: list[MethodRun], b: list[MethodRun]) -> None:
    assert [r.info.name for r in a] == [r.info.name for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.error is None and rb.error is None, (ra.info.name, ra.error, rb.error)
        ea, eb = ra.explanation, rb.explanation
        assert torch.equal(ea.map, eb.map), ra.info.name
        assert (ea.raw is None) == (eb.raw is None), ra.info.name
        assert ea.raw is None or torch.equal(ea.raw, eb.raw), ra.info.name
        assert torch.equal(ea.probabilities, eb.probabilities), ra.info.name
        assert ea.targets == eb.targets, ra.info.name
        assert _equal(ea.diagnostics, eb.diagnostics), ra.info.name


def _equal(a: object, b: object) -> bool:
    """Equal to the bit, through dicts, sequences, tensors and arrays (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and bool(torch.equal(a, b) or (a.shape == b.shape and torch.isclose(
                    a, b, rtol=0, atol=0, equal_nan=True).all())))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind == "f")
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _run(lm, x, names, **kw) -> tuple[torch.Tensor, list[MethodRun], int]:
    infos = resolve_methods(None) if names is None else [cs.get_method(m) for m in names]
    with forward_count(lm.model) as n:
        probs, runs = run_methods(lm, x, infos, progress=False, **kw)
    return probs, runs, n[0]


SHARING = ["cam", "gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam",
           "guided_gradcam", "saliency", "gradient_x_input", "guided_backprop", "deconvnet",
           "integrated_gradients"]


@pytest.mark.parametrize("batch_size", [32, 2])
def test_functional_net_same_maps_fewer_passes(net_lm, images, batch_size):
    p0, plain, n_plain = _run(net_lm, images, SHARING, share=False, fast=True, batch_size=batch_size)
    p1, shared, n_shared = _run(net_lm, images, SHARING, share=True, fast=True, batch_size=batch_size)
    assert torch.equal(p0, p1)
    _assert_same(plain, shared)
    chunks = -(-images.shape[0] // batch_size)
    with forward_count(net_lm.model) as ig:
        cs.explain(net_lm, images, method="integrated_gradients", batch_size=batch_size,
                   **cs.get_method("integrated_gradients").fast_options)
    # per chunk: the clean logits (report), the CAM layer pass without gradients (cam, eigencam),
    # the one with them (the five gradient CAMs, guided Grad-CAM), the guided gradient (guided
    # Grad-CAM, guided backprop), the input gradient (saliency, gradient x input), the deconvnet;
    # integrated gradients reuses the clean logits and adds its own baseline and path passes
    assert n_shared == 6 * chunks + ig[0] - chunks
    # without sharing: each of the 13 methods does its own passes (guided Grad-CAM one since #29:
    # both its gradients come from one forward pass), plus the report's clean logits
    assert n_plain == (1 + 8 + 1 + 3) * chunks + ig[0]


def test_bundled_model_every_method_same_maps(cue_model, cue_test):
    x = cue_test.images[:2]
    names = [m.name for m in cs.list_methods() if m.family != "attention"]  # those need a ViT
    p0, plain, n_plain = _run(cue_model, x, names, share=False, fast=True)
    p1, shared, n_shared = _run(cue_model, x, names, share=True, fast=True)
    assert len(plain) == len(names)
    assert torch.equal(p0, p1)
    _assert_same(plain, shared)
    # at least the 8 CAM, 4 gradient and the clean-logits passes that repeat are saved
    assert n_shared <= n_plain - 9, (n_shared, n_plain)


def test_outside_the_block_nothing_is_shared(net_lm, images):
    assert _MEMO.get() is None
    with forward_count(net_lm.model) as n:
        for _ in range(2):
            cs.explain(net_lm, images, method="gradcam")
    assert n[0] == 2
    with shared_work() as memo, forward_count(net_lm.model) as n:
        with shared_work() as inner:  # nested: the outer memo
            assert inner is memo
            cs.explain(net_lm, images, method="gradcam")
        cs.explain(net_lm, images, method="hirescam")
    assert n[0] == 1 and memo.hits == 1
    assert _MEMO.get() is None


def test_shared_values_follow_inputs_weights_targets_and_layers(net_lm, images):
    """Nothing stale: another image, an in-place weight update, another target or layer, a
    callable target each get their own pass, with the unshared result."""

    def alone(x, **kw):
        return cs.explain(net_lm, x, method="gradcam", **kw).map

    other = images.flip(-1)
    expect = {"x": alone(images), "other": alone(other), "t2": alone(images, target=2),
              "conv2": alone(images, layer="block2"),
              "fn": alone(images, target=lambda out: out[:, 1] - out[:, 0])}
    with shared_work(), forward_count(net_lm.model) as n:
        got = {"x": alone(images), "other": alone(other), "t2": alone(images, target=2),
               "conv2": alone(images, layer="block2"),
               "fn": alone(images, target=lambda out: out[:, 1] - out[:, 0]),
               "x again": alone(images.clone()), "t2 again": alone(images, target=np.int64(2))}
        assert n[0] == 5  # the two "again" calls are served from the memo
        for k in expect:
            assert torch.equal(got[k], expect[k]), k
        assert torch.equal(got["x again"], expect["x"]) and torch.equal(got["t2 again"], expect["t2"])
        with torch.no_grad():
            net_lm.model.fc.weight.mul_(-1.0)  # in place: the parameter's version changes
        changed = alone(images)
        assert n[0] == 6
    assert torch.equal(changed, alone(images))
    assert not torch.equal(changed, expect["x"])


def test_report_loads_the_model_once(monkeypatch, cue_test, tmp_path):
    from convscope.models import zoo

    loads = []
    real = zoo._bundled

    def counting(*a, **kw):
        loads.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(zoo, "_bundled", counting)
    imgs = [cue_test.images[i, 0].numpy() for i in range(2)]
    rep = explain_report("digits-cnn-cue", imgs, methods=["gradcam", "saliency"], compare=2,
                         progress=False)
    assert loads == ["digits-cnn-cue"]
    assert rep.write(tmp_path / "r.html").stat().st_size > 0


def test_explain_methods_shares_the_passes(net_lm, images):
    names = ["gradcam", "hirescam", "saliency", "gradient_x_input"]
    with forward_count(net_lm.model) as n:
        alone = [cs.explain(net_lm, images[:1], method=m) for m in names]
    with forward_count(net_lm.model) as n_grid:
        grid = cs.explain_methods(net_lm, images[:1], names)
    assert n[0] == 4 and n_grid[0] == 2  # one layer pass for the CAMs, one input gradient
    for e, p in zip(alone, grid.panels, strict=True):
        assert torch.equal(e.map, p.map) and torch.equal(e.raw, p.raw)


def test_a_pass_with_gradients_serves_cam_and_eigencam(net_lm, images):
    """Gradient CAM first: CAM and Eigen-CAM reuse its pass (activations from a forward pass with
    gradients enabled), with the same maps as their own pass without gradients."""
    names = ["gradcam", "eigencam", "cam"]
    _, plain, n_plain = _run(net_lm, images, names, share=False)
    _, shared, n_shared = _run(net_lm, images, names, share=True)
    _assert_same(plain, shared)
    assert (n_plain, n_shared) == (4, 2)  # clean logits + one pass each; clean logits + one pass


def test_replaced_weights_buffers_and_submodules_are_a_new_model(images):
    """What an in-place version counter does not see: a replaced ``.data``, a buffer updated in
    place, a replaced submodule. Each gives the map a fresh call outside the block gives."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 20}, class_names=["a", "b", "c"])

    def changes():
        yield lambda: setattr(net[0].weight, "data", net[0].weight.data * 2)
        yield lambda: net[1].running_var.mul_(9)
        yield lambda: net.__setitem__(5, nn.Linear(4, 3))

    with shared_work() as memo:
        cs.explain(lm, images, method="saliency", target=0)
        for change in changes():
            change()
            token = _MEMO.set(None)  # the control: the same call with no memo in reach
            try:
                fresh = cs.explain(lm, images, method="saliency", target=0).map
            finally:
                _MEMO.reset(token)
            hits = memo.hits
            got = cs.explain(lm, images, method="saliency", target=0).map
            assert memo.hits == hits  # nothing served from before the change
            assert torch.equal(got, fresh)
