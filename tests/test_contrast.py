"""Contrastive targets ("why a rather than b"): the score a - b, for every method, with the
linearity and completeness that integrated gradients must keep."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.core.errors import TargetError
from convscope.frontends.cli.main import main


class PlainNet(nn.Module):
    """Not ours: unnormalised pixels, functional ReLUs, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        nn.init.normal_(self.fc.weight, std=3.0)  # logit differences of order 1, not 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x))
        h = F.relu(self.c2(h))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def plain():
    return cs.load_model(PlainNet(), preprocessing="none", class_names=["cat", "dog", "wolf", "husky"])


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 24, 24, generator=g)


def test_integrated_gradients_of_a_contrast_is_the_difference_and_complete(plain, images):
    kw = dict(method="integrated_gradients", space="pixels", steps=64, baseline="black")
    both = cs.explain(plain, images, target="wolf-vs-husky", **kw)
    a = cs.explain(plain, images, target="wolf", **kw)
    b = cs.explain(plain, images, target="husky", **kw)
    # linearity: IG(a - b) = IG(a) - IG(b), exactly up to float rounding
    torch.testing.assert_close(both.raw, a.raw - b.raw, atol=1e-5, rtol=1e-4)
    # completeness: the attributions sum to the change of the logit difference
    net = plain.model
    with torch.no_grad():
        d = net(images)
        d0 = net(torch.zeros_like(images))
    want = (d[:, 2] - d[:, 3]) - (d0[:, 2] - d0[:, 3])
    got = both.raw.double().sum((1, 2, 3))
    assert (want.abs() > 0.05).all()  # differences large enough for a 1% check to mean something
    assert ((got - want.double()).abs() <= 0.01 * want.double().abs()).all(), (got, want)
    assert both.target_name(0) == "wolf vs husky" and both.contrast == (3, 3, 3)


def test_gradient_and_occlusion_of_a_contrast_are_differences(plain, images):
    for method, opts in (("saliency", {}), ("occlusion", {"window": 6, "stride": 6})):
        both = cs.explain(plain, images, method=method, target=cs.contrast("cat", "dog"), space="pixels",
                          **opts)
        a = cs.explain(plain, images, method=method, target="cat", space="pixels", **opts)
        b = cs.explain(plain, images, method=method, target="dog", space="pixels", **opts)
        if method == "saliency":  # the signed gradient is linear in the score
            torch.testing.assert_close(both.raw, a.raw - b.raw, atol=1e-6, rtol=1e-5)
        else:  # occlusion's drop in score is too
            torch.testing.assert_close(both.map, a.map - b.map, atol=1e-5, rtol=1e-4)


def test_string_object_and_callable_forms_agree(plain, images):
    kw = dict(method="gradient_x_input", space="pixels")
    s = cs.explain(plain, images, target="0-vs-1", **kw)
    o = cs.explain(plain, images, target=cs.contrast(0, 1), **kw)
    c = cs.explain(plain, images, target=lambda out: out[:, 0] - out[:, 1], **kw)
    torch.testing.assert_close(s.map, o.map)
    torch.testing.assert_close(s.map, c.map)


def test_pred_vs_runner_up_is_resolved_per_image_on_the_clean_input(plain, images):
    e = cs.explain(plain, images, method="saliency", target="pred-vs-top2", space="pixels")
    with torch.no_grad():
        top = plain.model(images).topk(2, dim=1).indices
    assert list(e.targets) == top[:, 0].tolist() and list(e.contrast) == top[:, 1].tolist()
    d = e.to_dict(include_map=False)
    assert d["contrast"] == top[:, 1].tolist() and " vs " in d["target_names"][0]


def test_bad_contrasts_are_one_line_errors(plain, images):
    for bad in ("cat-vs-cat", "cat-vs-zebra", "9-vs-0"):
        with pytest.raises(TargetError):
            cs.explain(plain, images, method="saliency", target=bad, space="pixels")
    with pytest.raises(TargetError):
        cs.contrast([1, 2], 0)


def test_every_registered_method_takes_a_contrast(cue_model, cue_test):
    """Generated from the registry: a new method is covered without editing this test."""
    x = cue_test.images[:2]
    for info in cs.list_methods():
        e = cs.explain(cue_model, x, method=info.name, target="pred-vs-top2", space="pixels",
                       **dict(info.fast_options))
        assert torch.isfinite(e.map).all(), info.name
        assert e.contrast is not None and all(a != b for a, b in zip(e.targets, e.contrast, strict=True))


def test_cli_explain_with_a_contrast(tmp_path, capsys, cue_test):
    from PIL import Image

    img = tmp_path / "d.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype("uint8")).save(img)
    out = tmp_path / "out.json"
    assert main(["explain", str(img), "--model", "digits-cnn-cue", "--method", "saliency",
                 "--target", "pred-vs-top2", "-o", str(out)]) == 0
    meta = json.loads(out.read_text())
    assert meta["contrast"] is not None and " vs " in meta["target_names"][0]


# --- class grids and method grids ------------------------------------------------------------


def test_class_grid_is_one_call_on_one_scale_with_probabilities(plain, images):
    from convscope.methods.grids import explain_classes

    g = explain_classes(plain, images[:1], topk=3, method="gradient_x_input", space="pixels")
    with torch.no_grad():
        top = plain.model(images[:1])[0].topk(3).indices.tolist()
    assert [e.targets[0] for e in g.panels] == top
    # each panel equals explaining that class alone
    for e in g.panels:
        alone = cs.explain(plain, images[:1], method="gradient_x_input", target=e.targets[0], space="pixels")
        torch.testing.assert_close(e.map, alone.map)
    # one scale: the panel with the most attribution reaches 1, the others are not stretched
    peaks = [float(abs(g.heatmap(i)).max()) for i in range(3)]
    raw = [float(e.map.abs().max()) for e in g.panels]
    assert max(peaks) == pytest.approx(1.0)
    assert peaks == pytest.approx([r / max(raw) for r in raw], rel=1e-5)
    d = g.to_dict()
    assert d["kind"] == "classes" and [p["targets"][0] for p in d["panels"]] == top


def test_class_grid_takes_names_and_contrasts(plain, images, tmp_path):
    from convscope.methods.grids import explain_classes

    g = explain_classes(plain, images[:1], classes=["wolf", "husky", "wolf-vs-husky"],
                        method="integrated_gradients", space="pixels")
    torch.testing.assert_close(g.panels[2].raw, g.panels[0].raw - g.panels[1].raw, atol=1e-5, rtol=1e-4)
    assert g.panels[2].target_name(0) == "wolf vs husky"
    for ext in ("png", "json", "npy"):
        g.save(tmp_path / f"g.{ext}")
    import numpy as np

    assert np.load(tmp_path / "g.npy").shape == (3, 24, 24)


def test_method_grid_panels_equal_each_method_alone(plain, images, tmp_path):
    from convscope.methods.grids import explain_methods

    g = explain_methods(plain, images[:1], ["saliency", "occlusion"], target="dog", space="pixels",
                        options={"occlusion": {"window": 6, "stride": 6}})
    assert [e.method for e in g.panels] == ["saliency", "occlusion"] and g.scale is None
    alone = cs.explain(plain, images[:1], method="occlusion", target="dog", window=6, stride=6,
                       space="pixels")
    torch.testing.assert_close(g.panels[1].map, alone.map)
    from PIL import Image

    g.save(tmp_path / "m.png")
    im = Image.open(tmp_path / "m.png")
    assert im.width > 1.5 * im.height  # a row of three panels
    with pytest.raises(Exception, match="not among the methods"):
        explain_methods(plain, images[:1], ["saliency"], options={"occlusion": {}}, space="pixels")


def test_cli_grids_and_labelled_figure(tmp_path, cue_test):
    from PIL import Image

    img = tmp_path / "d.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype("uint8")).save(img)
    assert main(["explain", str(img), "--model", "digits-cnn", "--method", "saliency,gradcam",
                 "-o", str(tmp_path / "grid.json")]) == 0
    d = json.loads((tmp_path / "grid.json").read_text())
    assert d["kind"] == "methods" and [p["method"] for p in d["panels"]] == ["saliency", "gradcam"]
    assert main(["explain", str(img), "--model", "digits-cnn", "--method", "gradcam", "--compare", "top3",
                 "-o", str(tmp_path / "cmp.json")]) == 0
    d = json.loads((tmp_path / "cmp.json").read_text())
    assert d["kind"] == "classes" and len(d["panels"]) == 3 and d["scale"] > 0
    assert main(["explain", str(img), "--model", "digits-cnn", "-o", str(tmp_path / "fig.png")]) == 0
    assert main(["explain", str(img), "--model", "digits-cnn", "--bare",
                 "-o", str(tmp_path / "bare.png")]) == 0
    fig, bare = Image.open(tmp_path / "fig.png"), Image.open(tmp_path / "bare.png")
    assert fig.width > 2 * fig.height and bare.width == bare.height  # labelled figure vs bare overlay


def test_report_compares_classes(tmp_path, cue_test):
    from PIL import Image

    from convscope.frontends.report import explain_report

    img = tmp_path / "d.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype("uint8")).save(img)
    rep = explain_report("digits-cnn", [str(img)], methods=["saliency"], compare=3)
    html = rep.render()
    assert "classes compared" in html and "one colour scale" in html
    assert main(["report", str(img), "--model", "digits-cnn", "--methods", "saliency", "--compare", "2",
                 "-o", str(tmp_path / "r.html")]) == 0
    assert "classes compared" in (tmp_path / "r.html").read_text()
