"""The web app's "Which method to trust" view (#33): a background evaluation through the FastAPI
test client, its progress, its table against ``cs.evaluate`` run directly on the same images, its
time limit and its one-line errors."""

from __future__ import annotations

import threading
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


def test_a_metrics_own_warning_reaches_the_page(client, engine):
    # digits-cnn-cue's first convolution pads with zeros: input_invariance's bias compensation is
    # inexact at the borders, which the metric warns; the page reads MetricTable.notes
    first = next(m for m in engine.model("digits-cnn-cue").model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.padding != (0, 0)
    r = client.post("/api/trust", data={"model": "digits-cnn-cue", "methods": "saliency",
                                        "metrics": "input_invariance", "samples": "0,1,2,3,4,5,6,7"})
    s, _ = _wait(client, r.json()["id"])
    assert s["status"] == "done", s["error"]
    assert [w for w in s["warnings"] if w.startswith("input_invariance:") and "pads with zeros" in w], s


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


def test_an_explain_request_is_answered_while_an_evaluation_runs():
    # one heavy job per method: the explain request goes in between, and answers before the
    # evaluation's last job ends (one job for the whole grid would hold it to the end)
    eng = Engine(("digits-cnn-cue",), limits=Limits(timeout_s=60))
    c = TestClient(create_app(eng), base_url="http://127.0.0.1")
    ended = []  # heavy or not, of each job in the order they end on the worker
    real = eng.jobs.run

    def run(fn, *, heavy, deadline):
        def job(expired):
            try:
                return fn(expired)
            finally:
                ended.append(heavy)
        return real(job, heavy=heavy, deadline=deadline)

    eng.jobs.run = run
    methods = ["saliency", "gradient_x_input", "gradcam", "smoothgrad"]
    r = c.post("/api/trust", data={"model": "digits-cnn-cue", "methods": ",".join(methods),
                                   "metrics": "max_sensitivity", "samples": "0,1,2,3,4,5,6,7"})
    jid = r.json()["id"]
    t0 = time.monotonic()
    while c.get(f"/api/trust/{jid}").json()["status"] != "running" and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    e = c.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency", "sample": "3"})
    assert e.status_code == 200, e.text
    s, _ = _wait(c, jid)
    assert s["status"] == "done", s["error"]
    assert ended.count(True) == len(methods) and ended[-1] is True  # the explain did not wait for all
    assert ended.index(False) < len(methods)
    eng.close()


def test_a_method_that_does_not_apply_is_refused(client):
    r = client.post("/api/trust", data={"model": "digits-cnn-cue", "methods": "rollout,saliency"})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "rollout" in msg and "no attention layers" in msg and "\n" not in msg
    info = client.get("/api/info").json()  # the page greys them out from this list
    off = info["models"][0]["inapplicable"]
    assert "rollout" in off and "saliency" not in off


def test_the_image_count_is_checked_before_decoding(client):
    # 13 non-images: the count is refused first (decoding them would say they are not images)
    files = [("files", (f"f{i}.png", b"not an image", "image/png")) for i in range(13)]
    r = client.post("/api/trust", data={"model": "digits-cnn-cue"}, files=files)
    assert r.status_code == 400 and "at most 12" in r.json()["error"], r.text
    r = client.post("/api/trust", data={"model": "digits-cnn-cue", "samples": ",".join(["999"] * 13)})
    assert r.status_code == 400 and "at most 12" in r.json()["error"], r.text


def test_open_evaluations_and_a_full_queue_answer_429():
    eng = Engine(("digits-cnn-cue",), limits=Limits(evaluate_timeout_s=3))
    c = TestClient(create_app(eng), base_url="http://127.0.0.1")
    slow = {"model": "digits-cnn-cue", "methods": "saliency", "families": "robustness"}
    ids = [c.post("/api/trust", data=slow).json()["id"] for _ in range(2)]  # MAX_OPEN = 2
    r = c.post("/api/trust", data=slow)
    assert r.status_code == 429 and "already running" in r.json()["error"], r.text
    for jid in ids:  # both end (done, or out of time after 3 s)
        assert _wait(c, jid, 60)[0]["status"] in ("done", "failed")
    eng.close()
    eng2 = Engine(("digits-cnn-cue",), limits=Limits(max_queue=1))
    c2 = TestClient(create_app(eng2), base_url="http://127.0.0.1")
    eng2.jobs._light.append(object())  # noqa: SLF001 - one job waiting: the queue is full
    r = c2.post("/api/trust", data={"model": "digits-cnn-cue", "methods": "saliency",
                                    "metrics": "sparseness"})
    assert r.status_code == 429 and "jobs are waiting" in r.json()["error"], r.text
    eng2.jobs._light.clear()  # noqa: SLF001
    eng2.close()


def test_a_timed_out_evaluation_stays_open_until_its_job_stops():
    eng = Engine(("digits-cnn-cue",), limits=Limits(evaluate_timeout_s=0.3))
    trust = create_app(eng).trust
    gate = threading.Event()
    real = eng.jobs.run

    def run(fn, **kw):  # the job's first forward pass runs past its deadline, until the gate opens
        return real(lambda expired: fn(lambda: gate.wait(30) or expired()), **kw)

    eng.jobs.run = run
    out = trust.start("digits-cnn-cue", methods="saliency", metrics="sparseness", samples="0,1")
    t0 = time.monotonic()
    while trust.status(out["id"])["status"] != "failed" and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    assert trust.status(out["id"])["status"] == "failed"
    assert trust._open() == 1  # noqa: SLF001 - its job still runs: it counts as open
    gate.set()
    while trust._open() and time.monotonic() - t0 < 30:  # noqa: SLF001
        time.sleep(0.02)
    assert trust._open() == 0  # noqa: SLF001
    eng.close()
