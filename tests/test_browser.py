"""The report and the web app opened in real headless Chromium (Debian's ``chromium``, driven by
Playwright through its executable path; ``playwright install`` is never needed).

If Chromium is missing these tests fail, they do not skip: CI installs it (``.ci/run``). Every
browser step has a timeout, so a broken browser fails the test instead of hanging it.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convscope as cs
from convscope.methods.registry import inapplicable

CHROMIUM = os.environ.get("CONVSCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 30_000

JS_BROKEN_IMAGES = """() => [...document.images]
    .filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => i.alt || i.src.slice(0, 40))"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install -y "
                    "chromium; .ci/run does) or set CONVSCOPE_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


def _page(browser, problems: list[str], allowed: tuple[str, ...]):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def route(r):  # anything outside the allowed origins is refused and reported
        if r.request.url.startswith(allowed):
            r.continue_()
        else:
            problems.append(f"outside request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    return page


def _digit_files(tmp_path: Path, n: int) -> list[Path]:
    from convscope.data.toydata import digits, planted_cue
    from convscope.models.preprocessing import display_array

    x, y = digits().split("test")
    cue = planted_cue(x[:n], y[:n])
    paths = []
    for i in range(n):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((display_array(cue.images[i])[..., 0] * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def test_report_opens_offline_without_errors_or_broken_images(browser, tmp_path):
    from convscope.frontends.report import explain_report

    files = _digit_files(tmp_path, 2)
    rep = explain_report("digits-cnn-cue", files, fast=True, topk=4, labels=[f.name for f in files])
    out = rep.write(tmp_path / "report.html")
    problems: list[str] = []
    page = _page(browser, problems, ("file://", "data:"))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate(JS_BROKEN_IMAGES) == []
    # every method runs but those whose registry `requires` the CNN does not meet: the report says so
    net = cs.load_model("digits-cnn-cue").model
    run = [m for m in cs.list_methods() if inapplicable(m, net) is None]
    attention = [m.name for m in cs.list_methods() if inapplicable(m, net) is not None]
    assert attention == cs.method_names("attention")
    assert page.locator("figure.method").count() == 2 * len(run)
    assert page.locator("figure.skipped").count() == 0
    assert page.locator(".chart .cbar-row").count() == 2 * 4
    titles = page.locator("figure.method .t span:first-child").all_inner_texts()
    assert sorted(set(titles)) == sorted(m.name for m in run)
    text = page.inner_text("body")
    said = f"Not run, as they do not apply to this model: {', '.join(attention)} (DigitsCNN has no attention"
    assert said in text
    # every method's note, from the registry, is on the page
    for m in run:
        assert m.summary[:40].lower() in text.lower(), m.name
    assert problems == []
    page.close()


@pytest.fixture(scope="module")
def server():
    from convscope.frontends.serve import Engine
    from convscope.frontends.serve.app import create_app, running

    engine = Engine(("digits-cnn", "digits-cnn-cue", "torchvision:resnet18"), weights="none")
    with running(create_app(engine)) as url:
        yield url, engine


def _photo(path: Path) -> Path:
    yy, xx = np.mgrid[0:180, 0:240]
    img = np.stack([(xx * 255 // 240), (yy * 255 // 180), ((xx // 30 + yy // 30) % 2) * 200], -1)
    Image.fromarray(img.astype(np.uint8)).save(path, format="JPEG", quality=92)
    return path


def test_web_app_upload_a_photo_pick_a_method_see_the_result(browser, server, tmp_path):
    url, engine = server
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.set_input_files("#file", str(_photo(tmp_path / "photo.jpg")))
    page.select_option("#model", "torchvision:resnet18")
    page.select_option("#method", "gradcam")
    assert page.is_enabled("#layer")
    page.click("#explain")
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
    assert "gradcam on torchvision:resnet18" in page.inner_text("#result-title")
    assert page.locator("#probs .prob").count() == 5
    assert cs.get_method("gradcam").summary[1:30] in page.inner_text("#note")
    assert page.evaluate(JS_BROKEN_IMAGES) == []
    assert page.is_hidden("#error")
    assert problems == []
    page.close()


def test_web_app_sample_on_the_cue_model_and_layer_browser(browser, server):
    url, _ = server
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#sample-7")  # digit 3 with its cue
    page.select_option("#model", "digits-cnn-cue")
    page.select_option("#method", "saliency")
    assert page.is_disabled("#layer")  # saliency needs no layer
    page.select_option("#target", "3")
    page.click("#explain")
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
    assert "explains 3" in page.inner_text("#result-title")
    assert page.locator("#probs .prob.target").count() == 1
    page.select_option("#browse-layer", "features.6")
    page.click("#browse")
    page.wait_for_selector("#channels figure")
    assert page.locator("#channels figure").count() == 16
    assert page.evaluate(JS_BROKEN_IMAGES) == []
    assert problems == []
    page.close()


def test_web_app_refuses_a_non_image_and_says_why(browser, server, tmp_path):
    url, _ = server
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is text pretending to be a PNG")
    page.set_input_files("#file", str(fake))
    page.click("#explain")
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    # the browser logs the 415 response as a console error; nothing else may go wrong
    assert all("415" in p for p in problems), problems
    page.close()


def test_uploaded_bytes_are_what_the_model_saw(server, tmp_path):
    """The same photo through the app and through explain() give the same probabilities."""
    import httpx

    url, engine = server
    photo = _photo(tmp_path / "p.jpg")
    r = httpx.post(url + "/api/explain", data={"model": "torchvision:resnet18", "method": "saliency"},
                   files={"file": ("p.jpg", photo.read_bytes(), "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    e = cs.explain(engine.models["torchvision:resnet18"], Image.open(io.BytesIO(photo.read_bytes())),
                   method="saliency")
    top = r.json()["probabilities"][0]
    assert top["index"] == e.targets[0]
    assert abs(top["p"] - float(e.probabilities[0, e.targets[0]])) < 1e-5


JS_TEXT_OUTSIDE_ITS_BOX = """() => {
    const out = [];
    for (const f of document.querySelectorAll('figure')) {
        const walker = document.createTreeWalker(f, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            if (!n.textContent.trim()) continue;
            let box = n.parentElement;  // the nearest block around the text
            while (getComputedStyle(box).display === 'inline') box = box.parentElement;
            const b = box.getBoundingClientRect(), fr = f.getBoundingClientRect();
            const range = document.createRange();
            range.selectNodeContents(n);
            const r = range.getBoundingClientRect();
            if (r.left < Math.max(b.left, fr.left) - 1 || r.right > Math.min(b.right, fr.right) + 1
                || r.top < b.top - 1 || r.bottom > b.bottom + 1)
                out.push(n.textContent.trim().slice(0, 50));
        }
    }
    return out;
}"""


def _long_text_report():
    """A row as a report lays it out for a ViT: a map whose caption names a long layer, next to
    methods that could not run there with long reasons (``_figure_for`` builds the panels)."""
    from convscope.frontends.report import Report
    from convscope.frontends.report.build import MethodRun, _figure_for

    layer = "encoder.layers.encoder_layer_11.self_attention.out_proj_with_a_long_name"
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    why = ("guided_backprop has no rule for the activation GELU (F.gelu) found in this model's "
           "forward pass (the rule is defined for ReLU and ReLU6 only); pass nonrelu='gradient' "
           "(--option nonrelu=gradient) to let other activations pass the ordinary gradient, or use "
           f"saliency / integrated_gradients; layer '{layer}' gives a 3-D output (1, 197, 768)")
    rep = Report("long notes")
    sec = rep.section("image 1")
    sec.rows.append([
        Report.figure(img, title="gradcam", caption=f"explains tench (p = 0.00) · layer {layer}",
                      note="A" * 60, kind="method", family="cam"),
        _figure_for(MethodRun(cs.get_method("guided_gradcam"), error=why), 0, True),
        _figure_for(MethodRun(cs.get_method("scorecam"), error=f"layer '{layer}' is 3-D"), 0, True),
    ])
    return rep


def test_report_long_notes_and_layer_names_stay_inside_their_panel(browser, tmp_path):
    out = _long_text_report().write(tmp_path / "long.html")
    problems: list[str] = []
    page = _page(browser, problems, ("file://", "data:"))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    assert page.locator("figure.skipped").count() == 2
    assert page.evaluate(JS_TEXT_OUTSIDE_ITS_BOX) == []
    boxes = [page.locator("figure").nth(i).bounding_box() for i in range(3)]
    for a, b in zip(boxes, boxes[1:], strict=False):  # side by side, not overlapping
        assert a["x"] + a["width"] <= b["x"]
    assert problems == []
    page.close()


def test_report_shows_inline_as_a_notebook_would_embed_it(browser, tmp_path):
    """``Report._repr_html_`` (an iframe holding the whole page) inside a host page, as Jupyter puts it."""
    rep = _long_text_report()
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body><p>cell output:</p>{rep._repr_html_()}</body></html>")
    problems: list[str] = []
    page = _page(browser, problems, ("file://", "data:", "about:"))
    page.goto(host.as_uri())
    page.wait_for_load_state("load")
    frame = page.frame_locator("iframe")
    assert frame.locator("h1").inner_text() == "long notes"
    assert frame.locator("figure").count() == 3 and frame.locator("figure.skipped").count() == 2
    inner = page.frames[1]
    assert inner.evaluate(JS_BROKEN_IMAGES) == [] and inner.evaluate(JS_TEXT_OUTSIDE_ITS_BOX) == []
    box = page.locator("iframe").bounding_box()
    assert box["height"] >= 600 and box["width"] > 1000  # full width, tall enough to read
    assert problems == []
    page.screenshot(path=str(tmp_path / "notebook.png"))
    page.close()


def test_web_app_user_model_uses_its_default_layer_and_offers_no_digit_samples(browser, server):
    url, engine = server
    default = engine.models["torchvision:resnet18"].default_layer
    assert default and default != "conv1"  # the first layer is what the page used to pick
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_visible("#samples") and page.is_hidden("#no-samples")
    page.click("#sample-3")
    page.select_option("#model", "torchvision:resnet18")
    assert page.input_value("#layer") == default
    assert page.input_value("#browse-layer") == default
    assert default in page.inner_text("#layer-note") and "default" in page.inner_text("#layer-note").lower()
    assert page.is_hidden("#samples") and page.is_hidden("#samples-or")
    assert "upload an image" in page.inner_text("#no-samples")
    assert "upload an image" in page.inner_text("#chosen")  # the digit chosen before is dropped
    page.select_option("#method", "gradcam")
    page.click("#explain")  # nothing chosen for this model: the page says so, sends nothing
    page.wait_for_selector("#error:not([hidden])")
    assert "upload a photo" in page.inner_text("#error")
    page.select_option("#model", "digits-cnn")
    assert page.is_visible("#samples") and page.is_hidden("#no-samples")
    assert page.input_value("#layer") == engine.models["digits-cnn"].default_layer
    assert problems == []
    page.close()


def test_web_app_answers_its_own_page_but_not_another_origin(browser, server):
    """The page's own POSTs carry its Origin and pass the check; a page from another origin (a
    second loopback server) posting to the app, by fetch or by a plain form, is refused (403)
    and runs no job."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    url, engine = server
    evil = f"""<!DOCTYPE html><html><body>
<form id="f" method="POST" action="{url}/api/explain">
<input name="model" value="digits-cnn"><input name="method" value="saliency"><input name="sample" value="3">
</form></body></html>""".encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(evil)))
            self.end_headers()
            self.wfile.write(evil)

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    statuses: list[tuple[str, int]] = []
    problems: list[str] = []
    page = _page(browser, problems, (url, f"http://127.0.0.1:{other.server_port}/"))
    page.on("response", lambda resp: statuses.append((resp.request.method, resp.status))
            if resp.url.startswith(url + "/api/") else None)
    done = engine.jobs.done
    try:
        page.goto(f"http://127.0.0.1:{other.server_port}/evil.html")
        page.evaluate("""async (target) => {
            const fd = new FormData();
            fd.append("model", "digits-cnn"); fd.append("method", "saliency"); fd.append("sample", "3");
            try { await fetch(target, {method: "POST", body: fd, mode: "no-cors"}); } catch (e) {}
        }""", url + "/api/explain")
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "other web pages" in page.inner_text("body")
    finally:
        other.shutdown()
        other.server_close()
    assert statuses == [("POST", 403), ("POST", 403)], statuses
    assert engine.jobs.done == done
    # the browser reports the two refusals on the console; nothing else may go wrong
    assert all("403" in p for p in problems), problems
    page.close()
    # the app's own page still explains
    problems = []
    own = _page(browser, problems, (url, "data:", "blob:"))
    own.goto(url + "/")
    own.wait_for_selector("body[data-ready='1']")
    own.click("#sample-5")
    own.click("#explain")
    own.wait_for_selector("#result:not([hidden])")
    assert own.is_hidden("#error") and engine.jobs.done == done + 1
    assert problems == []
    own.close()


def _pixels(src: str) -> np.ndarray:
    import base64

    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def _explain_and_wait(page, previous_id: str | None) -> dict:
    """Wait for an answer newer than `previous_id` (seen by JS_WATCH) and return it."""
    page.wait_for_function("(old) => window.__last && window.__last !== old", arg=previous_id)
    return page.evaluate("() => window.__lastAnswer")


JS_WATCH = """() => { const f = window.fetch; window.__last = null;
    window.fetch = async (...a) => { const r = await f(...a);
        if (String(a[0]).startsWith('/api/explain') || String(a[0]).startsWith('/api/grid')) {
            const body = await r.clone().json();
            if (body.id) { window.__lastAnswer = body; window.__last = body.id; } }
        return r; }; }"""


def _shown(page) -> dict:
    return page.evaluate("""() => ({
        title: document.getElementById('result-title').innerText,
        overlay: document.getElementById('overlay').src,
        legend: document.getElementById('legend').innerText,
        probs: [...document.querySelectorAll('#probs .prob')].map(r => [r.querySelector('.name').innerText,
                                                                        r.querySelector('.val').innerText]),
        target: document.querySelector('#probs .prob.target .name')?.innerText,
        versus: document.querySelector('#probs .prob.versus .name')?.innerText})""")


def test_web_app_explore_switch_class_contrast_option_url_and_grids(browser, server, tmp_path):
    """Class switch, contrast, an option from the registry-built form, downloads, the URL state and
    both grids, in real Chromium; every picture change and every number checked against the API."""
    import json

    import httpx

    url, engine = server
    lm = engine.models["digits-cnn-cue"]
    img = engine.samples[7][1]
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate(JS_WATCH)
    page.click("#sample-7")
    page.select_option("#model", "digits-cnn-cue")
    page.select_option("#method", "integrated_gradients")
    # the form comes from the registry's specs: a number input with the declared range
    spec = {s.name: s for s in cs.get_method("integrated_gradients").option_specs}
    assert page.get_attribute("#opt-steps", "min") == str(spec["steps"].range.lo)
    assert page.get_attribute("#opt-steps", "max") == str(spec["steps"].range.hi)
    assert page.get_attribute("#opt-steps", "step") == "1"
    assert page.locator("#opt-rule option").all_inner_texts()[1:] == list(spec["rule"].choices)
    page.fill("#opt-steps", "8")
    page.click("#explain")
    a = _explain_and_wait(page, None)
    first = _shown(page)
    e = cs.explain(lm, img, method="integrated_gradients", steps=8)
    order = e.probabilities[0].argsort(descending=True)[:5].tolist()
    assert first["probs"] == [[lm.class_names[i], f"{float(e.probabilities[0, i]):.3f}"] for i in order]
    assert first["target"] == lm.class_names[e.targets[0]]
    assert f"p = {float(e.probabilities[0, e.targets[0]]):.3f}" in first["title"]

    # switch class: click the runner-up in the probabilities
    page.click("#probs .prob:nth-child(2) .name")
    b = _explain_and_wait(page, a["id"])
    second = _shown(page)
    assert second["target"] == lm.class_names[order[1]] and b["target_index"] == order[1]
    assert not np.array_equal(_pixels(first["overlay"]), _pixels(second["overlay"]))

    # contrast: predicted vs runner-up
    page.click("#pred-vs-top2")
    page.click("#explain")
    c = _explain_and_wait(page, b["id"])
    third = _shown(page)
    assert (c["target_index"], c["contrast_index"]) == (order[0], order[1])
    assert third["target"] == lm.class_names[order[0]] and third["versus"] == lm.class_names[order[1]]
    assert " vs " in third["title"] and "blue" in third["legend"]

    # change an option: the picture changes, and the download is the map of the Python API
    page.fill("#opt-steps", "2")
    page.select_option("#opt-baseline", '"blur"')
    page.click("#explain")
    d = _explain_and_wait(page, c["id"])
    fourth = _shown(page)
    assert not np.array_equal(_pixels(third["overlay"]), _pixels(fourth["overlay"]))
    assert "steps=2" in page.inner_text("#meta")
    npy = httpx.get(url + page.get_attribute("#dl-npy", "href"), timeout=60)
    oracle = cs.explain(lm, img, method="integrated_gradients", target="pred-vs-top2", steps=2,
                        baseline="blur")
    np.testing.assert_allclose(np.load(io.BytesIO(npy.content)), oracle.map.numpy(), rtol=1e-5, atol=1e-6)
    assert d["options"] == {"steps": 2, "baseline": "blur"}
    with page.expect_download() as dl:  # the page's own link passes the Host/Origin guard
        page.click("#dl-json")
    record = json.loads(Path(dl.value.path()).read_text())
    assert record["options"] == {"steps": 2, "baseline": "blur"} and record["contrast"] == [order[1]]
    assert record["model_info"]["preprocessing"]["size"] == list(lm.preprocessing.size)

    # the URL holds the view: a new page opened on it shows the same thing
    link = page.url
    assert "#" in link and "steps" in link
    other = _page(browser, problems, (url, "data:", "blob:"))
    other.goto(link)
    other.wait_for_selector("body[data-ready='1']")
    other.wait_for_selector("#result:not([hidden])")
    other.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0")
    again = _shown(other)
    assert again == fourth
    assert other.input_value("#method") == "integrated_gradients" and other.input_value("#opt-steps") == "2"
    assert other.input_value("#versus") == "top2" and other.input_value("#opt-baseline") == '"blur"'
    other.close()

    # grids: the top classes on one scale, then methods side by side
    page.check("#view-classes")
    page.click("#explain")
    g = _explain_and_wait(page, d["id"])
    assert page.locator("#grid-panels .panel").count() == 4 and g["scale"] > 0
    assert page.is_visible("#grid-cbar") and page.is_hidden("#single")
    page.check("#view-methods")
    page.click("#explain")
    h = _explain_and_wait(page, g["id"])
    assert [p["method"] for p in h["panels"]][0] == "integrated_gradients"
    assert page.locator("#grid-panels .panel").count() == len(h["panels"]) >= 3
    labels = page.locator("#grid-panels figcaption strong").all_inner_texts()
    assert labels[0].startswith("integrated_gradients")
    page.screenshot(path=str(tmp_path / "methods-grid.png"), full_page=True)
    assert page.evaluate(JS_BROKEN_IMAGES) == []
    assert page.is_hidden("#error")
    assert problems == []
    page.close()


def test_web_app_shows_the_unreliable_badge_and_why(browser, server):
    """#27 item 5: a result its own diagnostics call unreliable shows a badge with the reason."""
    url, _ = server
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#sample-7")
    page.select_option("#model", "digits-cnn-cue")
    page.select_option("#method", "integrated_gradients")
    page.fill("#opt-steps", "1")  # one step: a completeness gap far above 5 %
    page.click("#explain")
    page.wait_for_selector("#unreliable:not([hidden])")
    assert "completeness gap" in page.inner_text("#unreliable-why")
    assert page.is_visible("#unreliable .badge")
    if os.environ.get("CONVSCOPE_SHOTS"):  # to look at it
        shot = Path(os.environ["CONVSCOPE_SHOTS"]) / "unreliable-badge.png"
        page.locator("#result").screenshot(path=str(shot))
    page.fill("#opt-steps", "64")
    page.click("#explain")
    page.wait_for_selector("#unreliable", state="hidden")
    assert problems == []
    page.close()


def test_web_app_disables_the_methods_that_do_not_apply_to_the_model(browser, server):
    """The registry's `requires`, judged by the server per model (/api/info `inapplicable`): the
    attention methods are disabled, unticked and struck through for a CNN, in the menu and the grid."""
    url, engine = server
    problems: list[str] = []
    page = _page(browser, problems, (url, "data:", "blob:"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    want = sorted(cs.method_names("attention"))
    for model in ("digits-cnn", "torchvision:resnet18"):
        page.select_option("#model", model)
        grid = page.eval_on_selector_all("#grid-methods input:disabled", "e => e.map(x => x.value)")
        menu = page.eval_on_selector_all("#method option:disabled", "e => e.map(x => x.value)")
        assert sorted(grid) == sorted(menu) == want, model
        assert page.eval_on_selector_all("#grid-methods input:disabled:checked", "e => e.length") == 0
        assert page.locator("#grid-methods label.inapplicable").count() == len(want)
        assert page.input_value("#method") not in want
    assert problems == []
    page.close()
