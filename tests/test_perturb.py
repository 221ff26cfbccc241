"""Perturbation engine and methods: oracles on tiny models, black boxes, the planted cue."""

import numpy as np
import pytest
import torch
from helpers import assert_same_state, model_state
from torch import nn

import convscope as cs
from convscope.core.errors import InputError, MethodError
from convscope.engines.perturb import Convergence, as_predict, baseline, evaluate
from convscope.methods.attribution._sampling import coalition_samples, rise_masks, shapley_samples
from convscope.methods.attribution._surrogate import weighted_ridge
from convscope.methods.attribution.occlusion import box_masks, window_boxes


class Linear(nn.Module):
    """A linear classifier on the flattened image: logit_k = w_k . x + b_k."""

    def __init__(self, c=1, h=8, w=8, k=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, c * h * w, generator=g))
        self.b = nn.Parameter(torch.randn(k, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def _x(c=1, h=8, w=8, seed=1):
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- engine


def test_window_boxes_cover_and_disjoint_windows_tile():
    boxes = window_boxes((12, 10), 2, 2)
    m = box_masks(boxes, (2, 2), (12, 10))
    assert torch.equal(m.sum(0), torch.ones(12, 10, dtype=torch.long))
    # a stride that leaves the edge uncovered gets one more flush window
    b = window_boxes((10, 10), 4, 4)
    assert box_masks(b, (4, 4), (10, 10)).any(0).all()
    assert sorted(set(b[:, 0].tolist())) == [0, 4, 6]
    with pytest.raises(InputError):
        window_boxes((8, 8), 9, 1)


def test_evaluate_chunks_are_independent_of_batch_size():
    net = Linear()
    xs = torch.randn(37, 1, 8, 8)
    sc = lambda o: o[:, 1]  # noqa: E731
    a = evaluate(net, lambda s, e: xs[s:e], 37, sc, batch_size=5)
    b = evaluate(net, lambda s, e: xs[s:e], 37, sc, batch_size="auto")
    ref = net(xs)[:, 1].detach()
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)


def test_predictor_accepts_numpy_function_and_onnx_like_session():
    net = Linear()
    x = _x()

    def np_fn(a):
        assert isinstance(a, np.ndarray)
        return net(torch.from_numpy(a)).detach().numpy()

    class Session:  # duck-typed onnxruntime.InferenceSession
        class _In:
            name = "input"

        def get_inputs(self):
            return [self._In()]

        def run(self, outputs, feeds):
            assert outputs is None and set(feeds) == {"input"}
            return [np_fn(feeds["input"])]

    ref = net(x).detach()
    torch.testing.assert_close(as_predict(np_fn)(x), ref)
    torch.testing.assert_close(as_predict(Session())(x), ref)
    torch.testing.assert_close(as_predict(net)(x), ref)


def test_baselines():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    assert torch.equal(baseline(x, "zero"), torch.zeros_like(x))
    torch.testing.assert_close(baseline(x, "mean")[:, 0, 0], x.mean((1, 2)))
    assert torch.equal(baseline(x, 0.25), torch.full_like(x, 0.25))  # no preprocessing: pixels
    with pytest.raises(InputError, match="grey level"):
        baseline(x, 3.0)
    blurred = baseline(x, "blur", sigma=1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    torch.testing.assert_close(baseline(torch.ones(1, 6, 6), "blur"), torch.ones(1, 6, 6))
    with pytest.raises(InputError):
        baseline(x, "nope")


def test_samplers_are_seeded_and_well_formed():
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    z = coalition_samples(50, 7, g())
    assert torch.equal(z, coalition_samples(50, 7, g()))
    assert z[0].all() and (z[1:].sum(1) <= 6).all() and set(z.unique().tolist()) <= {0.0, 1.0}
    zs, _ = shapley_samples(200, 6, g())
    sizes = zs.sum(1)
    assert ((sizes >= 1) & (sizes <= 5)).all()
    m = rise_masks(10, (20, 30), 4, 0.5, g())
    assert m.shape == (10, 20, 30) and m.min() >= 0 and m.max() <= 1
    assert torch.equal(m, rise_masks(10, (20, 30), 4, 0.5, g()))


def test_weighted_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    z = (torch.rand(80, 6, generator=g) > 0.5).float()
    y = z @ torch.randn(6, generator=g) + 0.1 * torch.randn(80, generator=g)
    w = torch.rand(80, generator=g)
    coef, icpt, r2 = weighted_ridge(z, y, w, alpha=1.0)
    ref = Ridge(alpha=1.0).fit(z.numpy(), y.numpy(), sample_weight=w.numpy())
    np.testing.assert_allclose(coef.numpy(), ref.coef_, rtol=1e-4, atol=1e-5)
    assert icpt == pytest.approx(float(ref.intercept_), abs=1e-5)
    assert r2 == pytest.approx(ref.score(z.numpy(), y.numpy(), sample_weight=w.numpy()), abs=1e-6)


def test_convergence():
    c = Convergence(0.01)
    assert not c.update(torch.tensor([1.0, 2.0, 3.0]))
    assert c.update(torch.tensor([1.1, 2.0, 3.05]))
    assert c.stability > 0.99
    with pytest.raises(InputError):
        Convergence(2.0)


# ---------------------------------------------------------------- occlusion


def test_occlusion_linear_model_equals_hand_computed_drops():
    net, x = Linear(), _x()
    e = cs.explain(net, x, method="occlusion", target=1, window=2, stride=2, baseline="black")
    w = net.w[1].detach().view(8, 8)
    want = torch.zeros(8, 8)
    for r in range(0, 8, 2):  # each window's drop is the sum of w * x over it (zero baseline)
        for c in range(0, 8, 2):
            want[r:r + 2, c:c + 2] = (w[r:r + 2, c:c + 2] * x[0, 0, r:r + 2, c:c + 2]).sum()
    torch.testing.assert_close(e.map[0], want, atol=1e-5, rtol=1e-5)


def test_occlusion_overlapping_windows_average_and_baseline_value():
    net, x = Linear(), _x()
    e = cs.explain(net, x, method="occlusion", target=0, window=3, stride=1, baseline=0.5)
    w = net.w[0].detach().view(8, 8)
    acc, cnt = torch.zeros(8, 8), torch.zeros(8, 8)
    for r in range(6):
        for c in range(6):
            d = (w[r:r + 3, c:c + 3] * (x[0, 0, r:r + 3, c:c + 3] - 0.5)).sum()
            acc[r:r + 3, c:c + 3] += d
            cnt[r:r + 3, c:c + 3] += 1
    torch.testing.assert_close(e.map[0], acc / cnt, atol=1e-5, rtol=1e-5)
    assert e.signed


def test_occlusion_incremental_exact_equals_full_and_approx_is_close(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    full = cs.explain(cue_model, x, method="occlusion", window=6, stride=3)
    exact = cs.explain(cue_model, x, method="occlusion", window=6, stride=3, incremental="exact")
    torch.testing.assert_close(exact.map, full.map, atol=1e-4, rtol=1e-4)
    approx = cs.explain(cue_model, x, method="occlusion", window=6, stride=3, incremental="approx",
                        tau=0.6)
    rel = (approx.map - full.map).norm() / full.map.norm()
    assert rel < 0.5


def test_incremental_exact_on_resnet_block_structure():
    # skip connections, batch norm, strided convs and max pooling (random weights: mechanics)
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    from convscope.methods.attribution._incremental import IncrementalOcclusion

    corners = window_boxes((64, 64), 12, 20)
    patches = torch.zeros(len(corners), 3, 12, 12)
    inc = IncrementalOcclusion(net, x)
    got = inc.scores(patches, corners)
    masks = box_masks(corners, (12, 12), (64, 64))[:, None]
    with torch.no_grad():
        want = net(torch.where(masks, torch.zeros(()), x))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- RISE, LIME, Kernel SHAP


class RegionNet(nn.Module):
    """Class 0's logit is 5 x the mean of one region; class 1 is constant."""

    def __init__(self, rows=slice(2, 6), cols=slice(10, 14)):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x):
        s = x[:, :, self.rows, self.cols].mean((1, 2, 3)) * 5
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_rise_concentrates_on_the_region_the_model_reads():
    net = RegionNet()
    x = torch.ones(1, 1, 16, 16)
    e = cs.explain(net, x, method="rise", target=0, n_masks=400, cells=4, score="raw", baseline="black")
    m = e.map[0]
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[2:6, 10:14] = True
    assert region.flatten()[m.flatten().argmax()]
    assert m[region].mean() > m[~region].mean() + 0.5 * m[~region].std()


def test_rise_converge_stops_early_and_reports_stability():
    net = RegionNet()
    x = torch.ones(1, 1, 16, 16)
    e = cs.explain(net, x, method="rise", target=0, n_masks=4000, cells=4, converge=0.05,
                   check_every=100)
    assert e.diagnostics["n_samples"][0] < 4000
    assert e.diagnostics["stability"][0] >= 0.95


def test_lime_finds_the_one_segment_the_model_depends_on():
    net = RegionNet(rows=slice(4, 8), cols=slice(8, 12))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 1
    e = cs.explain(net, x, method="lime", target=0, segmentation="grid", cell=4, n_samples=300,
                   hide="zero", score="raw")
    wts = torch.tensor(e.diagnostics["segment_weights"][0])
    seg = e.diagnostics["segments"][0]
    assert int(wts.argmax()) == int(seg[5, 9])
    others = wts[torch.arange(len(wts)) != wts.argmax()]
    assert wts.max() > 10 * others.abs().max()
    assert e.diagnostics["local_r2"][0] > 0.99
    pic = cs.attribution.perturbation.lime_picture(e, num_features=3)
    assert pic.size[0] >= 224


def test_lime_user_mask_and_skimage_segmentations():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    user = torch.zeros(24, 24, dtype=torch.long)
    user[:, 12:] = 7
    e = cs.explain(RegionNet(cols=slice(14, 18)), x, method="lime", target=0, segmentation=user,
                   n_samples=20)
    assert len(e.diagnostics["segment_weights"][0]) == 2
    from convscope.methods.attribution.perturbation import segment

    img = torch.zeros(3, 64, 64)
    img[:, :, 32:] = 1.0
    img[0, 32:] = 0.5
    for kind in ("slic", "quickshift", "felzenszwalb"):
        s = segment(img, kind)
        assert s.shape == (64, 64) and s.min() == 0 and s.max() >= 1
        assert s[0, 0] != s[0, 63] and s[63, 63] != s[0, 63]  # follows the colour edges


def test_kernel_shap_on_additive_model_gives_exact_contributions():
    net = Linear(c=1, h=8, w=8, k=2)
    x = _x()
    e = cs.explain(net, x, method="kernel_shap", target=1, segmentation="grid", cell=4,
                   n_samples=60, hide="black")
    seg = e.diagnostics["segments"][0]
    contrib = (net.w[1].detach().view(8, 8) * x[0, 0])
    want = torch.zeros(4).index_add_(0, seg.flatten(), contrib.flatten())
    torch.testing.assert_close(torch.tensor(e.diagnostics["segment_weights"][0]), want,
                               atol=1e-4, rtol=1e-4)


def test_an_option_group_is_keywords_outside_and_one_value_inside():
    # with_options (the engine, sampling and segmentation groups): the fields stand in the
    # signature where the group's parameter was, with this method's defaults, are documented and
    # typed for the registry, and reach the function as one value however they were passed.
    from dataclasses import dataclass

    from convscope.methods.attribution._options import with_options

    @dataclass(frozen=True)
    class Group:
        a: int = 1
        b: str = "x"

    seen = []

    @with_options(Group, "group", "        a: the a (default {a}).\n        b: the b.\n", b="y")
    def method(ctx, first: int = 0, group: Group = Group(), last: float = 0.5):
        """A method.

        Args:
            first: the first.
            last: the last.
        """
        seen.append((ctx, first, group, last))
        return "out"

    import inspect

    sig = inspect.signature(method)
    assert list(sig.parameters) == ["ctx", "first", "a", "b", "last"]
    assert [sig.parameters[n].default for n in ("a", "b")] == [1, "y"]
    assert method.__annotations__["a"] is int and "group" not in method.__annotations__
    assert "a: the a (default 1)." in method.__doc__ and "first: the first." in method.__doc__
    assert method("ctx", 3, 4, last=0.25) == "out"
    assert seen[-1] == ("ctx", 3, Group(a=4, b="y"), 0.25)
    method("ctx", b="z")
    assert seen[-1] == ("ctx", 0, Group(a=1, b="z"), 0.5)
    with pytest.raises(TypeError):
        method("ctx", c=1)
    specs = {s.name: s for s in cs.get_method("rise").option_specs}  # the groups on a real method
    assert specs["check_every"].default == 250 and specs["score"].default == "softmax"
    assert "convergence checks" in specs["check_every"].doc and specs["converge"].range is not None


# ---------------------------------------------------------------- black boxes


def test_black_box_function_runs_black_box_methods_and_refuses_the_others():
    net = Linear(c=1, h=8, w=8, k=3)

    def predict(a: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(a)).detach().numpy()

    x = _x()
    e = cs.explain(predict, x, method="occlusion", target=2, window=2, stride=2,
                   class_names=["a", "b", "c"])
    ref = cs.explain(net, x, method="occlusion", target=2, window=2, stride=2)
    torch.testing.assert_close(e.map, ref.map)
    assert e.class_names == ("a", "b", "c")
    with pytest.raises(MethodError, match="black-box"):
        cs.explain(predict, x, method="saliency")
    with pytest.raises(MethodError, match="black-box"):
        cs.explain(predict, x, method="scorecam", layer="x")


# ---------------------------------------------------------------- Score-CAM, Ablation-CAM


def _digits_split(net, x, layer_idx=9):
    with torch.no_grad():
        a = net.features[: layer_idx + 1](x)
    return a, lambda t: net.classifier(net.pool(t).flatten(1))


def test_ablationcam_matches_an_independent_implementation(cue_model, cue_test):
    net = cue_model.model
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    e = cs.explain(cue_model, x, method="ablationcam", target=[3, 5])
    assert e.diagnostics["tail_only"]
    a, tail = _digits_split(net, x)
    for b, c in enumerate([3, 5]):
        with torch.no_grad():
            s0 = tail(a[b:b + 1])[0, c]
            ab = a[b:b + 1].repeat(64, 1, 1, 1)
            ab[torch.arange(64), torch.arange(64)] = 0
            s = tail(ab)[:, c]
        w = (s0 - s) / s0
        cam = torch.relu((w[:, None, None] * a[b]).sum(0))
        up = torch.nn.functional.interpolate(cam[None, None], size=(32, 32), mode="bilinear",
                                             align_corners=False)[0, 0]
        torch.testing.assert_close(e.map[b], up, atol=1e-3, rtol=1e-3)


def test_scorecam_matches_an_independent_implementation(cue_model, cue_test):
    net = cue_model.model
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    # a model-space zero tensor baseline is the x * mask of the paper's Algorithm 1 on model inputs
    e = cs.explain(cue_model, x, method="scorecam", target=4, baseline=torch.zeros_like(x[0]))
    a, _ = _digits_split(net, x)
    up = torch.nn.functional.interpolate(a, size=(32, 32), mode="bilinear", align_corners=False)[0]
    scores = []
    for k in range(64):
        m = up[k]
        m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
        with torch.no_grad():
            scores.append(net(x * m)[0, 4])
    alpha = torch.softmax(torch.stack(scores), 0)
    cam = torch.relu((alpha[:, None, None] * a[0]).sum(0))
    want = torch.nn.functional.interpolate(cam[None, None], size=(32, 32), mode="bilinear",
                                           align_corners=False)[0, 0]
    torch.testing.assert_close(e.map[0], want, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the planted cue

# Whether each perturbation method points at the planted cue is its registry claim
# (``claims=``), checked with every other method's by tests/test_truth.py.


def test_ablationcam_weights_channels_by_their_mean_on_a_gap_head(cue_model, cue_test):
    # An analytic property: behind global average pooling and a linear layer, zeroing channel k
    # lowers the logit by exactly w_ck * mean(A_k), so Ablation-CAM's weights are CAM's weights
    # scaled by each channel's mean (a spread-out channel outweighs a compact one).
    net = cue_model.model
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    e = cs.explain(cue_model, x, method="ablationcam", target=2)
    a, tail = _digits_split(net, x)
    with torch.no_grad():
        s0 = tail(a)[0, 2]
    w = net.classifier.weight[2].detach() * a[0].mean((1, 2)) / s0
    cam = torch.relu((w[:, None, None] * a[0]).sum(0))
    up = torch.nn.functional.interpolate(cam[None, None], size=(32, 32), mode="bilinear",
                                         align_corners=False)[0, 0]
    torch.testing.assert_close(e.map[0], up, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- engine speed options

SPEED_SETTINGS = {"occlusion": {"window": 8, "stride": 4}, "rise": {"n_masks": 64, "check_every": 32}}


@pytest.mark.parametrize("name", sorted(SPEED_SETTINGS))
def test_channels_last_gives_the_same_maps_and_leaves_the_model_as_it_was(name, cue_model, cue_test):
    import copy

    net = copy.deepcopy(cue_model.model)
    net.train()  # the caller's state, which the run must give back
    net.features[0].weight.requires_grad_(False)
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    ref = cs.explain(net, x, method=name, eval_batch_size=16, **SPEED_SETTINGS[name])
    before = model_state(net)
    seen = []  # proof that the passes really ran channels-last (else the option is a no-op)
    conv = net.features[5]  # (the first conv has 1 input channel, where both formats coincide)
    h = conv.register_forward_pre_hook(lambda m, i: seen.append(
        (m.weight.stride()[1] == 1, i[0].stride()[1] == 1)))  # channels-last: channel stride 1
    got = cs.explain(net, x, method=name, eval_batch_size=16, channels_last=True, **SPEED_SETTINGS[name])
    h.remove()
    assert_same_state(before, model_state(net))
    engine = [i for w, i in seen if w]
    assert len(engine) >= 8 and all(engine), "the masked batches did not run in channels_last format"
    # at most the facade's own probe passes and the clean pass ran as they were (the clean logits
    # are the facade's, shared with the other methods of a report: convscope.shared_work); one of
    # them is load_model's probe of the assumed preprocessing, which takes the first convolution's
    # one channel and so now reaches this layer (#27 item 9)
    assert len(seen) - len(engine) <= 4
    assert net.features[5].weight.stride()[1] != 1
    torch.testing.assert_close(got.map, ref.map, atol=1e-4, rtol=1e-4)
    assert float(ref.map.abs().max()) > 1e-2  # a real map, not zeros on both sides


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "lime", "kernel_shap"])
def test_channels_last_reaches_every_perturbation_method(name, cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    opts = {"n_samples": 48, "segmentation": "grid", "cell": 8} if name in ("lime", "kernel_shap") else {}
    before = model_state(cue_model.model)
    ref = cs.explain(cue_model, x, method=name, **opts)
    got = cs.explain(cue_model, x, method=name, channels_last=True, **opts)
    assert_same_state(before, model_state(cue_model.model))
    scale = float(ref.map.abs().max())
    torch.testing.assert_close(got.map, ref.map, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def test_state_guard_restores_the_memory_format_after_an_error(tiny):
    from convscope.core.hooks import state_guard

    tiny.register_buffer("grid", torch.randn(1, 2, 3, 3))
    before = model_state(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with state_guard(tiny, memory_format=torch.channels_last):
            assert tiny.conv1.weight.is_contiguous(memory_format=torch.channels_last)
            assert tiny.grid.stride()[1] == 1  # (1, 2, 3, 3) channels-last: channel stride 1
            raise RuntimeError("boom")
    assert_same_state(before, model_state(tiny))

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            raise ValueError("model error")

    net = Fails()
    before = model_state(net)
    with pytest.raises(ValueError, match="model error"):
        evaluate(as_predict(net, channels_last=True), lambda a, b: torch.zeros(b - a, 3, 8, 8), 4,
                 lambda o: o[:, 0], batch_size=2)
    assert_same_state(before, model_state(net))


def _recording_backend(calls):
    def backend(gm, example_inputs):
        calls.append(len(example_inputs))
        return gm.forward

    return backend


@pytest.mark.parametrize("name", sorted(SPEED_SETTINGS))
def test_compile_gives_the_same_maps_and_leaves_the_module_as_it_was(name, tiny):
    # A cheap backend that records it was used (dynamo traces the model, no C++ compile); the
    # real inductor path is the same code with backend=None (checked in the benchmark).
    torch._dynamo.reset()  # a fresh compile cache: earlier tests must not use up its recompile limit
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    opts = dict(SPEED_SETTINGS[name], eval_batch_size=8)
    ref = cs.explain(tiny, x, method=name, target=1, **opts)
    before = model_state(tiny)
    calls = []
    got = cs.explain(tiny, x, method=name, target=1, compile=_recording_backend(calls), **opts)
    assert_same_state(before, model_state(tiny))
    assert calls, "torch.compile's backend was never called"
    torch.testing.assert_close(got.map, ref.map, atol=1e-5, rtol=1e-5)
    both = cs.explain(tiny, x, method=name, target=1, compile=_recording_backend(calls),
                      channels_last=True, **opts)
    assert_same_state(before, model_state(tiny))
    torch.testing.assert_close(both.map, ref.map, atol=1e-4, rtol=1e-4)


def test_compile_failure_falls_back_to_eager_with_one_warning(tiny):
    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler on this machine")

    torch._dynamo.reset()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = cs.explain(tiny, x, method="occlusion", target=1, window=8, stride=4, eval_batch_size=3)
    before = model_state(tiny)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*running the model eagerly") as rec:
        got = cs.explain(tiny, x, method="occlusion", target=1, window=8, stride=4, eval_batch_size=3,
                         compile=broken)
    assert len([w for w in rec if "torch.compile failed" in str(w.message)]) == 1
    assert_same_state(before, model_state(tiny))
    torch.testing.assert_close(got.map, ref.map)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):  # unknown backend: same fallback
        as_predict(tiny, compile="no-such-backend")(x)
    with pytest.raises(InputError, match="compile must be"):
        as_predict(tiny, compile=3)


def test_speed_options_refuse_black_boxes(tiny):
    x = torch.randn(1, 3, 16, 16)

    def numpy_fn(arr):
        return np.asarray(arr).reshape(len(arr), -1)[:, :5]

    class FakeSession:  # looks like an onnxruntime.InferenceSession
        def run(self, *a):
            raise AssertionError("never run")

        def get_inputs(self):
            return []

    for opts in ({"channels_last": True}, {"compile": True}):
        with pytest.raises(InputError, match="torch nn.Module"):
            cs.explain(numpy_fn, x, method="occlusion", class_names=list("abcde"), window=8, **opts)
        with pytest.raises(InputError, match="ONNX session"):
            as_predict(FakeSession(), **opts)
        with pytest.raises(InputError, match="torch nn.Module"):
            as_predict(numpy_fn, **opts)
        with pytest.raises(InputError, match="incremental"):
            cs.explain(tiny, x, method="occlusion", incremental="exact", window=8, **opts)


# ---------------------------------------------------------------- fast by default (issue #19)


class Untraceable(nn.Module):
    """A small CNN whose forward branches on a tensor value, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() > -1:  # data-dependent control flow: fx refuses it
            h = h * 1.0
        return self.fc(h.mean((2, 3)))


def test_occlusion_default_is_incremental_where_the_model_traces_and_full_elsewhere(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    auto = cs.explain(cue_model, x, method="occlusion", window=6, stride=3)
    full = cs.explain(cue_model, x, method="occlusion", window=6, stride=3, incremental=False)
    assert auto.diagnostics["engine"]["incremental"] and not full.diagnostics["engine"]["incremental"]
    torch.testing.assert_close(auto.map, full.map, atol=1e-4, rtol=1e-4)
    # a model fx cannot trace: silently full passes, the same map
    net, xu = Untraceable(), _x(seed=3)
    got = cs.explain(net, xu, method="occlusion", target=0, window=2, stride=2)
    assert got.diagnostics["engine"]["incremental"] is False
    want = cs.explain(net, xu, method="occlusion", target=0, window=2, stride=2, incremental=False)
    torch.testing.assert_close(got.map, want.map)
    with pytest.raises(MethodError, match="trace"):  # asked for explicitly: an error, not a fallback
        cs.explain(net, xu, method="occlusion", target=0, window=2, stride=2, incremental="exact")
    # an explicit full-pass speed option turns "auto" to full passes
    cl = cs.explain(cue_model, x, method="occlusion", window=6, stride=3, channels_last=True)
    ran = cl.diagnostics["engine"]
    assert ran["incremental"] is False and ran["channels_last"] is True


def test_channels_last_auto_probes_long_runs_and_records_what_ran(cue_model, cue_test, monkeypatch):
    from convscope.methods.attribution import _engine

    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    opts = {"n_masks": 300, "cells": 4, "converge": None, "eval_batch_size": 50}
    for faster in (True, False):
        monkeypatch.setattr(_engine, "channels_last_pays", lambda *a, faster=faster: faster)
        e = cs.explain(cue_model, x, method="rise", **opts)
        assert e.diagnostics["engine"]["channels_last"] is faster
        assert e.diagnostics["engine"]["batch_size"] == 50
    ref = cs.explain(cue_model, x, method="rise", channels_last=False, **opts)
    torch.testing.assert_close(e.map, ref.map, atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(_engine, "channels_last_pays", lambda *a: pytest.fail("probed a short run"))
    short = cs.explain(cue_model, x, method="rise", n_masks=64, check_every=64)  # below PROBE_MIN_EVALS
    assert short.diagnostics["engine"]["channels_last"] is False


def test_the_real_probe_is_cached_per_model_and_shape(tiny):
    from convscope.methods.attribution._engine import _probed, channels_last_pays

    x = torch.randn(1, 3, 16, 16)
    first = channels_last_pays(tiny, lambda p, c: p(c), x)
    assert _probed[tiny][(tuple(x.shape[1:]), x.dtype, "cpu")] is first
    assert channels_last_pays(tiny, lambda p, c: pytest.fail("probed twice"), x) is first


@pytest.mark.parametrize("name", ["rise", "lime", "kernel_shap"])
def test_sampling_methods_stop_when_stable_by_default_and_run_everything_without(name, cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    size = "n_masks" if name == "rise" else "n_samples"
    opts = {size: 600, "check_every": 50}
    if name != "rise":
        opts.update(segmentation="grid", cell=8)
    e = cs.explain(cue_model, x, method=name, **opts)
    d = e.diagnostics
    assert d["n_samples"][0] <= 600 and -1 <= d["reliability"][0] <= 1
    if d["n_samples"][0] < 600:  # stopped early: by the default rule (LIME's: split-half, 0.9)
        assert d["reliability"][0] >= 0.9 if name == "lime" else d["stability"][0] >= 0.99
    for off in (None, 0):
        full = cs.explain(cue_model, x, method=name, converge=off, **opts)
        assert full.diagnostics["n_samples"][0] == 600


def test_ablationcam_on_an_untraceable_model_replaces_the_layer_through_capture():
    from convscope.core.hooks import count_hooks

    net, x = Untraceable(), _x(seed=2)
    e = cs.explain(net, x, method="ablationcam", layer="conv", target=1)
    assert not e.diagnostics["tail_only"] and count_hooks(net) == 0
    with torch.no_grad():  # an independent loop: zero each channel of conv's output
        a = torch.relu(net.conv(x))
        s0 = net.fc(a.mean((2, 3)))[0, 1]
        keep = [(torch.arange(4) != k).float()[None, :, None, None] for k in range(4)]
        w = torch.stack([(s0 - net.fc((a * m).mean((2, 3)))[0, 1]) / s0 for m in keep])
    cam = torch.relu((w[:, None, None] * net.conv(x)[0]).sum(0))
    torch.testing.assert_close(e.map[0], cam, atol=1e-5, rtol=1e-4)
