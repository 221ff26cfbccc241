"""A bounded load test of the web app on loopback: many requests, 8 at a time, mixed methods,
models and images, through a real uvicorn server.

Must hold: no error; every concurrent answer equals the answer to the same request made alone
(requests sharing a model do not see each other's hooks or state); no hook left on any served
model and its modes unchanged; resident memory does not grow beyond a fixed bound after warm-up.
"""

from __future__ import annotations

import io
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from helpers import assert_same_state, model_state
from PIL import Image

import convscope as cs
from convscope.hooks import count_hooks
from convscope.serve import Engine
from convscope.serve.app import create_app, running

N_REQUESTS = 200
CONCURRENCY = 8
WARMUP = 40
RSS_BOUND_MB = 96  # growth allowed between warm-up and the end (allocator slack, caches)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def _photo() -> bytes:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.stack([(xx * 2) % 255, (yy * 3) % 255, (xx + yy) % 255], -1).astype(np.uint8)
    img[30:60, 40:80] = rng.integers(0, 255, (30, 40, 3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_load_mixed_methods_no_error_no_leak():
    engine = Engine(("digits-cnn", "digits-cnn-cue"))
    app = create_app(engine)
    before = {n: model_state(lm.model) for n, lm in engine.models.items()}
    photo = _photo()
    methods = cs.method_names()
    # the distinct requests: every method on both models with a cue sample, and on an upload
    combos = [(model, m, src) for m in methods
              for model, src in (("digits-cnn-cue", "s3"), ("digits-cnn", "s8"), ("digits-cnn-cue", "up"))]

    def call(client: httpx.Client, combo: tuple[str, str, str]) -> dict:
        model, method, src = combo
        data = {"model": model, "method": method, "fast": "true"}
        files = None
        if src == "up":
            files = {"file": ("photo.jpg", photo, "image/jpeg")}
        else:
            data["sample"] = src[1:]
        r = client.post("/api/explain", data=data, files=files)
        assert r.status_code == 200, (combo, r.text)
        return r.json()

    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        reference = {c: call(client, c) for c in combos}  # one at a time
        order = list(itertools.islice(itertools.cycle(combos), WARMUP + N_REQUESTS))
        rng = np.random.default_rng(0)
        rng.shuffle(order)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            warm = list(pool.map(lambda c: (c, call(client, c)), order[:WARMUP]))
            rss_warm = _rss_mb()
            results = list(pool.map(lambda c: (c, call(client, c)), order[WARMUP:]))
        rss_end = _rss_mb()
        elapsed = time.perf_counter() - t0
    print(f"{WARMUP + N_REQUESTS} requests, {CONCURRENCY} at a time, {len(methods)} methods: "
          f"{elapsed:.1f} s; RSS {rss_warm:.0f} -> {rss_end:.0f} MB")
    for combo, body in warm + results:
        ref = reference[combo]
        assert body["overlay"] == ref["overlay"], combo
        assert body["target_index"] == ref["target_index"], combo
        np.testing.assert_allclose([c["p"] for c in body["probabilities"]],
                                   [c["p"] for c in ref["probabilities"]], rtol=0, atol=1e-6)
    for name, lm in engine.models.items():
        assert count_hooks(lm.model) == 0, name
        assert_same_state(model_state(lm.model), before[name])
    assert rss_end - rss_warm < RSS_BOUND_MB, (rss_warm, rss_end)
