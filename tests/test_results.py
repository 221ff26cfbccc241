import json

import numpy as np
import pytest
from PIL import Image

import convscope as cs
from convscope.errors import InputError
from convscope.results import colorize, normalize_map


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
