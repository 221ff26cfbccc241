"""Concept relevance (CRP): conditional heatmaps against zennit on a split network, completeness
over all channels, batched = one pass per concept, the planted cue, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zennit  # noqa: E402, F401  (the dev extra has it: a missing peer fails, not skips)
from helpers import assert_same_state, model_state
from torch import nn
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import EpsilonPlus  # noqa: E402

import convscope as cs
from convscope.core.errors import InputError, LayerNotFoundError, MethodError
from convscope.methods.crp import conditional_relevance, layer_relevance

PLAIN = cs.Preprocessing(size=(16, 16), mean=(0.0,) * 3, std=(1.0,) * 3, resize=None)


def _net(seed: int = 0) -> nn.Sequential:
    """features (conv-BN-ReLU-pool-conv-BN-ReLU) then a GAP head, as one Sequential."""
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    net = nn.Sequential(features, head).eval()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def _score(t: int):
    return lambda out: out[:, t]


def test_conditional_heatmap_equals_zennit_on_the_split_network():
    """Oracle: LRP of the head alone gives the layer's relevance; zennit's LRP of the features
    alone, started from that relevance masked to one channel, is the channel's heatmap."""
    net = _net()
    x = torch.rand(1, 3, 16, 16)
    t = 2
    a = net[0](x).detach()
    out = net[1](a).detach()
    start = torch.zeros_like(out)
    start[:, t] = out[:, t]
    with Gradient(net[1], EpsilonPlus()) as attr:
        _, r_layer = attr(a.clone().requires_grad_(True), start)
    base = layer_relevance(net, x, "0", _score(t), composite="epsilon_plus")
    assert torch.allclose(base["layer"], r_layer, rtol=1e-4, atol=1e-6)
    masks = torch.eye(8)[[5, 1, 3]]
    cond = conditional_relevance(net, x, "0", _score(t), masks, composite="epsilon_plus")
    for row, c in enumerate([5, 1, 3]):
        mask = torch.zeros_like(r_layer)
        mask[:, c] = 1
        with Gradient(net[0], EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])) as attr:
            _, ref = attr(x.clone().requires_grad_(True), r_layer * mask)
        assert torch.allclose(cond[row:row + 1], ref, rtol=1e-4, atol=1e-7), c


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_all_channels_sum_to_the_unconditional_heatmap(composite):
    net = _net(1)
    x = torch.rand(1, 3, 16, 16)
    r = cs.concepts(net, x, layer="0.5", k=8, composite=composite, preprocessing=PLAIN, batch_size=3)
    total = torch.stack([c.heatmap for c in r.concepts]).sum(0)
    assert ((total - r.heatmap).abs().sum() / r.heatmap.abs().sum()) < 1e-4
    assert abs(sum(c.share for c in r.concepts) - 1) < 1e-5
    assert [c.relevance for c in r.concepts] == sorted((c.relevance for c in r.concepts), reverse=True)


def test_batched_equals_one_pass_per_concept():
    net = _net(2)
    x = torch.rand(1, 3, 16, 16)
    masks = torch.eye(8)
    batched = conditional_relevance(net, x, "0.6", _score(1), masks, batch_size=8)
    one_by_one = conditional_relevance(net, x, "0.6", _score(1), masks, batch_size=1)
    assert torch.allclose(batched, one_by_one, rtol=1e-5, atol=1e-7)


def test_groups_add_up_their_channels():
    net = _net(3)
    x = torch.rand(1, 3, 16, 16)
    single = {c.channels[0]: c for c in cs.concepts(net, x, layer="0.5", k=8, preprocessing=PLAIN).concepts}
    r = cs.concepts(net, x, layer="0.5", k=2, groups={"a": [0, 3], "b": [1, 2, 7]}, preprocessing=PLAIN)
    for c in r.concepts:
        assert np.isclose(c.relevance, sum(single[i].relevance for i in c.channels), rtol=1e-5)
        assert torch.allclose(c.heatmap, sum(single[i].heatmap for i in c.channels), rtol=1e-4, atol=1e-7)
    assert {c.name for c in r.concepts} == {"a", "b"}


def _cue_mass(lm, cue_test, n, layer):
    out = []
    for i in range(n):
        r = cs.concepts(lm, lm.preprocessing.normalize(cue_test.images[i:i + 1]), layer=layer, k=1)
        h = r.concepts[0].heatmap.clamp(min=0)
        m = F.max_pool2d(cue_test.masks[i].float()[None, None], 3, 1, 1)[0, 0]  # 1 px tolerance
        out.append(float((h * m).sum() / h.sum()))
    return np.median(out)


def test_top_concept_sits_on_the_planted_cue(cue_model, clean_model, cue_test):
    """On the cue model the most relevant channel's heatmap puts most of its positive mass on the
    cue (measured median 0.71 over 30 images, the cue being 10 % of the image with 1 px
    tolerance); on the model trained without the cue, far less (measured 0.02)."""
    import warnings

    assert _cue_mass(cue_model, cue_test, 12, "features.3") > 0.5
    with warnings.catch_warnings():
        # some clean-model decisions have no positive relevance at the layer, and say so
        warnings.simplefilter("ignore", cs.errors.UnreliableResultWarning)
        assert _cue_mass(clean_model, cue_test, 12, "features.3") < 0.25


def test_result_saves_and_shows(cue_model, cue_test, tmp_path):
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    r = cs.concepts(cue_model, x, k=3, references=cue_model.preprocessing.normalize(cue_test.images[:40]),
                    n_references=2)
    assert len(r.concepts) == 3 and r.layer == "features.9"
    assert r.model_info["default_layer"] == "features.9"
    assert r.to_dict()["lrp"]["composite"] == "epsilon_plus_flat"
    for c in r.concepts:
        assert c.references.shape[0] == 2 and c.activation_references.shape[0] == 2
    for ext in (".png", ".json", ".npy", ".html"):
        assert r.save(tmp_path / f"c{ext}").stat().st_size > 100
    assert np.load(tmp_path / "c.npy").shape == (3, 32, 32)
    assert "ch " in repr(r) and "<img" in r.to_html()
    sec = cs.Report("concepts").add(r)  # the report section comes from the result protocol
    assert sec.title.startswith("Concepts of features.9") and sec.rows[0][0].src.startswith("data:image/png")


def test_model_is_bit_identical_after_calls_and_failures():
    net = _net(4)
    net[0][1].train()
    before = model_state(net)
    x = torch.rand(1, 3, 16, 16)
    cs.concepts(net, x, layer="0.5", k=2, preprocessing=PLAIN, target=1)
    assert_same_state(before, model_state(net))
    with pytest.raises(ZeroDivisionError):
        cs.concepts(net, x, layer="0.5", k=2, preprocessing=PLAIN, target=lambda o: 1 / 0)
    assert_same_state(before, model_state(net))


@pytest.mark.parametrize("kw,err,msg", [
    ({"composite": "nosuch"}, MethodError, "composite"),
    ({"layer": "0.55"}, LayerNotFoundError, "no layer named"),
    ({"layer": "1.2"}, MethodError, "no channels"),
    ({"k": 9}, InputError, "only 8 candidate"),
    ({"k": 0}, InputError, "k must be"),
    ({"k": float("nan")}, InputError, "k must be"),
    ({"k": 2, "channels": [0, 8]}, InputError, "out of range"),
    ({"k": 1, "groups": {"a": []}}, InputError, "at least one channel"),
    ({"k": 1, "groups": [[1]], "channels": [1]}, InputError, "not both"),
    ({"batch_size": 0}, InputError, "batch_size"),
    ({"n_references": 10**6}, InputError, "n_references"),
])
def test_bad_input_is_one_line(kw, err, msg):
    net = _net(5)
    before = model_state(net)
    with pytest.raises(err, match=msg) as e:
        cs.concepts(net, torch.rand(1, 3, 16, 16), **{"layer": "0.5", **kw}, preprocessing=PLAIN)
    assert "\n" not in str(e.value)
    assert_same_state(before, model_state(net))


def test_no_positive_relevance_warns():
    net = _net(4)  # class 3 of this random net has negative relevance at layer 0.5
    with pytest.warns(cs.errors.UnreliableResultWarning, match="not positive"):
        r = cs.concepts(net, torch.rand(1, 3, 16, 16), layer="0.5", k=2, preprocessing=PLAIN, target=3)
    assert r.notes and r.layer_relevance <= 0


def test_one_image_at_a_time():
    with pytest.raises(InputError, match="one image at a time"):
        cs.concepts(_net(), torch.rand(2, 3, 16, 16), layer="0.5", preprocessing=PLAIN)


def _cli(*args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, timeout=300)


def test_cli(cue_test, tmp_path):
    from PIL import Image

    png = tmp_path / "digit.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype(np.uint8)).save(png)
    out = tmp_path / "c.json"
    r = _cli("concepts", str(png), "-m", "digits-cnn-cue", "--k", "3", "--group", "a=0-31",
             "--group", "b=32-63", "--k", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(out.read_text())
    assert {c["name"] for c in got["concepts"]} == {"a", "b"}
    assert abs(sum(c["share"] for c in got["concepts"]) - 1) < 1e-5  # the two groups cover the layer
    for args, msg in [(["--k", "65"], "only 64 candidate"), (["--layer", "nope"], "no layer named"),
                      (["--composite", "nosuch"], "invalid choice"), (["--group", "x"], "NAME=CHANNELS")]:
        bad = tmp_path / "bad.png"
        r = _cli("concepts", str(png), "-m", "digits-cnn-cue", *args, "-o", str(bad))
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not bad.exists()
