"""The web app's "Which method to trust" view (#33): a background evaluation through the FastAPI
test client, its progress, its table against ``cs.evaluate`` run directly on the same images, its
time limit and its one-line errors."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # the dev extra installs the serve dependencies

import convscope as cs
from convscope.core.hooks import count_hooks
from convscope.frontends.serve import Engine, Limits, create_app
from convscope.methods.explain import prepare_inputs


@pytest.fixture(scope="module")
def engine():
    return Engine(("digits-cnn-cue",), limits=Limits(max_evaluate_images=12))


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine), base_url="http://127.0.0.1")


def _wait(client, jid, timeout=300.0):
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = client.get(f"/api/trust/{jid}")
        assert r.status_code == 200, r.text
        s = r.json()
        seen.append((s["status"], s["done"]))
        if s["status"] in ("done", "failed"):
            return s, seen
        time.sleep(0.05)
    raise AssertionError(f"evaluation {jid} still open after {timeout} s: {seen[-1]}")


def test_trust_table_equals_evaluate_on_the_same_images(client, engine):
    samples = list(range(8))
    fields = {"model": "digits-cnn-cue", "methods": "saliency,gradcam",
              "metrics": "sparseness,region_perturbation_morf", "samples": ",".join(map(str, samples))}
    r = client.post("/api/trust", data=fields)
    assert r.status_code == 200, r.text
    start = r.json()
    assert start["status"] == "queued" and start["total"] == 2 * (2 + 1)
    s, seen = _wait(client, start["id"])
    assert s["status"] == "done", s["error"]
    assert s["done"] == s["total"] and all(d <= s["total"] for _, d in seen)
    lm = engine.model("digits-cnn-cue")
    x = torch.cat([prepare_inputs(engine.sample(i), lm.preprocessing)[0] for i in samples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = cs.evaluate(lm, x, ["saliency", "gradcam"], metrics=["sparseness", "region_perturbation_morf"],
                           progress=False)
    res = s["result"]
    assert res["methods"] == ["saliency", "gradcam"] and res["n_images"] == 8
    for me in want.methods:
        for m in want.metrics:
            cell = res["cells"][me][m]
            np.testing.assert_allclose(cell["mean"], want.mean(me, m), rtol=1e-6)
            np.testing.assert_allclose(cell["ci"], want.ci[me][m], rtol=1e-6)
            assert cell["rank"] == want.ranks()[m][me]
    assert res["best"] == want.best()
    assert res["png"].startswith("data:image/png;base64,")
    assert s["warnings"] == []  # 8 images: no warning
    assert count_hooks(lm.model) == 0 and not lm.model.training


def test_few_images_warn_on_the_page(client):
    r = client.post("/api/trust", data={"model": "digits-cnn-cue", "methods": "saliency",
                                        "metrics": "sparseness", "samples": "0,1,2"})
    s, _ = _wait(client, r.json()["id"])
    assert s["status"] == "done" and any("wide confidence intervals" in w for w in s["warnings"])


@pytest.mark.parametrize(("fields", "says"), [
    ({"methods": "nosuch"}, "nosuch"),
    ({"metrics": "pointing_game"}, "masks"),
    ({"metrics": "nosuch"}, "unknown metric"),
    ({"families": "nosuch"}, "unknown families"),
    ({"metrics": "sparseness", "families": "complexity"}, "not both"),
    ({"samples": "999"}, "no sample 999"),
    ({"samples": "x"}, "numbers"),
    ({"samples": ",".join(["0"] * 13)}, "at most 12"),
    ({"model": "nosuch"}, "unknown model"),
    ({"methods": "saliency,saliency"}, "twice"),
])
def test_bad_requests_get_one_line(client, fields, says):
    r = client.post("/api/trust", data={"model": "digits-cnn-cue", **fields})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert says in msg and "\n" not in msg and "Traceback" not in msg


def test_unknown_id_is_404(client):
    r = client.get("/api/trust/0123abcd")
    assert r.status_code == 404 and "no evaluation" in r.json()["error"]


def test_an_evaluation_past_its_time_stops_and_says_so():
    eng = Engine(("digits-cnn-cue",), limits=Limits(evaluate_timeout_s=0.3))
    c = TestClient(create_app(eng), base_url="http://127.0.0.1")
    r = c.post("/api/trust", data={"model": "digits-cnn-cue", "methods": "saliency",
                                   "families": "robustness"})
    s, _ = _wait(c, r.json()["id"])
    assert s["status"] == "failed" and "ran out of time" in s["error"]
    lm = eng.model("digits-cnn-cue")
    t0 = time.monotonic()  # the running job stops at its next forward pass, and undoes its hooks
    while (count_hooks(lm.model) or lm.model.training) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert count_hooks(lm.model) == 0 and not lm.model.training
    eng.close()


def test_the_page_is_served(client):
    r = client.get("/trust")
    assert r.status_code == 200 and "Which method to trust" in r.text
    assert client.get("/static/trust.js").status_code == 200
