"""One result protocol (convscope.core.result.Result): every result type saves by extension through one
dispatch, renders its HTML block from the packaged template, and shows itself in notebooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convscope.core.errors import InputError
from convscope.core.result import Result, render_template


def _result_types() -> list[type]:
    from convscope.core.results import Explanation
    from convscope.methods.dataset import Audit, Embedding, Neighbors, TopActivations
    from convscope.methods.evaluation import SanityResult
    from convscope.methods.featvis import Visualization
    from convscope.methods.grids import Grid
    from convscope.methods.synthesis import AdversarialResult, SynthesisResult

    return [Explanation, Visualization, AdversarialResult, SynthesisResult, Grid, TopActivations,
            Neighbors, Embedding, Audit, SanityResult]


@pytest.mark.parametrize("cls", _result_types(), ids=lambda c: c.__name__)
def test_every_result_type_follows_the_protocol(cls):
    assert issubclass(cls, Result)
    for name in ("save", "to_html", "_repr_html_"):  # implemented once, in Result (Audit: its iframe)
        if not (cls.__name__ == "Audit" and name in ("to_html", "_repr_html_")):
            assert getattr(cls, name) is getattr(Result, name), f"{cls.__name__}.{name} re-implemented"
    assert cls.save_formats and all(f in (".png", ".npy", ".json", ".html") for f in cls.save_formats)
    for fmt, meth in ((".png", "png"), (".npy", "npy_array")):
        if fmt in cls.save_formats:  # a format it accepts has its own writer
            assert getattr(cls, meth) is not getattr(Result, meth), f"{cls.__name__}.{meth}"


def _synth(n: int = 2):
    from convscope.methods.synthesis import SynthesisResult

    gen = torch.Generator().manual_seed(0)
    return SynthesisResult("inversion", torch.rand(n, 3, 16, 16, generator=gen),
                           tuple(f"<layer {i}>" for i in range(n)), history={"loss": [2.0, 1.0]},
                           layers=("features.3",))


def test_save_dispatches_on_the_extension(tmp_path):
    r = _synth()
    assert r.save(tmp_path / "a.PNG").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_array_equal(np.load(r.save(tmp_path / "a.npy")), r.images.numpy())
    assert json.loads(r.save(tmp_path / "a.json").read_text()) == r.to_dict()
    with pytest.raises(InputError, match=r"use a \.png, \.npy or \.json file name"):
        r.save(tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()


def test_visualization_html_from_the_template_escapes_titles():
    from convscope.methods.featvis import Visualization

    v = Visualization(torch.rand(3, 1, 8, 8), ("a<b", "c", "d"))
    html = v.to_html()
    assert v._repr_html_() == html and html.count("<img") == 3
    assert "a&lt;b" in html and "a<b" not in html and "pixelated" in html
    assert render_template("result.html.j2", figures=v.html_figures()) == html


def test_figure_results_html_is_the_picture_with_its_caption():
    r = _synth()
    html = r.to_html()
    assert html.count("<img") == 1 and "inversion @ features.3" in html
    assert r._repr_png_() == r.png()


def test_report_add_shows_any_result(tmp_path):
    from convscope.frontends.report import Report
    from convscope.methods.featvis import Visualization

    rep = Report("t")
    v = Visualization(torch.rand(2, 1, 8, 8), ("first", "second"))
    sec = rep.add(v, note="two maps")
    assert rep.sections == [sec] and sec.title == "Visualization" and sec.note == "two maps"
    assert [f.caption for f in sec.rows[0]] == ["first", "second"]
    assert rep.add(_synth(), title="made").rows[0][0].src.startswith("data:image/png;base64,")

    class Text:
        def to_html(self) -> str:
            return "<p>words</p>"

    assert rep.add(Text()).html_blocks == ["<p>words</p>"]
    with pytest.raises(InputError, match="cannot add a int to a report"):
        rep.add(3)
    html = rep.write(tmp_path / "r.html").read_text()
    assert "made" in html and "second" in html and "<p>words</p>" in html


def test_sanity_result_saves_its_curve_and_rows(tmp_path):
    from convscope.methods.evaluation import SanityResult

    rho = torch.tensor([[0.9, 0.8], [0.2, 0.0]], dtype=torch.float64)
    for mode in ("cascading", "independent"):
        r = SanityResult("saliency", mode, ["fc", "conv"], rho, rho.clone(), threshold=0.5)
        assert r.save(tmp_path / f"{mode}.png").read_bytes()[:4] == b"\x89PNG"
        d = json.loads(r.save(tmp_path / f"{mode}.json").read_text())
        assert [row["layer"] for row in d["stages"]] == ["fc", "conv"]
        assert d["passed"] == (True if mode == "cascading" else None)  # mean 0.475 < 0.5
        assert d["similarity"] == pytest.approx(0.475)
    failing = SanityResult("m", "cascading", ["fc"], rho[:1], rho[:1], threshold=0.5)  # mean 0.85
    assert "verdict=FAIL" in repr(failing) and "verdict" not in repr(r)  # r: the independent check
