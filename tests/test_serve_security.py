"""The web app's defences: requests from other web pages and other host names are refused, every
error has one shape and its documented status, the job queue is bounded and timed, and the CLI
refuses bad numbers and taken ports with one line. Loopback only."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # the dev extra installs the serve dependencies
from helpers import assert_same_state, model_state
from PIL import Image
from torch import nn

import convscope as cs
from convscope.core.hooks import count_hooks
from convscope.frontends.serve import Engine, Limits, create_app
from convscope.frontends.serve.app import running
from convscope.frontends.serve.jobs import LIGHT_BURST, JobQueue, QueueFull, TimedOut

PORT = 8123  # the port the in-process client claims; no socket is opened on it
BASE = f"http://127.0.0.1:{PORT}"
SALIENCY = {"model": "digits-cnn", "method": "saliency", "sample": "3"}


@pytest.fixture(scope="module")
def engine():
    return Engine(("digits-cnn",), limits=Limits(max_upload_bytes=100_000, max_pixels=1_000_000))


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine, allowed_hosts=["convscope.lan", "box.lan:9000"]), base_url=BASE)


def _refused(r: httpx.Response) -> str:
    assert r.status_code == 403, r.text
    return r.json()["error"]


# --- Origin, Referer, Host --------------------------------------------------------------------------


def _endpoints(client) -> list[tuple[str, str, dict | None]]:
    """Every API route: (method, path, form). A result is made first, so its downloads exist."""
    kept = client.post("/api/explain", data=SALIENCY).json()["downloads"]
    return [("POST", "/api/explain", SALIENCY),
            ("POST", "/api/grid", {**SALIENCY, "kind": "methods", "methods": "saliency,gradcam"}),
            ("POST", "/api/grid", {**SALIENCY, "kind": "classes"}),
            ("POST", "/api/activations", {"model": "digits-cnn", "layer": "features.6", "sample": "3"}),
            ("GET", "/api/info", None), ("GET", "/api/methods", None),
            *(("GET", kept[f], None) for f in ("png", "npy", "json"))]


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "null"},  # sandboxed frames, file:// pages
    {"origin": "http://127.0.0.1:9999"},  # same host, another port: another origin
    {"origin": "https://127.0.0.1:8123"},  # another scheme
    {"origin": "http://localhost:8123"},  # another name for the host: another origin
    {"referer": "http://evil.example/page.html"},
    {"referer": "http://127.0.0.1.evil.example:8123/"},
    {"origin": "http://evil.example", "referer": f"{BASE}/"},  # Origin decides
])
def test_requests_from_other_pages_are_refused(client, engine, headers):
    endpoints = _endpoints(client)
    done = engine.jobs.done
    for method, path, data in endpoints:
        assert "other web pages" in _refused(client.request(method, path, data=data, headers=headers)), path
    assert engine.jobs.done == done  # nothing ran


def test_url_encoded_cross_origin_post_is_refused(client, engine):
    """The reported attack: a plain HTML form on another site posting to the app."""
    done = engine.jobs.done
    r = client.post("/api/explain", content="model=digits-cnn&method=saliency&sample=3",
                    headers={"origin": "http://evil.example",
                             "content-type": "application/x-www-form-urlencoded"})
    _refused(r)
    assert engine.jobs.done == done


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.1:9999",
                                  "localhost", "[::2]:8123", "", "127.0.0.1:99999", "box.lan:9001",
                                  "convscope.lan.evil.example"])
def test_other_host_names_are_refused_even_for_the_page(client, engine, host):
    """DNS rebinding: another site's name resolving to 127.0.0.1 must not reach the app."""
    endpoints = _endpoints(client)
    done = engine.jobs.done
    assert "Host" in _refused(client.get("/", headers={"host": host}))
    for method, path, data in endpoints:
        assert "Host" in _refused(client.request(method, path, data=data, headers={"host": host})), path
    assert engine.jobs.done == done


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}",
                                  f"LOCALHOST:{PORT}", "convscope.lan", "convscope.lan:443",
                                  "box.lan:9000"])
def test_own_and_allowed_host_names_with_their_own_origin_pass(client, host):
    origin = {"origin": f"http://{host}", "host": host}
    for method, path, data in _endpoints(client):
        assert client.request(method, path, data=data, headers=origin).status_code == 200, path
    assert client.get("/api/info", headers={"host": host}).status_code == 200
    r = client.post("/api/explain", data=SALIENCY, headers=origin)
    assert r.status_code == 200, r.text
    assert client.post("/api/explain", data=SALIENCY,
                       headers={"host": host, "referer": f"http://{host}/"}).status_code == 200


def test_clients_without_origin_or_referer_pass(client):
    """curl, scripts and tests send neither header; a browser always sends Origin on a
    cross-origin POST, so letting these through opens nothing to other web pages."""
    assert client.get("/").status_code == 200
    assert client.get("/api/info").status_code == 200
    assert client.post("/api/explain", data=SALIENCY).status_code == 200


def test_a_link_from_another_site_opens_the_page_but_not_the_api(client):
    ref = {"referer": "https://search.example/?q=convscope"}
    assert client.get("/", headers=ref).status_code == 200
    assert client.get("/static/app.js", headers=ref).status_code == 200
    _refused(client.get("/api/info", headers=ref))


def test_allowed_hosts_must_be_host_names():
    with pytest.raises(cs.ConvscopeError, match="not a host name"):
        create_app(Engine(("digits-cnn",)), allowed_hosts=["evil.example:notaport"])


# --- one error shape, documented codes ----------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("data, files, status, words", [
    ({"method": "saliency", "sample": "3"}, None, 400, "model"),  # missing field
    ({**SALIENCY, "topk": "many"}, None, 400, "topk"),  # malformed field
    ({**SALIENCY, "fast": "perhaps"}, None, 400, "fast"),
    ({"model": "digits-cnn", "method": "saliency"},
     {"file": ("bomb.png", _png_header(50_000, 50_000), "image/png")}, 413, "pixels"),  # Pillow's guard
    ({"model": "digits-cnn", "method": "saliency"},
     {"file": ("big.png", _png_header(2_000, 1_000), "image/png")}, 413, "pixels"),  # ours
    ({"model": "digits-cnn", "method": "saliency"},
     {"file": ("a.png", b"GIF89a but not really", "image/png")}, 415, "image"),
])
def test_errors_have_one_shape_and_the_documented_status(client, data, files, status, words):
    r = client.post("/api/explain", data=data, files=files)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"]


def test_unknown_paths_and_methods_answer_in_the_same_shape(client):
    for r, status in ((client.get("/api/nothing"), 404), (client.get("/api/explain"), 405),
                      (client.put("/api/info"), 405)):
        assert r.status_code == status and list(r.json()) == ["error"], r.text


def test_oversized_chunked_upload_gets_413_through_uvicorn(engine):
    """No Content-Length: the limit is counted while the body streams in."""
    app = create_app(engine)

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 10_000
        yield b"\r\n--b--\r\n"

    with running(app) as url:
        r = httpx.post(url + "/api/explain", content=body(), timeout=30,
                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
        assert "upload limit" in r.json()["error"]
        r = httpx.post(url + "/api/explain", data=SALIENCY, timeout=30)  # the server still works
        assert r.status_code == 200, r.text


# --- the job queue --------------------------------------------------------------------------------


def _blocker(queue: JobQueue, heavy: bool = True) -> tuple[threading.Event, threading.Thread]:
    """Occupy the queue's worker until the returned event is set."""
    go, started = threading.Event(), threading.Event()

    def job(_expired) -> None:
        started.set()
        assert go.wait(30)

    t = threading.Thread(target=queue.run, args=(job,), kwargs={"heavy": heavy,
                                                                "deadline": time.monotonic() + 60})
    t.start()
    assert started.wait(30)
    return go, t


def test_cheap_jobs_go_first_and_heavy_ones_are_not_starved():
    q = JobQueue(max_queue=32)
    go, t = _blocker(q)
    order: list[str] = []
    threads = []
    names = [f"heavy{i}" for i in range(3)] + [f"light{i}" for i in range(2 * LIGHT_BURST + 2)]
    for name in names:  # all queued behind the blocker, heavy ones first
        th = threading.Thread(target=q.run, args=(lambda _u, n=name: order.append(n),),
                              kwargs={"heavy": name.startswith("heavy"), "deadline": time.monotonic() + 60})
        th.start()
        threads.append(th)
        while q.waiting < len(threads):
            time.sleep(0.001)
    go.set()
    for th in (t, *threads):
        th.join(30)
    lights = [f"light{i}" for i in range(2 * LIGHT_BURST + 2)]
    expected = (lights[:LIGHT_BURST] + ["heavy0"] + lights[LIGHT_BURST:2 * LIGHT_BURST] + ["heavy1"]
                + lights[2 * LIGHT_BURST:] + ["heavy2"])
    assert order == expected


def test_a_full_queue_answers_429_with_retry_after(engine):
    eng = Engine(("digits-cnn",), limits=Limits(max_queue=1))
    c = TestClient(create_app(eng), base_url=BASE)
    go, t = _blocker(eng.jobs)
    waiter = threading.Thread(target=lambda: c.post("/api/explain", data=SALIENCY))
    waiter.start()  # the one job allowed to wait
    while eng.jobs.waiting < 1:
        time.sleep(0.001)
    try:
        for path, data in (("/api/explain", SALIENCY), ("/api/grid", {**SALIENCY, "kind": "classes"})):
            r = c.post(path, data=data)
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]
        with pytest.raises(QueueFull):
            eng.explain("digits-cnn", "saliency", eng.sample(3))
    finally:
        go.set()
        t.join(30)
        waiter.join(30)
    assert eng.jobs.done == 2  # the blocker and the waiting request


def test_a_job_that_outwaits_its_limit_gets_503_and_never_runs():
    eng = Engine(("digits-cnn",), limits=Limits(timeout_s=0.5))
    c = TestClient(create_app(eng), base_url=BASE)
    go, t = _blocker(eng.jobs)
    try:
        t0 = time.monotonic()
        r = c.post("/api/explain", data=SALIENCY)
        waited = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1 and "ran out of time" in r.json()["error"]
        # answered at its deadline, not when the blocker ends (it never does until `go`); 10 s is
        # far above a 0.5 s limit plus a request's overhead, far below the blocker's 30 s
        assert waited < 10
        r = c.post("/api/grid", data={**SALIENCY, "kind": "methods", "methods": "saliency,gradcam"})
        assert r.status_code == 503 and "ran out of time" in r.json()["error"], r.text
    finally:
        go.set()
        t.join(30)
    assert c.post("/api/explain", data=SALIENCY).status_code == 200
    assert eng.jobs.done == 2  # the blocker and the last request; the timed-out ones never ran
    assert eng.jobs.timed_out == 2


class _Slow(nn.Module):
    """digits-cnn that sleeps ``delay`` seconds per image in every forward pass, so a method runs
    as long as we need whatever batch size it picks."""

    def __init__(self, net: nn.Module, delay: float) -> None:
        super().__init__()
        self.net = net
        self.delay = delay
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        time.sleep(self.delay * x.shape[0])
        return self.net(x)


def test_a_running_job_stops_at_its_next_forward_pass_after_the_deadline(clean_model):
    slow = _Slow(clean_model.model, 0.01).eval()  # one mode throughout (zoo's find_default_layer
    # restores a mixed-mode model with model.train(was), which is not what this test is about)
    lm = cs.load_model(slow, class_names=clean_model.class_names, preprocessing=clean_model.preprocessing)
    eng = Engine((lm,), limits=Limits(timeout_s=0.5))
    before = model_state(slow)
    img = Image.fromarray(np.zeros((32, 32), np.uint8), "L")
    t0 = time.monotonic()
    with pytest.raises(TimedOut):
        eng.explain(lm.name, "rise", img)  # 2,000 masks at 10 ms each: 20 s if it ran to the end
    later = eng.explain(lm.name, "saliency", img, deadline=time.monotonic() + 60)  # queued behind
    # RISE stopped at the first forward pass after its 0.5 s: the next request came back long
    # before its 20 s (10 s leaves room for its last batch, at most a few hundred masks)
    assert time.monotonic() - t0 < 10
    assert later["method"] == "saliency" and slow.seen < 1000
    assert eng.jobs.timed_out == 1 and eng.jobs.done == 1
    assert count_hooks(slow) == 0
    assert_same_state(model_state(slow), before)
    eng.close()
    with pytest.raises(cs.ConvscopeError, match="shutting down"):
        eng.explain(lm.name, "saliency", img)


def test_close_fails_every_waiting_job_at_once_with_a_503():
    eng = Engine(("digits-cnn",), limits=Limits(timeout_s=30))
    c = TestClient(create_app(eng), base_url=BASE)
    go, t = _blocker(eng.jobs)  # the running job; ignores `expired`, so close() cannot stop it
    answers: list[tuple[float, object]] = []
    t0 = time.monotonic()

    def queued(post: bool, heavy: bool) -> None:
        if post:
            out: object = c.post("/api/explain", data=SALIENCY)
        else:
            try:
                out = eng.jobs.run(lambda _e: "ran", heavy=heavy, deadline=time.monotonic() + 30)
            except Exception as exc:  # noqa: BLE001 - the test looks at what came back
                out = exc
        answers.append((time.monotonic() - t0, out))

    kinds = ((True, False), (False, False), (False, True))  # a request; a cheap and a heavy job
    waiters = [threading.Thread(target=queued, args=a) for a in kinds]
    for i, w in enumerate(waiters, 1):
        w.start()
        while eng.jobs.waiting < i:
            time.sleep(0.001)
    try:
        eng.jobs.close(timeout=0.1)
        for w in waiters:
            w.join(10)  # without close() failing them they wait their 30 s deadline
        assert len(answers) == 3 and all(when < 10 for when, _ in answers)
        r = next(out for _, out in answers if hasattr(out, "status_code"))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert "shutting down" in r.json()["error"] and "\n" not in r.json()["error"]
        errors = [out for _, out in answers if not hasattr(out, "status_code")]
        assert all(isinstance(e, cs.ConvscopeError) and getattr(e, "status", None) == 503
                   and "shutting down" in str(e) for e in errors), errors
    finally:
        go.set()
        t.join(30)
    eng.close()  # again: joins the worker, so its count of finished jobs is final
    assert eng.jobs.done == 1 and eng.jobs.timed_out == 0  # only the blocker ran; none "timed out"
    r = c.post("/api/explain", data=SALIENCY)
    assert r.status_code == 503 and "shutting down" in r.json()["error"]


# --- samples and layers follow the model -------------------------------------------------------------


class _Photo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_samples_are_offered_only_for_models_they_fit_and_the_default_layer_is_served():
    torch.manual_seed(0)
    lm = cs.load_model(_Photo(), class_names=["a", "b", "c"])
    eng = Engine(("digits-cnn", lm))
    c = TestClient(create_app(eng), base_url=BASE)
    info = {m["name"]: m for m in c.get("/api/info").json()["models"]}
    assert info["digits-cnn"]["samples"] is True and info[lm.name]["samples"] is False
    default = info[lm.name]["default_layer"]
    assert default == lm.default_layer and default != info[lm.name]["layers"][0]["name"]
    assert [d["name"] for d in info[lm.name]["layers"] if d["default"]] == [default]
    r = c.post("/api/explain", data={"model": lm.name, "method": "gradcam", "sample": "3"})
    assert r.status_code == 400 and "upload an image" in r.json()["error"]
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(buf, format="PNG")
    r = c.post("/api/explain", data={"model": lm.name, "method": "gradcam"},
               files={"file": ("p.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200 and r.json()["layer"] == default


# --- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], "--port"),
    (["--port", "0"], "--port"),
    (["--port", "http"], "--port"),
    (["--max-upload-mb", "nan"], "--max-upload-mb"),
    (["--max-upload-mb", "-3"], "--max-upload-mb"),
    (["--max-megapixels", "inf"], "--max-megapixels"),
    (["--max-queue", "0"], "--max-queue"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
])
def test_cli_refuses_bad_numbers_in_one_line(capsys, argv, words):
    from convscope.frontends.cli.main import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope: error:") and err.count("\n") == 1 and words in err, err


@pytest.fixture
def no_serving(monkeypatch):
    """Record what uvicorn would serve instead of serving it."""
    import uvicorn

    seen: dict = {}

    def run(server, sockets=None):
        seen["sockets"] = [s.getsockname() for s in sockets or []]
        seen["app"] = server.config.app

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def test_cli_refuses_a_port_in_use_in_one_line(capsys, no_serving):
    import socket

    from convscope.frontends.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope: error:") and err.count("\n") == 1 and str(port) in err, err
    assert no_serving == {}


def test_cli_serves_on_the_socket_it_bound(capsys, no_serving):
    import socket

    from convscope.frontends.cli.main import main

    with socket.socket() as probe:  # a free port, released for the CLI to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port), "--max-queue", "3", "--timeout", "7.5",
                 "--allow-host", "box.lan"]) == 0
    assert no_serving["sockets"] == [("127.0.0.1", port)]
    app = no_serving["app"]
    assert (app.engine.limits.max_queue, app.engine.limits.timeout_s) == (3, 7.5)
    c = TestClient(app, base_url="http://box.lan:1234")
    assert c.get("/api/info").status_code == 200
