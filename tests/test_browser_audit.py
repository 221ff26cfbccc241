"""The audit view (``/audit``) in real headless Chromium, as ``test_browser.py`` drives it: an audit
of planted-cue digits with the cue model, opened, clicked through and checked against the audit.

If Chromium is missing this test fails, it does not skip (see ``test_browser.py``).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from test_browser import _page, browser  # noqa: F401 (browser: a fixture)

# images on show that did not load (the detail's <img> is hidden until a point is picked)
JS_BROKEN_SHOWN = """() => [...document.images]
    .filter(i => !i.hidden && (!i.complete || i.naturalWidth === 0))
    .map(i => i.alt || i.src.slice(0, 40))"""

JS_SHOWN_MEAN = """() => {
    const img = document.getElementById('detail-img');
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
    return [c.width, c.height, s / (d.length / 4 * 3)];
}"""


@pytest.fixture(scope="module")
def served_audit(tmp_path_factory):
    from convscope.data.toydata import digits, planted_cue
    from convscope.frontends.serve import Engine
    from convscope.frontends.serve.app import create_app, running
    from convscope.methods.dataset import audit
    from convscope.models.preprocessing import display_array

    root = tmp_path_factory.mktemp("browser-audit")
    x, y = digits().split("test")
    cue = planted_cue(x, y, seed=1)
    for cls in range(3):
        (root / "images" / str(cls)).mkdir(parents=True)
        for i in (y == cls).nonzero()[:, 0].tolist():  # all of the class (t-SNE needs > 50)
            a = (display_array(cue.images[i])[..., 0] * 255 + 0.5).astype(np.uint8)
            Image.fromarray(a).save(root / "images" / str(cls) / f"{i:04d}.png")
    out = root / "out"
    audit("digits-cnn-cue", root / "images", store=out / "maps.zarr", progress=False).save(out / "audit.json")
    engine = Engine(("digits-cnn",))
    with running(create_app(engine, audit=out)) as url:
        yield url, json.loads((out / "audit.json").read_text())


def test_audit_view_click_a_point_see_its_image_and_map(browser, served_audit):  # noqa: F811
    import httpx

    url, a = served_audit
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url + "/audit")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_hidden("#error") and page.is_hidden("#view-notes")
    assert page.locator("#classes button").count() == len(a["classes"])
    assert page.locator("#suspects .suspect-item").count() == len(a["suspects"])

    # the page opens on the class of the most suspicious cluster, or the first clustered class
    shown = next((c for c in a["classes"] if a["suspects"] and c["name"] == a["suspects"][0]["class"]),
                 next(c for c in a["classes"] if c["clusters"]))
    assert page.get_attribute(f"#class-{shown['index']}", "aria-selected") == "true"
    assert page.locator("#embedding .pt").count() == len(shown["embedding"]["members"])
    assert page.locator("#clusters .card").count() == len(shown["clusters"])
    page.wait_for_selector("#clusters .card img:not([hidden])")

    # click the point drawn last (on top of any it overlaps): its image, path, cluster and reading
    pt = page.locator("#embedding .pt").last
    index = int(pt.get_attribute("data-index"))
    pt.click()
    page.wait_for_selector(f"#detail[data-index='{index}']")
    cl = next(k for k in shown["clusters"] if index in k["members"])
    assert f"image {index}" in page.inner_text("#detail-title")
    assert f"cluster {cl['id']}" in page.inner_text("#detail-title")
    assert page.inner_text("#detail-path") == cl["paths"][cl["members"].index(index)]
    assert page.inner_text("#detail-reading") == cl["reading"]
    # the picture shown is the server's picture of that image
    w, h, mean = page.evaluate(JS_SHOWN_MEAN)
    png = httpx.get(f"{url}/api/audit/item/{index}.png").content
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert (w, h) == served.shape[1::-1] and abs(mean - served.mean()) < 0.5

    # next: the following image of the same cluster
    page.click("#next")
    following = cl["members"][(cl["members"].index(index) + 1) % len(cl["members"])]
    page.wait_for_selector(f"#detail[data-index='{following}']")
    page.keyboard.press("ArrowLeft")  # and back
    page.wait_for_selector(f"#detail[data-index='{index}']")

    # a cluster card highlights its points
    other = next(k for k in shown["clusters"] if k["id"] != cl["id"]) if len(shown["clusters"]) > 1 else cl
    page.click(f"#cluster-{other['id']}")
    page.wait_for_selector("#embedding.focus")
    assert page.locator("#embedding .pt.on").count() == other["size"]
    assert page.get_attribute(f"#cluster-{other['id']}", "aria-pressed") == "true"

    # another class
    nxt = next(c for c in a["classes"] if c["index"] != shown["index"])
    page.click(f"#class-{nxt['index']}")
    assert page.inner_text("#class-title").startswith(f"Class {nxt['name']}:")
    assert page.locator("#embedding .pt").count() == len(nxt["embedding"]["members"])
    page.wait_for_selector("#clusters .card img:not([hidden])")
    assert page.evaluate(JS_BROKEN_SHOWN) == []
    assert problems == []

    # the main page links to it
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_visible("#audit-link a")
    page.close()
