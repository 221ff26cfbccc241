"""Bounded load tests of the web app on loopback, through a real uvicorn server.

* Many requests, 8 at a time, mixed methods, models and images: no error; every concurrent answer
  equals the answer to the same request made alone (requests sharing a model do not see each
  other's hooks or state); no hook left on any served model and its modes unchanged; resident
  memory does not grow beyond a fixed bound after warm-up.
* Heavy methods (Score-CAM, occlusion) from six clients while two clients send cheap ones
  (saliency): no error, and cheap requests wait for at most the job running when they arrive
  (the job queue's light lane), not for every heavy job queued before them.
* A soak of a few thousand cheap requests: resident memory flat after warm-up.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from helpers import assert_same_state, model_state
from PIL import Image

import convscope as cs
from convscope.core.hooks import count_hooks
from convscope.frontends.serve import Engine
from convscope.frontends.serve.app import create_app, running

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
    # every method that applies to the CNNs, as the info JSON says (the registry's `requires`; the
    # attention methods refuse a CNN in one line: test_attention.py)
    info = {m["name"]: m for m in engine.info()["models"]}
    assert set(info["digits-cnn"]["inapplicable"]) == set(cs.method_names("attention"))
    methods = [m.name for m in cs.list_methods() if m.name not in info["digits-cnn"]["inapplicable"]]
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


def _p95(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), 95))


HEAVY_CLIENTS = 6
CHEAP_CLIENTS = 2
HEAVY_PER_CLIENT = 4  # 24 heavy requests: about 9 s of model time on 2 idle cores
TOTAL = 200


def test_cheap_requests_are_not_starved_by_heavy_ones():
    engine = Engine(("digits-cnn", "digits-cnn-cue"))
    heavy_combos = [(model, method) for method in ("scorecam", "occlusion")
                    for model in ("digits-cnn", "digits-cnn-cue")]
    heavy: list[dict] = []
    cheap: list[tuple[float, dict]] = []  # (client latency in s, body), sent while heavy ones ran
    errors: list[str] = []
    heavy_left = threading.Event()

    with running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=120) as client:
        def post(data: dict) -> dict | None:
            r = client.post("/api/explain", data=data)
            if r.status_code != 200:
                errors.append(f"{data}: {r.status_code} {r.text}")
                return None
            return r.json()

        def heavy_client(k: int) -> None:
            for i in range(HEAVY_PER_CLIENT):  # full settings: these are the slow ones
                model, method = heavy_combos[(k + i) % len(heavy_combos)]
                body = post({"model": model, "method": method, "sample": str((k + i) % 20)})
                if body is not None:
                    heavy.append(body)

        def cheap_client(k: int) -> None:
            limit = (TOTAL - HEAVY_CLIENTS * HEAVY_PER_CLIENT) // CHEAP_CLIENTS
            for i in range(limit):  # the last ones may run after the heavy ones: not measured
                during = not heavy_left.is_set()
                t0 = time.perf_counter()
                body = post({"model": "digits-cnn-cue", "method": "saliency", "sample": str((k + i) % 20)})
                if body is not None and during:
                    cheap.append((time.perf_counter() - t0, body))

        assert post({"model": "digits-cnn", "method": "saliency", "sample": "0"})  # warm up
        with ThreadPoolExecutor(HEAVY_CLIENTS + CHEAP_CLIENTS) as pool:
            cheap_runs = [pool.submit(cheap_client, k) for k in range(CHEAP_CLIENTS)]
            heavy_runs = [pool.submit(heavy_client, k) for k in range(HEAVY_CLIENTS)]
            for f in heavy_runs:
                f.result()
            heavy_left.set()
            for f in cheap_runs:
                f.result()
    assert errors == []
    assert len(heavy) == HEAVY_CLIENTS * HEAVY_PER_CLIENT and all(b["heavy"] for b in heavy)
    assert len(cheap) >= 8 and not any(b["heavy"] for _, b in cheap)
    heavy_run = max(b["elapsed_ms"] for b in heavy) / 1000
    cheap_run = max(b["elapsed_ms"] for _, b in cheap) / 1000
    waited = _p95([b["waited_ms"] / 1000 for _, b in cheap])
    latency = _p95([t for t, _ in cheap])
    print(f"{len(heavy)} heavy + {len(cheap)} cheap requests: longest heavy run {heavy_run:.2f} s, "
          f"longest cheap run {cheap_run:.3f} s; cheap p95 wait {waited:.2f} s, p95 latency "
          f"{latency:.2f} s")
    # A cheap request arrives behind at most the job running now (at most the longest heavy run)
    # and one cheap job of the other cheap client: the light lane never holds LIGHT_BURST jobs,
    # so no heavy job is let ahead. 0.25 s covers thread wake-ups with 8 request threads on 2
    # busy cores. A first-come lock would make it wait behind up to 6 heavy jobs (about 6 x the
    # mean heavy run, over 1.5 s here), far over this bound.
    bound = heavy_run + (CHEAP_CLIENTS - 1) * cheap_run + 0.25
    assert waited < bound, (waited, bound)
    # The client sees the wait plus the run plus HTTP, form parsing and encoding three 256 px
    # PNGs in a request thread that shares 2 cores with 7 others: 1 s on top covers that.
    assert latency < bound + cheap_run + 1.0, (latency, bound)


SOAK_REQUESTS = 2000
SOAK_WARMUP = 300
SOAK_RSS_BOUND_MB = 40


def test_memory_stays_flat_over_a_soak_of_cheap_requests():
    engine = Engine(("digits-cnn",))
    rng = np.random.default_rng(5)
    uploads = []
    for k in range(4):  # photos of different sizes: decoding them allocates a few MB per request
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240 + 64 * k, 320 + 48 * k, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=85)
        uploads.append(buf.getvalue())

    with running(create_app(engine)) as url, httpx.Client(base_url=url, timeout=120) as client:
        def call(i: int) -> int:  # the layer browser's request: one forward pass, small pictures
            data = {"model": "digits-cnn", "layer": "features.6", "n": "2"}
            if i % 4:
                r = client.post("/api/activations", data={**data, "sample": str(i % 20)})
            else:
                r = client.post("/api/activations", data=data,
                                files={"file": ("p.jpg", uploads[i % 16 // 4], "image/jpeg")})
            return r.status_code

        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            codes = list(pool.map(call, range(SOAK_WARMUP)))
            rss_warm = _rss_mb()
            codes += list(pool.map(call, range(SOAK_WARMUP, SOAK_REQUESTS)))
        rss_end = _rss_mb()
    print(f"{SOAK_REQUESTS} cheap requests in {time.perf_counter() - t0:.1f} s; RSS {rss_warm:.0f} -> "
          f"{rss_end:.0f} MB after {SOAK_WARMUP} of warm-up")
    assert codes == [200] * SOAK_REQUESTS
    # Each request allocates up to a few MB for a moment (a decoded photo, tensors, PNGs).
    # Kept per request, even 20 kB would add 34 MB over the 1,700 requests after warm-up; spread
    # over one malloc arena per request thread without trimming, the old app grew by hundreds of
    # MB on photos. 40 MB leaves room for allocator slack and a lazily built cache or two.
    assert rss_end - rss_warm < SOAK_RSS_BOUND_MB, (rss_warm, rss_end)
