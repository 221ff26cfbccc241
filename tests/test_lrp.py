"""The ``lrp`` method: zennit's own attributor as the oracle, conservation, what the flat and box
rules do, the user's model left bit-identical, and one-line refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import assert_same_state, model_state
from PIL import Image
from torch import nn
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import COMPOSITES as ZC  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

import convscope as cs
from convscope.core.errors import InputError, MethodError
from convscope.methods.attribution.lrp import COMPOSITES, box_of


class PlainNet(nn.Module):
    """Functional ReLUs, batch norms after convolutions, a GAP head; [0, 1] pixels."""

    def __init__(self, bias: bool = True, k: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, k, bias=bias)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class BiasFree(nn.Module):
    """A bias-free ReLU network: every rule's relevance is conserved down to the input."""

    def __init__(self, first: str = "conv") -> None:
        super().__init__()
        self.first = first
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv2(F.relu(self.conv1(x))))).flatten(1))


def _randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def _zennit(net, x, target, composite, canonizers, preprocessing=None):
    """zennit's own LRP of ``net`` for class ``target``, starting from the target logit."""
    kw = {"canonizers": canonizers}
    if composite == "epsilon_gamma_box":
        low, high = box_of(preprocessing, x.shape[1])
        kw.update(low=low, high=high)
    comp = ZC[composite](**kw)
    with torch.no_grad():
        out = net(x)
    start = torch.zeros_like(out)
    start[:, target] = out[:, target]
    with Gradient(net, comp) as attr:
        _, rel = attr(x.clone().requires_grad_(True), start)
    return rel


def _corr(a, b):
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_resnet18_equals_zennit(composite):
    torch.manual_seed(0)
    net = _randomise_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    e = cs.explain(net, x, method="lrp", target=3, preprocessing="imagenet", composite=composite)
    ref = _zennit(net, x, 3, composite, [ResNetCanonizer()], cs.Preprocessing())
    assert _corr(e.raw, ref) > 0.9999
    assert e.diagnostics["lrp"]["canonizers"] == ["ResNetCanonizer"]
    # a plain gradient-x-input map is not what LRP gives (the comparison can fail)
    assert _corr(cs.explain(net, x, method="gradient_x_input", target=3, preprocessing="imagenet").raw,
                 ref) < 0.99


def test_vgg16_equals_zennit():
    torch.manual_seed(0)
    net = torchvision.models.vgg16(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    e = cs.explain(net, x, method="lrp", target=1, preprocessing="imagenet", composite="epsilon_gamma_box")
    ref = _zennit(net, x, 1, "epsilon_gamma_box", [VGGCanonizer()], cs.Preprocessing())
    assert _corr(e.raw, ref) > 0.9999
    assert e.diagnostics["lrp"]["canonizers"] == ["VGGCanonizer"]
    assert e.diagnostics["lrp"]["first_layer"] == "features.0"


@pytest.mark.parametrize("composite", COMPOSITES)
def test_plain_module_equals_zennit(composite):
    torch.manual_seed(1)
    net = _randomise_bn(PlainNet())
    x = torch.rand(3, 3, 24, 24)
    e = cs.explain(net, x, method="lrp", target=2, preprocessing="none", composite=composite)
    ref = _zennit(net, x, 2, composite, [SequentialMergeBatchNorm()])
    assert _corr(e.raw, ref) > 0.9999
    assert e.diagnostics["lrp"]["canonizers"] == ["SequentialMergeBatchNorm"]
    assert e.map.shape == (3, 24, 24) and torch.allclose(e.map, e.raw.sum(1))
    # without merging the batch norms the map would differ: the canonizer matters here
    unmerged = _zennit(net, x, 2, composite, [])
    assert not torch.allclose(unmerged, ref, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_bias_free_network_conserves_the_target_logit(composite):
    torch.manual_seed(2)
    net = BiasFree().eval()
    with torch.no_grad():
        net.fc.weight.mul_(300.0)  # logits of a few units, well above the rules' 1e-6 stabilisers
    x = torch.rand(4, 3, 16, 16)
    e = cs.explain(net, x, method="lrp", preprocessing="none", composite=composite)
    logits = net(x).detach()
    score = logits[torch.arange(4), torch.tensor(e.targets)]
    total = e.raw.flatten(1).sum(1)
    assert torch.allclose(torch.tensor(e.diagnostics["target_score"]), score)
    assert ((total - score).abs() / score.abs()).max() < 1e-4, (total, score)
    assert np.allclose(e.diagnostics["relevance_sum"], total.numpy())


def test_contrast_target_starts_from_both_logits():
    """For ``a - b`` the relevance starts as ``z_a e_a - z_b e_b``: on a bias-free network the map sums
    to the logit difference, and equals the difference of the two classes' maps."""
    torch.manual_seed(6)
    net = BiasFree().eval()
    with torch.no_grad():
        net.fc.weight.mul_(300.0)
    x = torch.rand(2, 3, 16, 16)
    e = cs.explain(net, x, method="lrp", preprocessing="none", composite="epsilon_plus", target="0-vs-2")
    logits = net(x).detach()
    assert torch.allclose(e.raw.flatten(1).sum(1), logits[:, 0] - logits[:, 2], rtol=1e-4)
    a = cs.explain(net, x, method="lrp", preprocessing="none", composite="epsilon_plus", target=0).raw
    b = cs.explain(net, x, method="lrp", preprocessing="none", composite="epsilon_plus", target=2).raw
    assert torch.allclose(e.raw, a - b, rtol=1e-4, atol=1e-7)


def test_biases_absorb_relevance():
    torch.manual_seed(3)
    net = PlainNet(bias=True).eval()
    with torch.no_grad():
        net.fc.bias.fill_(5.0)  # a large bias carries most of the logit: relevance no input holds
    x = torch.rand(2, 3, 16, 16)
    e = cs.explain(net, x, method="lrp", preprocessing="none", composite="epsilon_plus")
    score, total = np.array(e.diagnostics["target_score"]), np.array(e.diagnostics["relevance_sum"])
    assert np.all(np.abs(total - score) > 1.0)


def test_flat_first_layer_spreads_relevance_evenly():
    """The flat rule ignores weights and inputs: through a first linear layer every input value
    gets the same share, and the total is conserved."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 10, bias=False), nn.ReLU(),
                        nn.Linear(10, 3, bias=False)).eval()
    x = torch.rand(2, 3, 6, 6)
    pre = cs.Preprocessing(size=(6, 6), mean=(0.0,) * 3, std=(1.0,) * 3, resize=None)
    with pytest.warns(cs.errors.UnreliableResultWarning, match="constant"):  # flat: and it says so
        e = cs.explain(net, x, method="lrp", preprocessing=pre, composite="epsilon_plus_flat")
    rel = e.raw.flatten(1)
    score = torch.tensor(e.diagnostics["target_score"])
    assert torch.allclose(rel, (score / rel.shape[1])[:, None].expand_as(rel), rtol=1e-4)
    assert e.diagnostics["lrp"]["first_layer"] == "1"
    # the epsilon_plus composite on the same network is not flat
    e2 = cs.explain(net, x, method="lrp", preprocessing=pre, composite="epsilon_plus")
    assert e2.raw.flatten(1).std(1).min() > 1e-3 * e2.raw.abs().max()


def test_box_comes_from_the_preprocessing():
    low, high = box_of(cs.Preprocessing(), 3)
    mean, std = torch.tensor(cs.Preprocessing().mean), torch.tensor(cs.Preprocessing().std)
    assert torch.allclose(low.flatten(), -mean / std) and torch.allclose(high.flatten(), (1 - mean) / std)
    net = BiasFree().eval()
    x = torch.rand(1, 3, 8, 8)
    e = cs.explain(net, x, method="lrp", preprocessing="none", composite="epsilon_gamma_box")
    assert e.diagnostics["lrp"]["box"] == {"low": [0.0] * 3, "high": [1.0] * 3}
    e = cs.explain(net, x, method="lrp", preprocessing="imagenet", composite="epsilon_gamma_box")
    assert np.allclose(e.diagnostics["lrp"]["box"]["low"], (-mean / std).tolist())
    # a box rule's map depends on the box: the wrong box gives another map
    ref = _zennit(net, x, e.targets[0], "epsilon_gamma_box", [], cs.Preprocessing())
    other = _zennit(net, x, e.targets[0], "epsilon_gamma_box", [], None)
    assert _corr(e.raw, ref) > 0.9999 and not torch.allclose(ref, other, rtol=1e-3)


def test_model_is_bit_identical_after_calls_and_failures(monkeypatch):
    torch.manual_seed(5)
    net = _randomise_bn(torchvision.models.resnet18(num_classes=4))
    net.layer1.train()  # a mixed mode the call must give back
    before = model_state(net)
    x = torch.randn(1, 3, 32, 32)
    cs.explain(net, x, method="lrp", preprocessing="imagenet")
    assert_same_state(before, model_state(net))
    with pytest.raises(ZeroDivisionError):
        cs.explain(net, x, method="lrp", preprocessing="imagenet", target=lambda o: 1 / 0)
    assert_same_state(before, model_state(net))
    # a canonizer that fails half-way (after merging some batch norms): still all undone
    calls = {"n": 0}
    real = SequentialMergeBatchNorm.merge_batch_norm

    def flaky(modules, batch_norm):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected canonizer failure")
        return real(modules, batch_norm)

    monkeypatch.setattr(SequentialMergeBatchNorm, "merge_batch_norm", staticmethod(flaky))
    with pytest.raises(RuntimeError, match="injected"):
        cs.explain(net, x, method="lrp", preprocessing="imagenet")
    assert calls["n"] == 3
    assert_same_state(before, model_state(net))


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.attn(t, t, t)[0].mean(1))


class _Functional(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        h = F.silu(h) if self.op == "silu" else F.relu(h) + h if self.op == "add" else h * h.relu()
        return self.fc(h.mean((2, 3)))


class _Misordered(nn.Module):
    """Registration order conv_a, bn, conv_b, but the batch norm normalises conv_b's output: a merge by
    module order would fold it into conv_a, and the map would be silently wrong."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.conv_a(x))
        h = F.relu(self.bn(self.conv_b(h)))
        return self.fc(h.mean((2, 3)))


def test_batch_norm_merge_follows_the_data_flow():
    """The pairing by registration order is checked against the forward pass: a batch norm fed by
    another layer than the one it would be merged into is refused, naming both; where order and data
    flow agree (the same layers, registered in flow order), the map equals zennit's."""
    net = _Misordered()
    with torch.no_grad():  # statistics far from identity, so a wrong merge would change the map
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 2)
    net.eval()
    before = model_state(net)
    with pytest.raises(MethodError, match=re.escape("batch norm 'bn' is merged into 'conv_a'")) as err:
        cs.explain(net, torch.rand(1, 3, 8, 8), method="lrp", preprocessing="none")
    assert "\n" not in str(err.value)
    assert_same_state(before, model_state(net))

    class _Ordered(_Misordered):  # the same computation, registered in data-flow order
        def __init__(self, src):
            nn.Module.__init__(self)
            self.conv_a, self.conv_b, self.bn, self.fc = src.conv_a, src.conv_b, src.bn, src.fc

    ordered = _Ordered(net).eval()
    x = torch.rand(1, 3, 8, 8)
    ours = cs.explain(ordered, x, method="lrp", preprocessing="none", target=1).raw
    xr = x.clone().requires_grad_(True)
    with Gradient(ordered, ZC["epsilon_plus_flat"](canonizers=[SequentialMergeBatchNorm()])) as attr:
        _, ref = attr(xr, torch.eye(2)[[1]])
    ref = ref * ordered(x)[0, 1]  # zennit starts from 1, convscope from the target logit
    assert torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1] > 0.9999


@pytest.mark.parametrize("net,msg", [
    (_Gelu(), "layer 'act' (GELU) has no LRP rule"),
    (_Attention(), "layer 'attn' is attention"),
    (_Functional("silu"), "SiLU"),
    (_Functional("add"), "addition of two activations"),
    (_Functional("mul"), "product of two activations"),
    (nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(2)),
     "batch norm '3' does not directly follow"),
])
def test_uncovered_models_are_refused_in_one_line(net, msg):
    net.eval()
    before = model_state(net)
    with pytest.raises(MethodError, match=re.escape(msg)) as err:
        cs.explain(net, torch.rand(1, 3, 16, 16), method="lrp", preprocessing="none")
    assert "\n" not in str(err.value)
    assert_same_state(before, model_state(net))


@pytest.mark.parametrize("options,msg", [
    ({"composite": "epsilon"}, "composite"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"epsilon": float("inf")}, "epsilon"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"gamma": -0.5}, "gamma"),
    ({"gamma": 1e9}, "gamma"),
])
def test_bad_options(options, msg, tiny):
    with pytest.raises(InputError, match=msg):
        cs.explain(tiny, torch.rand(1, 3, 8, 8), method="lrp", preprocessing="none", **options)


def test_missing_zennit_names_the_extra(monkeypatch, tiny):
    for name in [n for n in sys.modules if n == "zennit" or n.startswith("zennit.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(MethodError, match=r"pip install 'convscope\[lrp\]'") as err:
        cs.explain(tiny, torch.rand(1, 3, 8, 8), method="lrp", preprocessing="none")
    assert "\n" not in str(err.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, timeout=300)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, cue_test):
    p = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype(np.uint8)).save(p)
    return p


def test_cli(digit_png, tmp_path):
    out = tmp_path / "m.npy"
    r = _cli("explain", str(digit_png), "-m", "digits-cnn-cue", "--method", "lrp",
             "--option", "composite=epsilon_gamma_box", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (1, 32, 32)
    for args, msg in [(["-m", "digits-cnn-cue", "--option", "composite=nosuch"], "composite"),
                      (["-m", "torchvision:efficientnet_b0", "--weights", "none"], "has no LRP rule")]:
        bad = tmp_path / "bad.png"
        r = _cli("explain", str(digit_png), *args, "--method", "lrp", "-o", str(bad))
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not bad.exists()


def test_timm_resnet_equals_zennit_on_the_torchvision_twin():
    """timm's resnet18 carrying torchvision resnet18's weights computes the same function; its LRP map
    (convscope's timm canonizer) equals zennit's own attributor with zennit's ResNetCanonizer on the
    torchvision twin, and the model is bit-identical afterwards."""
    import timm  # in the dev extra
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    tm = timm.create_model("resnet18", pretrained=False).eval()
    tm.load_state_dict(tv.state_dict())
    x = torch.rand(2, 3, 64, 64)
    before = model_state(tm)
    res = cs.explain(tm, x, method="lrp", preprocessing="none", target=5)
    assert res.diagnostics["lrp"]["canonizers"] == ["TimmResNetCanonizer"]
    assert_same_state(before, model_state(tm))
    xr = x.clone().requires_grad_(True)
    with Gradient(tv, ZC["epsilon_plus_flat"](canonizers=[ResNetCanonizer()])) as attr:
        out, ref = attr(xr, torch.eye(1000)[[5, 5]])
    ref = ref * tv(x)[:, 5].view(-1, 1, 1, 1)  # zennit starts from 1, convscope from the logit
    for a, b in zip(res.raw, ref, strict=True):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9999


def test_timm_bottleneck_canonizer_keeps_the_function():
    """With the timm canonizer registered (batch norms merged, additions made modules), resnet50's
    bottlenecks compute what they computed before; removing it restores the model bit for bit."""
    import timm

    from convscope.methods.attribution._lrp_timm import timm_resnet_canonizer

    torch.manual_seed(0)
    net = timm.create_model("resnet50", pretrained=False).eval()
    for m in net.modules():  # statistics far from identity, so a dropped step would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 64, 64)
    before = model_state(net)
    with torch.no_grad():
        expect = net(x)
        handles = timm_resnet_canonizer().apply(net)
        assert any(hasattr(m, "canonizer_sum") for m in net.modules())
        got = net(x)
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    assert_same_state(before, model_state(net))
