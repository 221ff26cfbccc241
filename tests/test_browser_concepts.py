"""The concept-test view (``/concepts``) in real headless Chromium, as ``test_browser.py`` drives it:
two saved tests, drawn with their layers, verdicts and warnings, nothing fetched from elsewhere.

If Chromium is missing this test fails, it does not skip (see ``test_browser.py``).
"""

from __future__ import annotations

import json
import warnings

import torch
from test_browser import _page, browser  # noqa: F401 (browser: a fixture)
from test_concepts import _plain

import convscope as cs


def test_concepts_view_draws_every_saved_test(browser, tmp_path):  # noqa: F811
    from convscope.frontends.serve import Engine
    from convscope.frontends.serve.app import create_app, running
    from convscope.frontends.serve.concepts import ConceptView

    lm = _plain()
    g = torch.Generator().manual_seed(7)
    paths = []
    for k, layers in enumerate((["conv1", "conv2"], "conv2")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cs.concept_test(lm, torch.rand(10, 3, 16, 16, generator=g), k,
                                  class_images=torch.rand(12, 3, 16, 16, generator=g), layers=layers,
                                  random_sets=torch.rand(60, 3, 16, 16, generator=g), n_random=3)
        paths.append(res.save(tmp_path / f"t{k}.json"))
    saved = [json.loads(p.read_text()) for p in paths]
    with running(create_app(Engine(("digits-cnn",)), concepts=ConceptView(paths))) as url:
        problems: list[str] = []
        page = _page(browser, problems, (url, "data:"))
        page.goto(url + "/concepts")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#error")
        assert page.locator("article.ctest").count() == 2
        assert page.locator("section.clayer").count() == 3
        verdicts = page.locator("p.verdict").all_inner_texts()
        assert verdicts == [t["verdict"] for d in saved for t in d["layers"]]
        assert page.locator("p.warn").count() == sum(len(d["notes"]) for d in saved)
        saturated = [t for d in saved for t in d["layers"] if t["saturation"] >= 0.5]
        assert page.locator("p.saturated").count() == len(saturated)
        assert page.locator("p.warn", has_text="saturated").count() == len(saturated)  # and in the notes
        assert page.locator("section.clayer", has_text="sensitivity/exchangeable").count() == 3
        assert not problems, problems
