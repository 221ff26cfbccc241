"""#27 item 5: a result whose own diagnostics call it unreliable says so, in every front end.

The verdict (:mod:`convscope.methods.attribution._verdict`) is checked on known causes: integrated
gradients with one step on a curved model (a completeness gap, computed here independently),
a model whose output ignores its input (a constant map), a CAM layer after global pooling (a 1x1
map), and split-half reliabilities and surrogate fits given as numbers.
"""

import os
import subprocess
import sys
import warnings

import torch
from torch import nn

import convscope as cs
from convscope.core.errors import UnreliableResultWarning
from convscope.methods.attribution._verdict import (
    MAX_COMPLETENESS_GAP,
    MIN_LOCAL_R2,
    MIN_RELIABILITY,
    verdict,
)


class Curved(nn.Module):
    """[0, 1] pixels, functional ReLU, a fourth power: far from linear, so one IG step misses a lot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)) ** 4
        return self.fc(h.mean((2, 3)))


class Deaf(nn.Module):
    """Ignores its input: every attribution is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.bias = nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 2) + 0 * self.conv(x).mean((2, 3))


class Pooled(nn.Module):
    """A conv after global pooling: its spatial map is 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x)))).flatten(1)


def _explain(model, method, **kw):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 10, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = cs.explain(model.eval(), x, method=method, preprocessing="none", class_names=["a", "b"], **kw)
    return e, [w for w in caught if issubclass(w.category, UnreliableResultWarning)]


def test_verdict_thresholds_from_numbers():
    flat_free = torch.arange(2 * 16.0).view(2, 4, 4)
    ok, why = verdict({"reliability": [MIN_RELIABILITY + 0.01, MIN_RELIABILITY - 0.01]}, flat_free)
    assert ok == [True, False] and why[0] is None and "correlation" in why[1]
    ok, why = verdict({"local_r2": [MIN_LOCAL_R2 - 0.05, 0.9]}, flat_free)
    assert ok == [False, True] and "R^2" in why[0]
    ok, _ = verdict({"completeness_rel_gap": [MAX_COMPLETENESS_GAP * 2, MAX_COMPLETENESS_GAP / 2]}, flat_free)
    assert ok == [False, True]
    ok, why = verdict({}, torch.stack([torch.full((4, 4), 3.0), flat_free[1]]))
    assert ok == [False, True] and "constant" in why[0]
    assert verdict({"reliability": [float("nan")] * 2}, flat_free)[0] == [True, True]


def test_integrated_gradients_one_step_warns_with_its_gap():
    torch.manual_seed(0)
    net = Curved()
    with torch.no_grad():
        net.conv.bias.fill_(0.3)
    e, caught = _explain(net, "integrated_gradients", steps=1, target=0)
    # independent oracle of the gap: the map's raw sum against F(x) - F(black)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        diff = net(x)[:, 0] - net(torch.zeros_like(x))[:, 0]
    rel = ((e.raw.flatten(1).sum(1).double() - diff.double()).abs() / diff.abs().double())
    assert (rel > MAX_COMPLETENESS_GAP).all()
    assert e.diagnostics["reliable"] == [False, False]
    assert len(caught) == 1 and "completeness gap" in str(caught[0].message)
    e, caught = _explain(net, "integrated_gradients", steps=256, target=0)
    assert e.diagnostics["reliable"] == [True, True] and not caught


def test_constant_map_warns():
    e, caught = _explain(Deaf(), "saliency")
    assert e.diagnostics["reliable"] == [False, False]
    assert "constant" in e.unreliable_because(1)
    assert len(caught) == 1


def test_cam_on_a_1x1_layer_warns():
    e, caught = _explain(Pooled(), "gradcam", layer="head")
    assert e.diagnostics["reliable"] == [False, False] and "1x1" in e.unreliable_because(0)
    assert len(caught) == 1
    e, caught = _explain(Pooled(), "gradcam", layer="conv")
    assert e.diagnostics["reliable"] == [True, True] and not caught


def test_report_and_web_payload_show_the_badge(tmp_path):
    from convscope.frontends.report import Report
    from convscope.frontends.report.build import explanation_figure
    from convscope.frontends.serve._present import explanation_payload

    e, _ = _explain(Deaf(), "saliency")
    fig = explanation_figure(e, 0, title="saliency")
    assert "constant" in fig.warning
    rep = Report("r")
    rep.section("s").rows.append([fig])
    rep.add(e)
    html = rep.render()
    assert html.count('class="badge">unreliable') == 3  # the figure, and both samples of rep.add
    assert "unreliable" in e.to_html()
    payload = explanation_payload(e, cs.get_method("saliency"), 2)
    assert "constant" in payload["unreliable"]
    good, _ = _explain(Curved(), "saliency")
    assert explanation_payload(good, cs.get_method("saliency"), 2)["unreliable"] is None
    assert 'class="badge">unreliable' not in Report("r").render()


def test_cli_prints_one_warning_line(tmp_path, cue_test):
    import numpy as np
    from PIL import Image

    img = tmp_path / "digit.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype(np.uint8)).save(img)
    out = tmp_path / "ig.png"
    r = subprocess.run([sys.executable, "-m", "convscope", "explain", str(img),
                        "-m", "digits-cnn-cue", "--method", "integrated_gradients",
                        "--option", "steps=1", "-o", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    lines = [ln for ln in r.stderr.splitlines() if "unreliable" in ln]
    assert r.returncode == 0 and out.exists(), r.stderr
    assert len(lines) == 1
    assert lines[0].startswith("convscope: warning: integrated_gradients result unreliable")


def test_cam_over_several_layers_warns_for_1x1_only_when_every_layer_is():
    """A 1x1 layer beside a spatial one: the map keeps the spatial layer's shape, so it is judged
    by the constant-map rule, not called constant for the 1x1 layer alone (review of #27)."""
    e, caught = _explain(Pooled(), "gradcam", layer=["conv", "head"])
    span = float(e.map.amax() - e.map.amin())
    assert span > 0 and e.diagnostics["reliable"] == [True, True] and not caught
