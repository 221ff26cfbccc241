"""The web app's HTTP interface, in process (FastAPI's TestClient): results checked against an
independent forward pass, the safety limits, and that no request reaches the file system."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # the dev extra installs the serve dependencies
from PIL import Image

import convscope as cs
from convscope.core.hooks import count_hooks
from convscope.frontends.serve import Engine, Limits, create_app


@pytest.fixture(scope="module")
def engine():
    return Engine(("digits-cnn", "digits-cnn-cue"), limits=Limits(max_upload_bytes=200_000,
                                                                   max_pixels=1_000_000))


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine), base_url="http://127.0.0.1")


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_info_is_driven_by_the_registry(client):
    info = client.get("/api/info").json()
    assert [m["name"] for m in info["methods"]] == cs.method_names()
    for m, reg in zip(info["methods"], cs.list_methods(), strict=True):
        assert (m["family"], m["needs_layer"], m["signed"], m["summary"], m["caveats"]) == (
            reg.family, reg.needs_layer, reg.signed, reg.summary, reg.caveats)
    names = [m["name"] for m in info["models"]]
    assert names == ["digits-cnn", "digits-cnn-cue"]
    layers = {d["name"] for d in info["models"][1]["layers"]}
    assert "features.9" in layers and info["models"][1]["default_layer"] == "features.9"
    assert len(info["samples"]) == 20


def test_explain_sample_matches_an_independent_forward_pass(client, engine, cue_model):
    r = client.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency",
                                          "sample": "7", "topk": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    # oracle: the sample through the model by hand
    img = engine.samples[7][1]
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        p = torch.softmax(cue_model.model(cue_model.preprocessing.normalize(x)), 1)[0]
    top = torch.argsort(p, descending=True)[:3]
    assert [c["index"] for c in body["probabilities"]] == top.tolist()
    np.testing.assert_allclose([c["p"] for c in body["probabilities"]], p[top].numpy(), atol=1e-5)
    assert body["target_index"] == int(top[0])
    assert body["summary"] == cs.get_method("saliency").summary
    assert _decode(body["overlay"]).size == (256, 256)
    assert count_hooks(cue_model.model) == 0


def test_cue_model_explanation_points_at_the_cue(client, engine):
    """Sample 2k+1 is digit k with its planted cue; the saliency peak must sit on the cue."""
    from convscope.data.toydata import CUE_SIZE, digits, planted_cue

    x, y = digits().split("test")
    picks = [int((y == k).nonzero()[0, 0]) for k in range(10)]
    corners = planted_cue(x[picks], y[picks]).corners.tolist()  # what the engine stamps
    hits = 0
    for k in range(10):
        body = client.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency",
                                                 "sample": str(2 * k + 1)}).json()
        assert body["target"] == str(k)
        heat = np.asarray(_decode(body["heatmap"]).convert("L").resize((32, 32), Image.NEAREST))
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        r0, c0 = corners[k]
        hits += int(r0 - 1 <= r < r0 + CUE_SIZE + 1 and c0 - 1 <= c < c0 + CUE_SIZE + 1)
    assert hits >= 6


def test_upload_photo_and_layer_and_target(client):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8), "RGB")
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": "gradcam",
                                          "layer": "features.6", "target": "3"},
                    files={"file": ("photo.jpg", _png(photo, "JPEG"), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "features.6" and body["target_index"] == 3


@pytest.mark.parametrize(
    "data, files, status",
    [
        ({"model": "digits-cnn", "method": "saliency"}, {"file": ("a.png", b"hello, not an image",
                                                                   "image/png")}, 415),
        ({"model": "digits-cnn", "method": "saliency"}, {"file": ("a.txt", b"x", "text/plain")}, 415),
        ({"model": "digits-cnn", "method": "saliency"}, None, 400),  # no image at all: a form error (#27)
        ({"model": "../../etc/passwd", "method": "saliency", "sample": "0"}, None, 400),
        ({"model": "digits-cnn", "method": "nope", "sample": "0"}, None, 400),
        ({"model": "digits-cnn", "method": "saliency", "sample": "../../etc/passwd"}, None, 400),
        ({"model": "digits-cnn", "method": "saliency", "sample": "999"}, None, 400),
        ({"model": "digits-cnn", "method": "gradcam", "sample": "0", "layer": "*"}, None, 400),
        ({"model": "digits-cnn", "method": "gradcam", "sample": "0", "layer": "/etc"}, None, 400),
        ({"model": "digits-cnn", "method": "saliency", "sample": "0", "target": "cat"}, None, 400),
    ],
)
def test_bad_requests_are_refused_with_a_message(client, data, files, status):
    r = client.post("/api/explain", data=data, files=files)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_size_and_pixel_limits(client):
    big = np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    body = _png(Image.fromarray(big))  # ~480 kB of noise: over the 200 kB limit
    assert len(body) > 200_000
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": "saliency"},
                    files={"file": ("big.png", body, "image/png")})
    assert r.status_code == 413
    bomb = _png(Image.new("L", (2000, 2000)))  # tiny file, 4 megapixels: over 1 MP
    assert len(bomb) < 200_000
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": "saliency"},
                    files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_static_files_come_from_a_table_not_a_path(client):
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/..%2f__init__.py", "/static/engine.py", "/static/%2e%2e%2fapp.py",
                "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/"):
        assert client.get(bad).status_code == 404, bad
    csp = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp


def test_page_loads_nothing_from_outside():
    from importlib import resources

    from convscope.frontends.serve.pages import render_pages

    root = resources.files("convscope.frontends.serve").joinpath("static")
    pages = render_pages()
    for name in (*pages, "app.js", "options.js", "style.css"):
        text = pages[name].decode() if name in pages else root.joinpath(name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_activations_match_a_truncated_forward(client, engine, clean_model):
    r = client.post("/api/activations", data={"model": "digits-cnn", "layer": "features.6",
                                              "sample": "4", "n": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    img = engine.samples[4][1]
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():  # oracle: the Sequential up to and including features.6
        a = clean_model.model.features[:7](clean_model.preprocessing.normalize(x))[0]
    means = a.mean((1, 2))
    order = torch.argsort(means, descending=True)[:5]
    assert [c["channel"] for c in body["top"]] == order.tolist()
    np.testing.assert_allclose([c["mean"] for c in body["top"]], means[order].numpy(), rtol=1e-4)


def test_layer_browser_channel_visualisations(client, clean_model):
    import base64
    import io

    from PIL import Image

    r = client.post("/api/activations", data={"model": "digits-cnn", "layer": "features.5",
                                              "sample": "4", "n": "3", "vis": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["featvis"] is True
    gray = torch.full((1, 1, 32, 32), 0.5)
    pre = clean_model.preprocessing
    with torch.no_grad():
        base = clean_model.model.features[:6](pre.normalize(gray))[0].mean((1, 2))
    for cell in body["top"]:
        src = cell["vis"]
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L")
        img = img.resize((32, 32), Image.Resampling.NEAREST)  # the picture is upscaled 32 px
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
        with torch.no_grad():
            act = clean_model.model.features[:6](pre.normalize(x))[0].mean((1, 2))
        c = cell["channel"]
        # the visualisation excites its own channel more than a flat gray image does
        assert act[c] > base[c] + 0.1, (c, float(act[c]), float(base[c]))
    # without the flag nothing is rendered
    r = client.post("/api/activations", data={"model": "digits-cnn", "layer": "features.5",
                                              "sample": "4", "n": "3"})
    assert r.json()["featvis"] is False and all("vis" not in c for c in r.json()["top"])


def test_cli_binds_loopback_by_default():
    from convscope.frontends.cli.main import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


# --- exploration: the options form, targets and contrasts, grids, downloads, the URL state -------


def _npy(client, body) -> np.ndarray:
    r = client.get(body["downloads"]["npy"])
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    return np.load(io.BytesIO(r.content))


def test_methods_endpoint_is_the_registry_with_its_option_specs(client):
    served = client.get("/api/methods").json()["methods"]
    assert [m["name"] for m in served] == cs.method_names()
    for m in served:
        reg = cs.get_method(m["name"])
        assert m["options"] == [s.to_dict() for s in reg.option_specs], m["name"]
        assert m["fast_options"] == reg.fast_options and m["needs_layer"] == reg.needs_layer
    assert client.get("/api/info").json()["methods"] == served  # one catalogue for both


def _bad_option_values():
    """(method, option, value) for every numeric option with a declared range, from the range's
    own list of values it refuses (NaN and infinities travel as JSON's NaN / Infinity)."""
    out = []
    for m in cs.list_methods():
        for s in m.option_specs:
            if s.range is not None and (s.range.lo is not None or s.range.hi is not None):
                out.extend((m.name, s.name, v) for v in s.range.outside()[2:5])
    return out


@pytest.mark.parametrize("method, option, value", _bad_option_values())
def test_options_are_checked_by_the_registry_before_any_work(client, engine, method, option, value):
    import json

    from convscope.methods.registry import check_method_options

    info = cs.get_method(method)
    with pytest.raises(cs.ConvscopeError) as expected:  # the oracle: the registry's own check
        check_method_options(info, {option: value})
    done = engine.jobs.done
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": method, "sample": "0",
                                          "options": json.dumps({option: value})})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": str(expected.value)}
    assert engine.jobs.done == done  # refused before it queued


@pytest.mark.parametrize("options", ['[1]', '{"steps": ', '"steps=4"', '{"nope": 1}'])
def test_malformed_or_unknown_options_get_one_line(client, options):
    r = client.post("/api/explain", data={"model": "digits-cnn", "method": "integrated_gradients",
                                          "sample": "0", "options": options})
    assert r.status_code == 400 and list(r.json()) == ["error"], r.text
    assert "\n" not in r.json()["error"] and ("options" in r.json()["error"] or "nope" in r.json()["error"])


CASES = [  # (model, method, sample, target, layer, options): downloads against convscope.explain
    ("digits-cnn-cue", "integrated_gradients", 7, "pred-vs-top2", "", {"steps": 8, "baseline": "blur"}),
    ("digits-cnn-cue", "gradcam", 7, "3-vs-8", "features.6", {}),
    ("digits-cnn", "occlusion", 4, "2", "", {"window": 4, "stride": 2, "baseline": "black"}),
    ("digits-cnn", "rise", 5, "", "", {"n_masks": 64, "cells": 4}),
]


@pytest.mark.parametrize("model, method, sample, target, layer, options", CASES)
def test_downloads_are_the_map_and_record_of_the_python_api(client, engine, model, method, sample, target,
                                                              layer, options):
    import json

    r = client.post("/api/explain", data={"model": model, "method": method, "sample": str(sample),
                                          "target": target, "layer": layer, "options": json.dumps(options)})
    assert r.status_code == 200, r.text
    body = r.json()
    lm = engine.models[model]
    e = cs.explain(lm, engine.samples[sample][1], method=method, target=target or None, layer=layer or None,
                   **options)
    got = _npy(client, body)
    assert got.shape == tuple(e.map.shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, e.map.numpy(), rtol=1e-5, atol=1e-6)
    assert body["target_index"] == e.targets[0]
    assert body["contrast_index"] == (None if e.contrast is None else e.contrast[0])
    assert body["map_min"] == pytest.approx(float(e.map.min()), abs=1e-6)
    record = client.get(body["downloads"]["json"]).json()
    assert record["model_info"] == json.loads(json.dumps(e.to_dict(include_map=False)["model_info"]))
    assert record["model_info"]["preprocessing"]["size"] == list(lm.preprocessing.size)
    assert "assumed" in record["model_info"] and record["options"] == options
    assert record["targets"] == list(e.targets) and record["target_names"] == [e.target_name(0)]
    assert record["request"]["view"]["options"] == options and record["request"]["image"]["sample"] == sample
    png = client.get(body["downloads"]["png"])
    assert png.headers["content-type"] == "image/png"
    fig = Image.open(io.BytesIO(png.content))
    assert fig.width > 600 and fig.height > 200  # the labelled figure, not the 32 px map


def test_contrast_and_class_switch_follow_an_independent_forward_pass(client, engine, cue_model):
    img = engine.samples[7][1]
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        p = torch.softmax(cue_model.model(cue_model.preprocessing.normalize(x)), 1)[0]
    first, second = torch.argsort(p, descending=True)[:2].tolist()
    body = client.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency", "sample": "7",
                                             "target": "pred-vs-top2"}).json()
    assert (body["target_index"], body["contrast_index"]) == (first, second)
    assert body["target_p"] == pytest.approx(float(p[first]), abs=1e-5)
    assert body["contrast_p"] == pytest.approx(float(p[second]), abs=1e-5)
    assert body["target"] == f"{first} vs {second}" and str(second) in body["legend"]
    other = client.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency", "sample": "7",
                                              "target": str(second)}).json()
    assert other["target_index"] == second and other["contrast_index"] is None
    assert other["overlay"] != body["overlay"]


def _replay(client, state: str):
    """POST the fields of a URL state to the endpoint its view names, as the page does on load."""
    from urllib.parse import parse_qsl

    fields = dict(parse_qsl(state))
    view = fields.pop("view", "single")
    if view != "single":
        fields["kind"] = view
    return client.post("/api/explain" if view == "single" else "/api/grid", data=fields)


@pytest.mark.parametrize("data", [
    {"model": "digits-cnn-cue", "method": "integrated_gradients", "sample": "9", "target": "pred-vs-top2",
     "options": '{"steps": 6}', "fast": "true"},
    {"model": "digits-cnn-cue", "method": "gradcam", "sample": "3", "layer": "features.6", "kind": "classes",
     "topk": "3"},
    {"model": "digits-cnn", "method": "occlusion", "sample": "2", "target": "4", "kind": "methods",
     "methods": "occlusion,saliency,gradcam", "options": '{"window": 4}'},
])
def test_url_state_reproduces_the_view(client, data):
    path = "/api/grid" if "kind" in data else "/api/explain"
    first = client.post(path, data=data)
    assert first.status_code == 200, first.text
    a = first.json()
    again = _replay(client, a["state"])
    assert again.status_code == 200, again.text
    b = again.json()
    assert b["state"] == a["state"] and b["id"] != a["id"]
    np.testing.assert_array_equal(_npy(client, a), _npy(client, b))
    if "kind" in data:
        assert [p["overlay"] for p in a["panels"]] == [p["overlay"] for p in b["panels"]]
    else:
        keys = ("overlay", "probabilities", "options", "target_index", "contrast_index")
        assert [a[k] for k in keys] == [b[k] for k in keys]


def test_class_grid_is_the_top_classes_on_the_library_scale(client, engine):
    from convscope.methods.grids import explain_classes, explain_methods

    lm = engine.models["digits-cnn-cue"]
    body = client.post("/api/grid", data={"model": "digits-cnn-cue", "method": "gradcam", "sample": "7",
                                          "kind": "classes", "topk": "3"}).json()
    g = explain_classes(lm, engine.samples[7][1], topk=3, method="gradcam")
    assert [p["target_index"] for p in body["panels"]] == [e.targets[0] for e in g.panels]
    assert [p["target_index"] for p in body["panels"]] == [c["index"] for c in body["probabilities"][:3]]
    assert body["scale"] == pytest.approx(g.scale, rel=1e-6)
    np.testing.assert_allclose(_npy(client, body), torch.cat([e.map for e in g.panels]).numpy(), atol=1e-6)
    body = client.post("/api/grid", data={"model": "digits-cnn", "method": "saliency", "sample": "4",
                                          "kind": "methods", "methods": "saliency,gradcam,saliency",
                                          "target": "4-vs-9"}).json()
    assert [p["method"] for p in body["panels"]] == ["saliency", "gradcam"] and body["scale"] is None
    g = explain_methods(engine.models["digits-cnn"], engine.samples[4][1], ["saliency", "gradcam"],
                        target="4-vs-9")
    np.testing.assert_allclose(_npy(client, body), torch.cat([e.map for e in g.panels]).numpy(), atol=1e-6)


@pytest.mark.parametrize("data, words", [
    ({"kind": "pictures"}, "unknown grid"),
    ({"kind": "methods", "methods": ""}, "1 to"),
    ({"kind": "methods", "methods": "saliency,nope"}, "nope"),
    ({"kind": "methods", "methods": ",".join(cs.method_names()[:9])}, "1 to"),
    ({"kind": "classes", "options": '{"steps": 3}'}, "steps"),
])
def test_bad_grids_are_refused_in_one_line(client, engine, data, words):
    done = engine.jobs.done
    r = client.post("/api/grid", data={"model": "digits-cnn", "method": "saliency", "sample": "0", **data})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert engine.jobs.done == done


def test_downloads_name_a_kept_result_only(client, engine):
    from convscope.frontends.serve.engine import KEEP_RESULTS

    first = client.post("/api/explain", data={"model": "digits-cnn", "method": "saliency",
                                              "sample": "1"}).json()
    for bad in ("/api/result/nope.npy", first["downloads"]["npy"].replace(".npy", ".exe"),
                first["downloads"]["npy"].replace(".npy", ""), "/api/result/..%2f..%2fapp.py"):
        r = client.get(bad)
        assert r.status_code == 404 and list(r.json()) == ["error"], bad
    for _ in range(KEEP_RESULTS):  # the oldest result goes when more are kept
        client.post("/api/explain", data={"model": "digits-cnn", "method": "saliency", "sample": "2"})
    assert client.get(first["downloads"]["npy"]).status_code == 404
