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
from convscope.hooks import count_hooks
from convscope.serve import Engine, Limits, create_app


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
    from convscope.datasets import CUE_SIZE, digits, planted_cue

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
        ({"model": "digits-cnn", "method": "saliency"}, None, 415),  # no image at all
        ({"model": "../../etc/passwd", "method": "saliency", "sample": "0"}, None, 400),
        ({"model": "digits-cnn", "method": "nope", "sample": "0"}, None, 400),
        ({"model": "digits-cnn", "method": "saliency", "sample": "../../etc/passwd"}, None, 415),
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

    root = resources.files("convscope.serve").joinpath("static")
    for name in ("index.html", "app.js", "style.css"):
        text = root.joinpath(name).read_text()
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
    from convscope.cli.main import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
