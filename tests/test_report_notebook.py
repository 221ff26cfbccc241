"""Results display inline in Jupyter: ``_repr_png_`` / ``_repr_html_`` give what a notebook shows.

When IPython is installed, the notebook's own display formatter is used; otherwise the repr
methods are called directly, as the formatter would.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re

import numpy as np
import torch
from PIL import Image

import convscope as cs


def _display_data(obj) -> dict:
    """What Jupyter would put in a display_data message for ``obj``."""
    if importlib.util.find_spec("IPython") is not None:
        from IPython.core.formatters import DisplayFormatter

        data, _ = DisplayFormatter().format(obj)
        if isinstance(data.get("image/png"), str):  # IPython base64-encodes PNG bytes
            data["image/png"] = base64.b64decode(data["image/png"])
        return data
    data = {"text/plain": repr(obj)}
    for mime, meth in (("image/png", "_repr_png_"), ("text/html", "_repr_html_")):
        f = getattr(obj, meth, None)
        if f is not None:
            out = f()
            if out is not None:
                data[mime] = out
    return data


def _imgs(html: str) -> list[Image.Image]:
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    out = []
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:40]  # nothing fetched from outside
        out.append(Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))))
    return out


def result_classes() -> list[str]:
    names = ["Explanation"]
    if importlib.util.find_spec("convscope.methods.featvis") is not None:
        names.append("Visualization")
    return names


def test_every_result_class_has_notebook_reprs():
    import convscope.core.results as results

    for name in result_classes():
        cls = getattr(results, name, None)
        if cls is None:
            from convscope.methods import featvis

            cls = getattr(featvis, name)
        assert callable(getattr(cls, "_repr_png_", None)), name
        assert callable(getattr(cls, "_repr_html_", None)), name


def test_explanation_renders_inline(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    e = cs.explain(cue_model, x, method="saliency")
    data = _display_data(e)
    png = Image.open(io.BytesIO(data["image/png"]))
    assert png.format == "PNG"
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(e.overlay(0)))
    html = data["text/html"]
    assert "<script" not in html.lower()
    pictures = _imgs(html)
    assert len(pictures) == 2 * len(e)  # input and overlay per sample
    for i in range(len(e)):
        assert e.title(i) in html
    # the overlay shown for sample 1 is that sample's, not sample 0's
    shown = np.asarray(pictures[3].convert("RGB"))
    expected = np.asarray(e.overlay(1, min_side=160).convert("RGB"))
    np.testing.assert_array_equal(shown, expected)


def test_html_escapes_names():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    lm = cs.load_model(net, class_names=["<b>bold</b>", "a&b"])
    e = cs.explain(lm, torch.randn(1, 3, 16, 16), method="saliency", target=0)
    html = _display_data(e)["text/html"]
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_visualization_renders_inline_when_featvis_is_installed(cue_model):
    if "Visualization" not in result_classes():
        return  # feature visualisation not installed: nothing of it to render
    from convscope.methods.featvis import filters

    vis = filters(cue_model)
    data = _display_data(vis)
    png = Image.open(io.BytesIO(data["image/png"]))
    assert png.format == "PNG" and png.width > 0
    assert "<script" not in data["text/html"].lower()
    assert _imgs(data["text/html"])  # embedded pictures decode


def test_figures_show_as_pictures_without_pyplot_or_matplotlib_magic(cue_model, cue_test):
    """``figure()`` is made without pyplot; a notebook that never ran ``%matplotlib inline`` nor
    imported pyplot still shows it as a PNG (the formatter here has no matplotlib printers)."""
    from convscope.methods.synthesis import SynthesisResult

    e = cs.explain(cue_model, cue_model.preprocessing.normalize(cue_test.images[:1]), method="saliency")
    made = SynthesisResult("texture", torch.rand(2, 3, 16, 16), ("a", "b"), history={"loss": [2.0, 1.0]})
    for fig, panels in ((e.figure(), 3), (made.figure(), 3)):
        png = Image.open(io.BytesIO(_display_data(fig)["image/png"]))
        assert png.format == "PNG" and png.width > panels * 0.8 * png.height  # a row of panels
