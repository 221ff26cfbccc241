"""The web app's concept-relevance view (``/crp``): through FastAPI's TestClient (the numbers equal
``cs.concepts`` on the same image, atlas patches shown when loaded, bad input in one line) and in
headless Chromium (the page draws the cards; a screenshot is kept for a person to look at)."""

from __future__ import annotations

import base64
import io
import os
import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient  # the dev extra installs the serve dependencies
from PIL import Image
from test_browser import _page, browser  # noqa: F401 (browser: a fixture)

import convscope as cs
from convscope.core.errors import InputError
from convscope.frontends.serve import Engine, create_app


@pytest.fixture(scope="module")
def atlas_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "a.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.errors.UnreliableResultWarning)
        cs.concept_atlas("digits-cnn-cue", "digits:test", "features.9", n=4, limit=48, out=out)
    return out


@pytest.fixture(scope="module")
def engine():
    return Engine(("digits-cnn-cue",))


@pytest.fixture(scope="module")
def client(engine, atlas_store):
    return TestClient(create_app(engine, atlases=[atlas_store]), base_url="http://127.0.0.1")


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_concepts_equal_the_api_and_show_atlas_patches(client, engine, atlas_store):
    r = client.post("/api/crp", data={"model": "digits-cnn-cue", "sample": "3", "layer": "features.9",
                                      "k": "3"})
    assert r.status_code == 200, r.text
    d = r.json()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.errors.UnreliableResultWarning)
        want = cs.concepts(engine.model("digits-cnn-cue"), engine.sample(3), layer="features.9", k=3)
    assert [c["name"] for c in d["concepts"]] == [c.name for c in want.concepts]
    np.testing.assert_allclose([c["share"] for c in d["concepts"]], [c.share for c in want.concepts],
                               rtol=1e-5)
    assert d["atlas"] == {"images": 48, "target": "pred"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.errors.UnreliableResultWarning)
        atlas = cs.load_atlas(atlas_store, n=4)
    for c in d["concepts"]:
        assert len(c["references"]) == 4 and len(c["activation_references"]) == 4
        ref = np.asarray(_decode(c["references"][0]).convert("RGB"))
        first = atlas.references(c["channels"][0], "relevance")[0]
        step = ref.shape[0] // first.shape[0]
        assert ref.shape[:2] == (step * first.shape[0], step * first.shape[1])
        small = ref[::step, ::step]
        np.testing.assert_allclose(small / 255.0, first, atol=1 / 255 + 1e-6)  # the atlas's own patch
    assert client.get("/api/crp/atlases").json()["atlases"][0]["layer"] == "features.9"
    # another layer has no atlas: no patches, and the answer says so
    d2 = client.post("/api/crp", data={"model": "digits-cnn-cue", "sample": "3", "layer": "features.3",
                                       "k": "2"}).json()
    assert d2["atlas"] is None and "references" not in d2["concepts"][0]


@pytest.mark.parametrize("form, msg", [
    ({"k": "0"}, "k must be"),
    ({"k": "17"}, "k must be"),
    ({"k": "nan"}, "k"),
    ({"layer": "classifier"}, "unknown layer 'classifier'"),  # no channels: not offered
    ({"layer": "nope"}, "unknown layer"),
    ({"model": "nope"}, "unknown model"),
    ({"target": "99"}, "99"),
    ({"composite": "nope"}, "unknown LRP composite"),
    ({"sample": "999"}, "no sample 999"),
])
def test_bad_input_is_one_line(client, form, msg):
    data = {"model": "digits-cnn-cue", "sample": "0", "layer": "features.9", "k": "2", **form}
    r = client.post("/api/crp", data=data)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert msg in err and "\n" not in err


def test_an_atlas_of_a_model_not_served_is_refused(atlas_store):
    with pytest.raises(InputError, match="which this server does not serve"):
        create_app(Engine(("digits-cnn",)), atlases=[atlas_store])


def test_the_page_draws_the_concepts(browser, atlas_store, tmp_path):  # noqa: F811
    from convscope.frontends.serve.app import running

    with running(create_app(Engine(("digits-cnn-cue",)), atlases=[atlas_store])) as url:
        problems: list[str] = []
        page = _page(browser, problems, (url, "data:"))
        page.set_viewport_size({"width": 1200, "height": 900})
        page.goto(url + "/crp")
        page.wait_for_selector("body[data-loaded='1']")
        page.select_option("#layer", "features.9")
        page.fill("#k", "3")
        page.click("#run")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#error")
        assert page.locator("section.crp-card").count() == 4  # the input and 3 concepts
        assert page.locator("img.crp-ref").count() == 3 * 8
        page.screenshot(path=os.environ.get("CONVSCOPE_SHOT", str(tmp_path / "crp.png")), full_page=True)
        assert not problems, problems
        page.evaluate("document.body.dataset.ready = ''; document.getElementById('k').removeAttribute('max')")
        page.fill("#k", "40")
        page.click("#run")
        page.wait_for_selector("body[data-ready='1']")
        assert "k must be" in page.inner_text("#error")
        assert all("status of 400" in m for m in problems), problems  # the refused request, nothing else
