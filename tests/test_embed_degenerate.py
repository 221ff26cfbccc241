"""Embedding maps of degenerate features: identical rows crash scikit-learn's t-SNE (a segfault).

project() falls back to PCA with a warning; the audit records the fallback as a class note. The
crashing cases run in a subprocess so that a regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convscope.core.errors import UnreliableResultWarning
from convscope.methods.dataset.embed import embedding_fallback, project

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("kind", ["constant", "zeros", "two"])
def test_tsne_of_degenerate_rows_falls_back_to_pca_with_a_warning(kind: str) -> None:
    r = _run(f"""
        import warnings, numpy as np
        from convscope.methods.dataset.embed import project
        row = np.random.default_rng(0).random((1, 1024))
        x = {{"constant": np.repeat(row, 6, 0), "zeros": np.zeros((5, 64)),
              "two": np.concatenate([np.repeat(row, 5, 0), row + 1.0])}}["{kind}"]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = project(x, "tsne")
        assert y.shape == (len(x), 2) and np.isfinite(y).all(), y
        assert any("placed by PCA" in str(m.message) for m in w), [str(m.message) for m in w]
        print("ok", np.ptp(y, 0).tolist())
    """)
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by a signal)\n{r.stderr[-2000:]}"
    spread = [float(v) for v in r.stdout.split("ok", 1)[1].strip(" []\n").split(",")]
    if kind == "two":  # two groups, apart on the first axis
        assert spread[0] > 0
    else:  # identical rows: one point
        assert spread == [0.0, 0.0]


def test_distinct_rows_keep_tsne_and_near_duplicates_count_as_one() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((12, 20))
    assert embedding_fallback(x, "tsne") is None
    assert embedding_fallback(x, "pca") is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableResultWarning)
        y = project(x, "tsne")
    assert not np.allclose(np.abs(y), np.abs(project(x, "pca")))  # t-SNE placed them, not PCA
    near = np.repeat(x[:1], 8, 0) + rng.random((8, 20)) * 1e-9  # float noise below float32's step
    assert "all identical" in (embedding_fallback(near, "umap") or "")
    with pytest.warns(UnreliableResultWarning, match="placed by PCA"):
        project(near.astype(np.float32), "tsne")


def test_audit_cli_with_classes_of_identical_maps_does_not_crash(tmp_path: Path) -> None:
    """The reviewer's command: gradcam maps of classes 4, 5 and 7 are all constant at --limit 60."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "convscope", "audit", "--model", "digits-cnn-cue", "--data", "digits",
         "--limit", "60", "-o", str(out), "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert r.returncode >= 0, f"killed by signal {-r.returncode}\n{r.stderr[-2000:]}"
    assert r.returncode == 0, r.stderr[-2000:]
    assert "placed by PCA instead" in r.stderr  # said, not silent
    assert (out / "audit.json").is_file() and (out / "report.html").is_file()


def test_embed_of_identical_images_names_pca_and_warns() -> None:
    import torch
    from torch import nn

    import convscope as cs

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.full((6, 3, 12, 12), 0.5)  # six identical images: identical features
    with pytest.warns(UnreliableResultWarning, match="placed by PCA"):
        e = cs.embed(cs.load_model(net.eval(), preprocessing="none"), x, "0", method="tsne")
    assert e.method == "pca" and np.isfinite(e.coords).all() and not np.ptp(e.coords, 0).any()


@pytest.mark.parametrize(("option", "bad"), [
    *(("perplexity", v) for v in (float("nan"), float("inf"), -float("inf"), 0, 0.0, 1e-9, 1e-3, 0.5, -1,
                                  10**9, 1e300, True, "30")),
    *(("seed", v) for v in (float("nan"), float("inf"), -1, 2**32, 10**30, 2.5, 1.0, True, "0", None)),
])
def test_numeric_options_are_refused_in_one_line_before_any_work(option, bad) -> None:
    from convscope.core.errors import InputError
    from convscope.methods.dataset import embed

    x = np.random.default_rng(2).random((12, 6))
    for method in ("pca", "tsne"):
        with pytest.raises(InputError, match=f"^{option} must be ") as e:
            project(x, method, **{option: bad})
        assert "\n" not in str(e.value)
    # embed() checks them before it opens the model or reads a single image
    with pytest.raises(InputError, match=f"^{option} must be "):
        embed("no-such-model", "no-such-data", "conv", method="tsne", **{option: bad})


def test_bad_features_are_refused_and_good_edges_pass() -> None:
    from convscope.core.errors import InputError

    x = np.random.default_rng(3).random((12, 6))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[4, 2] = bad
        with pytest.raises(InputError, match="NaN or infinite"):
            project(y, "tsne")
    with pytest.raises(InputError, match="unknown embedding method"):
        project(x, "mds")
    with pytest.raises(InputError, match=r"\(N, D\)"):
        project(x[None], "pca")
    # the edges of the declared ranges are taken; a perplexity above (N - 1) / 3 is lowered to it
    clamped = project(x, "tsne", perplexity=10_000, seed=2**32 - 1)
    np.testing.assert_array_equal(clamped, project(x, "tsne", perplexity=11 / 3, seed=2**32 - 1))
    assert np.isfinite(project(x, "tsne", perplexity=1.0)).all()


@pytest.mark.parametrize("bad", [-1, 2**32, 2.5])
def test_audit_checks_the_seed_of_its_maps_before_any_work(bad) -> None:
    from convscope.core.errors import InputError
    from convscope.methods.dataset import audit

    with pytest.raises(InputError, match="^seed must be an integer in"):  # before the model is opened
        audit("no-such-model", "no-such-data", seed=bad)


def test_a_lowered_perplexity_is_said_and_recorded() -> None:
    """t-SNE on fewer than 91 images cannot use perplexity 30: the one used is warned and recorded."""
    import warnings

    from convscope.core.errors import AssumptionWarning
    from convscope.methods.dataset.embed import tsne_perplexity

    x = np.random.default_rng(3).random((13, 6))
    with pytest.warns(AssumptionWarning, match=r"t-SNE ran with 4\b"):
        y = project(x, "tsne")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)  # asked within range: nothing to say
        np.testing.assert_array_equal(y, project(x, "tsne", perplexity=4.0))
    assert tsne_perplexity(30, 13) == 4.0 and tsne_perplexity(2.5, 13) == 2.5
    assert tsne_perplexity(30, 3) == 1.0  # (N - 1) / 3 = 2 / 3 is below 1, the least meaningful one
    # 3 images: (N - 1) / 3 would be 2 / 3, outside the range; t-SNE runs with 1 and says so (the
    # class audit passes this lowered value back to project(), which must take it)
    three = x[:3]
    with pytest.warns(AssumptionWarning, match=r"t-SNE ran with 1\b"):
        y3 = project(three, "tsne")
    np.testing.assert_array_equal(y3, project(three, "tsne", perplexity=tsne_perplexity(30, 3)))
    assert y3.shape == (3, 2) and np.isfinite(y3).all()
