import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.core.errors import InputError
from convscope.core.results import colorize, normalize_map


def test_normalisation_rules():
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    assert normalize_map(m, signed=False, normalize="max").max() == 1.0
    mm = normalize_map(m + 3, signed=False, normalize="minmax")
    assert mm.min() == 0.0 and mm.max() == 1.0
    s = normalize_map(np.array([[-2.0, 1.0]]), signed=True)
    assert s.tolist() == [[-1.0, 0.5]]  # zero stays zero, the largest |v| maps to 1
    hot = np.zeros((20, 20))
    hot[0, 0] = 1000.0
    hot[1:, :] = 1.0
    p = normalize_map(hot, signed=False)  # percentile: one hot pixel does not wash out the rest
    assert p[5, 5] == 1.0
    assert np.array_equal(normalize_map(m, signed=False, normalize=None), m)
    with pytest.raises(InputError):
        normalize_map(m, signed=False, normalize="bogus")


def test_colour_maps_sequential_vs_diverging():
    zero_signed = colorize(np.zeros((1, 1)), signed=True)[0, 0]
    assert np.allclose(zero_signed, zero_signed.mean(), atol=0.03) and zero_signed.mean() > 0.9
    pos, neg = colorize(np.array([[1.0, -1.0]]), signed=True)[0]
    assert pos[0] > pos[2] and neg[2] > neg[0]  # red positive, blue negative
    low = colorize(np.zeros((1, 1)), signed=False)[0, 0]
    assert low.sum() < 0.1  # inferno starts black


@pytest.fixture(scope="module")
def expl(cue_model, cue_test):
    return cs.explain(cue_model, cue_model.preprocessing.normalize(cue_test.images[:3]))


def test_overlay_and_save(expl, tmp_path):
    assert len(expl) == 3 and len(expl[1]) == 1 and expl[1].targets == expl.targets[1:2]
    ov = expl.overlay(0)
    assert isinstance(ov, Image.Image) and min(ov.size) >= 224
    expl.save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").size == ov.size
    expl.save(tmp_path / "a.npy")
    arr = np.load(tmp_path / "a.npy")
    assert arr.shape == (3, 32, 32) and np.allclose(arr, expl.map.numpy())
    expl.save(tmp_path / "a.json")
    d = json.loads((tmp_path / "a.json").read_text())
    assert d["method"] == "saliency" and d["targets"] == list(expl.targets)
    assert np.allclose(np.array(d["map"]), expl.map.numpy())
    with pytest.raises(InputError, match=".png, .npy or .json"):
        expl.save(tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy", "a.png"]


def test_overlay_shows_the_hot_region(expl, cue_test):
    # the colour of the overlay differs most from the plain image where the map is high
    ov = np.asarray(expl.overlay(0, min_side=32)).astype(float)
    gray = np.asarray(expl.images[0]).mean(2)
    h = expl.heatmap(0)
    diff = np.abs(ov[..., 0] - (0.25 + 0.6 * gray) * 255)
    assert diff[h > 0.9].mean() > diff[h < 0.1].mean()


def test_notebook_reprs(expl):
    assert expl._repr_png_().startswith(b"\x89PNG")
    html = expl._repr_html_()
    assert html.count("<img") == 6 and "saliency" in html
    fig = expl.figure(0)
    assert len(fig.axes) == 4  # input, overlay, heatmap, colour bar


# --- no pyplot state, short reprs -------------------------------------------------------------
@pytest.fixture(scope="module")
def other_results(cue_model, cue_test):
    """One result of every other type that holds tensors or arrays (small, cheap settings)."""
    from convscope.methods.dataset import embed, layer_features, nearest_neighbors, top_activations
    from convscope.methods.featvis import filters
    from convscope.methods.synthesis import SynthesisResult, fgsm

    gen = torch.Generator().manual_seed(0)
    feats = layer_features(cue_model, "digits", "features.9", limit=24)
    return {
        "adversarial": fgsm(cue_model, cue_test.images[:2], eps=0.05),
        "synthesis": SynthesisResult("inversion", torch.rand(2, 1, 32, 32, generator=gen), ("a", "b"),
                                     history={"loss": [3.0, 2.5]}, layers=("features.3",),
                                     model_name="digits-cnn-cue", options={"steps": 2}),
        "visualization": filters(cue_model),
        "features": feats,
        "embedding": embed(cue_model, "digits", "features.9", features=feats),
        "neighbors": nearest_neighbors(cue_model, "digits", cue_test.images[0], "features.9", k=5,
                                       features=feats),
        "top": top_activations(cue_model, "digits", "features.3", k=3, limit=24),
    }


def test_figures_leave_the_callers_backend_and_pyplot_alone(expl, other_results):
    import sys

    import matplotlib

    before = matplotlib.get_backend()
    plt = sys.modules.get("matplotlib.pyplot")
    open_before = plt.get_fignums() if plt else []
    matplotlib.use("svg")  # stands for a notebook's inline backend: anything but Agg
    try:
        figs = [expl.figure(0), other_results["adversarial"].figure(),
                other_results["synthesis"].figure()]
        scatter = other_results["embedding"].scatter()
        png = other_results["adversarial"]._repr_png_()
        assert matplotlib.get_backend() == "svg"
        plt = sys.modules.get("matplotlib.pyplot")
        assert (plt.get_fignums() if plt else []) == open_before  # no figure left open in pyplot
    finally:
        matplotlib.use(before)
    assert [len(f.axes) for f in figs] == [4, 2 * 3, 3]  # the figures still render in full
    assert scatter.size == (640, 560) and png.startswith(b"\x89PNG")


def _target_text(e, i):
    t = e.targets[i]
    return f"{t} {e.target_name(i)!r} p={float(e.probabilities[i, t]):.2f}"


def test_explanation_repr_is_short_and_says_what_it_is(expl, cue_model):
    r = repr(expl)
    assert len(r) < 400 and "tensor([" not in r and "array([" not in r
    assert r.startswith("Explanation(method='saliency', model='digits-cnn-cue'")
    for i in range(len(expl)):
        assert _target_text(expl, i) in r
    assert f"map={tuple(expl.map.shape)}" in r
    cam = cs.explain(cue_model, cue_model.preprocessing.normalize(torch.rand(1, 1, 32, 32)), method="gradcam")
    assert f"layer={cam.layer!r}" in repr(cam)


def test_explanation_repr_stays_short_for_big_batches_long_names_and_options():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    names = ["a class name far longer than any label needs to be " * 3, "b", "c"]
    lm = cs.load_model(net, class_names=names)
    e = cs.explain(lm, torch.randn(9, 3, 16, 16), method="smoothgrad", target=0, n=3,
                   sigma=0.1)
    e = replace(e, options={**e.options, "baseline": torch.zeros(9, 3, 16, 16), "note": "x" * 500,
                            **{f"k{i}": i for i in range(20)}})
    r = repr(e)
    assert len(r) < 400, r
    assert r.count(" p=0.") == 4 and "5 more" in r  # the first four targets, then a count
    assert "tensor((9, 3, 16, 16), float32)" in r and "x" * 100 not in r


@pytest.mark.parametrize("kind", ["adversarial", "synthesis", "visualization", "features", "embedding",
                                  "neighbors", "top"])
def test_other_result_reprs_are_short(other_results, kind):
    obj = other_results[kind]
    r = repr(obj)
    assert r.startswith(type(obj).__name__ + "(") and len(r) < 400, r
    assert "tensor([" not in r and "array([" not in r and "\n" not in r
    assert ("model='digits-cnn-cue'") in r
    if kind == "adversarial":
        assert obj.summary() in r
    if kind in ("features", "embedding", "neighbors", "top"):
        assert f"layer={obj.layer!r}" in r and "DigitsSource(24 images, 10 classes)" in r
    if kind == "neighbors":
        assert f"{int(obj.indices[0])} ({float(obj.distances[0]):.3g})" in r
    if kind == "visualization":
        assert f"images={tuple(obj.images.shape)}" in r
