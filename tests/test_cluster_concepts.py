"""The audit with LRP, and the concepts behind its suspect clusters (#31 item 4): on the cue model,
a class whose images carry the planted cue in one corner is flagged, and the channel carrying the
cluster's relevance has its conditional heatmap on the cue."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.core.errors import InputError, MethodError
from convscope.data.sources import TensorSource
from convscope.data.toydata import digits, planted_cue
from convscope.frontends.cli.main import main
from convscope.methods.crp import layer_relevance

CLS = 3


@pytest.fixture(scope="module")
def cued():
    """The digits test set, half of class 3 stamped with class 3's cue in the top-left corner."""
    xt, yt = digits().split("test")
    cue_cls = torch.where(yt == CLS, yt, torch.full_like(yt, -1))
    return planted_cue(xt, yt, cue_classes=cue_cls, p=0.5, corner=0, seed=0), yt


@pytest.fixture(scope="module")
def lrp_audit(cue_model, cued):
    pc, yt = cued
    src = TensorSource(pc.images, cue_model.preprocessing, yt, space="pixels")
    return cs.audit(cue_model, src, method="lrp", classes=[CLS], progress=False, embedding="none"), src


def test_the_lrp_audit_flags_the_cued_cluster(lrp_audit, cued):
    a, _ = lrp_audit
    pc, _ = cued
    assert a.method == "lrp" and len(a.suspects) == 1
    _, k = a.suspects[0]
    assert pc.masks[k.flagged].flatten(1).any(1).float().mean() > 0.9  # its images carry the cue


def test_the_top_concept_of_the_suspect_sits_on_the_cue(cue_model, lrp_audit, cued):
    a, src = lrp_audit
    pc, _ = cued
    cc = cs.cluster_concepts(a, cue_model, src, "features.3", k=3)
    (s,) = cc.suspects
    assert s.class_index == CLS and len(s.channels) == 3
    # the cue is 8x8 of a 32x32 image (6% of it); the top concept puts most of its mass there
    h = s.concept(s.channels[0]).heatmap.clamp(min=0)
    m = pc.masks[s.example].float()
    assert float((h * m).sum() / h.sum()) > 0.5
    # the mean shares are the mean over the cluster's images of each channel's share of the layer's
    # relevance for the class (computed here image by image)
    shares = []
    for i in s.images:
        rl = layer_relevance(cue_model.model, src[int(i)][0][None], "features.3",
                             lambda o: o[:, CLS])["layer"][0].flatten(1).sum(1)
        if rl.sum() > 0:
            shares.append(rl / rl.sum())
    mean = torch.stack(shares).mean(0)
    assert list(s.channels) == torch.argsort(mean, descending=True)[:3].tolist()
    np.testing.assert_allclose(s.mean_share, mean[list(s.channels)].numpy(), rtol=1e-4)


def test_cluster_concepts_save_and_show(cue_model, lrp_audit, tmp_path):
    a, src = lrp_audit
    with pytest.warns(cs.errors.UnreliableResultWarning):  # its dead channels are named
        atlas = cs.concept_atlas(cue_model, src, "features.3", n=3, limit=48, out=tmp_path / "a.zarr")
    cc = cs.cluster_concepts(a, cue_model, src, "features.3", k=2, max_images=8, atlas=atlas, n_references=3)
    assert len(cc.suspects[0].images) == 8
    for ch in cc.suspects[0].channels:  # the reference patches are the atlas's
        c = cc.suspects[0].concept(ch)
        np.testing.assert_array_equal(c.references, atlas.references(ch, "relevance"))
        np.testing.assert_array_equal(c.activation_references, atlas.references(ch, "activation"))
    d = json.loads(cc.save(tmp_path / "c.json").read_text())
    assert d["suspects"][0]["class"] == str(CLS) or d["suspects"][0]["class_index"] == CLS
    assert cc.save(tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean relevance share" in cc.save(tmp_path / "c.html").read_text()
    none = cs.cluster_concepts(replace(a, classes=[]), cue_model, src, "features.3")
    assert none.suspects == () and "no suspect" in none.save(tmp_path / "n.html").read_text()


@pytest.mark.parametrize("kw, err, msg", [
    ({"k": 0}, InputError, "k must be"),
    ({"k": float("nan")}, InputError, "k must be"),
    ({"max_images": -1}, InputError, "max_images must be"),
    ({"max_images": float("inf")}, InputError, "max_images must be"),
    ({"composite": "nope"}, MethodError, "unknown LRP composite"),
    ({"layer": "classifier"}, MethodError, "has no channels"),
    ({"audit": "audit.json"}, InputError, "must be an Audit"),
    ({"data": "short"}, InputError, "pass the data set the audit was run on"),
])
def test_bad_input_is_one_line(cue_model, lrp_audit, cued, kw, err, msg):
    a, src = lrp_audit
    args = {"audit": a, "data": src, "layer": "features.3", **kw}
    if args["data"] == "short":
        args["data"] = TensorSource(cued[0].images[:20], cue_model.preprocessing, space="pixels")
    with pytest.raises(err, match=msg) as e:
        cs.cluster_concepts(args.pop("audit"), cue_model, args.pop("data"), args.pop("layer"), **args)
    assert "\n" not in str(e.value)


def test_cli_audit_lrp_with_concepts(cued, tmp_path, capsys):
    pc, yt = cued
    root = tmp_path / "data"
    for c in (CLS, 5):
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(yt.numpy() == c):
            Image.fromarray((pc.images[i, 0].numpy() * 255).astype(np.uint8)).save(root / str(c) / f"{i}.png")
    rc = main(["audit", "-m", "digits-cnn-cue", "--data", str(root), "--method", "lrp", "--only-classes",
               str(CLS), "--embedding", "none", "--concepts-layer", "features.3", "--concepts-k", "2",
               "-o", str(tmp_path / "out"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "concepts: class 3, cluster" in out
    assert (tmp_path / "out" / "concepts.html").is_file() and (tmp_path / "out" / "concepts.png").is_file()
    rc = main(["audit", "-m", "digits-cnn-cue", "--data", str(root), "--method", "lrp", "--only-classes",
               str(CLS), "--embedding", "none", "--concepts-layer", "classifier", "-o", str(tmp_path / "bad"),
               "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no channels" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "audit.json").exists()  # nothing half-written
