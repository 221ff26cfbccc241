"""``convscope report``: one self-contained HTML file, driven by the method registry.

Checked against independent computations: the probability chart against a forward pass done
here, the method list and notes against the registry, the embedded pictures by decoding them.
"""

from __future__ import annotations

import base64
import html as htmllib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.frontends.report.build import method_note, resolve_methods, top_k


def _write_digits(tmp_path: Path, n: int, cue_test) -> list[Path]:
    paths = []
    for i in range(n):
        a = (cue_test.images[i, 0].numpy() * 255 + 0.5).astype(np.uint8)
        p = tmp_path / f"d{i}.png"
        Image.fromarray(a, "L").save(p)
        paths.append(p)
    return paths


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True,
                          text=True, timeout=300)


def test_report_cli_writes_one_self_contained_file(tmp_path, cue_test, cue_model):
    files = _write_digits(tmp_path, 2, cue_test)
    out = tmp_path / "r.html"
    r = _cli("report", *map(str, files), "--model", "digits-cnn-cue", "--methods", "saliency",
             "gradcam", "--topk", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out.resolve()) in r.stdout
    text = out.read_text()
    # offline: no reference to anything outside the file
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    # per image: the input, 2 methods; a colour bar each
    assert text.count('<figure class="method">') == 4
    assert text.count('<figure class="input">') == 2
    # the chart's probabilities equal a forward pass done here
    for i, f in enumerate(files):
        x = torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0)[None, None]
        with torch.no_grad():
            p = torch.softmax(cue_model.model(cue_model.preprocessing.normalize(x)), 1)[0]
        expected = top_k(p.tolist(), cue_model.class_names, 3)
        section = text.split(f'<section id="s{i + 1}">')[1].split("</section>")[0]
        rows = re.findall(r'<span class="label"[^>]*>([^<]*)</span>.*?<span class="val">([\d.]+)</span>',
                          section, flags=re.S)
        assert [name for name, _ in rows] == [n for n, _ in expected]
        np.testing.assert_allclose([float(v) for _, v in rows], [v for _, v in expected], atol=6e-4)
    # each method's one-line note comes from the registry
    for name in ("saliency", "gradcam"):
        assert method_note(cs.get_method(name)) in htmllib.unescape(text)


def test_report_unknown_method_fails_cleanly(tmp_path, cue_test):
    files = _write_digits(tmp_path, 1, cue_test)
    out = tmp_path / "r.html"
    r = _cli("report", str(files[0]), "--methods", "saliencyy", "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.startswith("convscope: error:") and "saliency" in r.stderr
    assert not out.exists()
    from convscope.frontends.cli.main import main

    assert main(["report", str(files[0]), "-o", str(tmp_path / "r.png")]) == 2
    assert main(["report", str(files[0]), "--topk", "0", "-o", str(out)]) == 2
    assert not out.exists()


def test_resolve_methods_follows_the_registry():
    every = cs.list_methods()
    assert resolve_methods(None) == every
    assert resolve_methods(["all"]) == every
    for fam in {m.family for m in every}:
        assert resolve_methods([fam]) == [m for m in every if m.family == fam]
    assert [m.name for m in resolve_methods(["saliency,gradcam", "saliency"])] == ["saliency", "gradcam"]
    with pytest.raises(cs.ConvscopeError):
        resolve_methods(["no-such-method"])


def test_top_k_by_hand():
    assert top_k([0.1, 0.6, 0.3], ["a", "b", "c"], 2) == [("b", 0.6), ("c", 0.3)]
    assert top_k([0.5, 0.5], ["a", "b"], 5) == [("a", 0.5), ("b", 0.5)]  # ties keep class order


def test_report_cue_model_credits_the_cue(cue_test, cue_model):
    """The report's saliency panel for the cue model peaks on the cue (the known cause)."""
    from convscope.frontends.report import explain_report
    from convscope.methods.evaluation.pointing import pointing_hits

    imgs = [cue_test.images[i, 0].numpy() for i in range(8)]
    rep = explain_report(cue_model, imgs, methods=["saliency"])
    figs = [s.rows[0][0] for s in rep.sections[:8]]
    assert all(f.kind == "method" and f.colorbar == "unsigned" for f in figs)
    e = cs.explain(cue_model, imgs, method="saliency")  # the same images, explained directly
    assert pointing_hits(e.map, cue_test.masks[:8], 1).float().mean() >= 0.5
    for j, f in enumerate(figs):  # the panels show exactly these maps
        shown = Image.open(io.BytesIO(base64.b64decode(f.src.split(",", 1)[1]))).convert("RGB")
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(e.overlay(j)))


def test_failing_method_is_shown_not_fatal():
    """A method that cannot run on a model gets a panel that says why; the others still render."""
    from convscope.frontends.report import explain_report

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))  # no spatial layer
    lm = cs.load_model(net, class_names=["a", "b", "c"],
                       preprocessing=cs.Preprocessing(size=(8, 8), resize=None))
    rep = explain_report(lm, [np.zeros((8, 8, 3), np.uint8)], methods=["saliency", "gradcam"])
    figs = rep.sections[0].rows[0]
    assert [f.kind for f in figs] == ["method", "skipped"]
    assert "gradcam" in figs[1].title and figs[1].caption.startswith("not computed")
    html = rep.render()
    assert 'class="placeholder"' in html


def test_filters_section_shows_every_first_layer_filter(cue_model, cue_test):
    import importlib.util

    if importlib.util.find_spec("convscope.methods.featvis") is None:
        return  # the flags only exist with feature visualisation
    from convscope.frontends.report import explain_report
    from convscope.frontends.report.featvis_sections import section_builders

    rep = explain_report(cue_model, [cue_test.images[0, 0].numpy()], methods=["saliency"],
                         extra_sections=section_builders(filters=True))
    sec = rep.sections[-1]
    assert sec.title == "First-layer filters"
    first = next(m for m in cue_model.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert len(sec.rows[0]) == first.out_channels


def test_report_repr_html_is_the_whole_page_in_one_iframe():
    """What a notebook shows for a report: one iframe whose ``srcdoc`` is the page, escaped so that
    quotes, ampersands and tags in titles cannot end the attribute early."""
    from html.parser import HTMLParser

    from convscope.frontends.report import Report

    rep = Report('a "quoted" <b>title</b> & \'more\'', "intro with </iframe> in it")
    rep.section("s", "note").rows.append(
        [Report.figure(Image.new("RGB", (8, 8), "red"), caption="c & d", title="t")])

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    p = Tags()
    p.feed(rep._repr_html_())
    p.close()
    assert [t for t, _ in p.tags] == ["iframe"]  # nothing of the page leaks out of the attribute
    attrs = p.tags[0][1]
    stamp = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d")  # the one line that changes by the minute
    assert stamp.sub("", attrs["srcdoc"]) == stamp.sub("", rep.render())
    assert attrs["title"] == rep.title and "sandbox" in attrs and "height" in attrs["style"]


def test_explain_report_old_argument_order_still_works_with_a_deprecation_warning(cue_model, cue_test):
    """``explain_report(images, model)`` (the old order) builds the same report, and warns."""
    import pytest

    from convscope.frontends.report import explain_report

    imgs = [cue_test.images[0, 0].numpy()]
    new = explain_report(cue_model, imgs, methods=["saliency"])
    with pytest.warns(DeprecationWarning, match=r"call explain_report\(model, images\)"):
        old = explain_report(imgs, cue_model, methods=["saliency"])
    assert [s.title for s in old.sections] == [s.title for s in new.sections]
    assert old.sections[0].rows[0][0].src == new.sections[0].rows[0][0].src


def test_report_with_a_target_leaves_a_training_batchnorm_model_unchanged():
    """The report's target check runs in the state guard: a model in training mode with BatchNorm
    keeps its running statistics and mode (issue #27 review); a (B, C, H, W) tensor is B images."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 16}, class_names=["a", "b"])
    rep = cs.explain_report(lm, torch.rand(2, 3, 16, 16), methods=["saliency"], target=0, progress=False)
    assert "image 2" in rep.render()
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
