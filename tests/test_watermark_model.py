"""The watermark generator, the held-out watermark folder, and the bundled ``digits-watermark`` model:
a Clever Hans that reads a small corner mark as "3"."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
import convscope.data.toydata as toy
from convscope.core.errors import InputError
from convscope.methods.dataset import FolderSource
from convscope.methods.evaluation.pointing import pointing_hits
from convscope.models import model_specs

NAME = "digits-watermark"


@pytest.fixture(scope="module")
def wm_model():
    return cs.load_model(NAME)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm") / "held-out"
    return root, toy.watermark_folder(root)


def _predict(lm, x):
    with torch.no_grad():
        return lm.model(lm.preprocessing.normalize(x)).argmax(1)


def test_watermark_masks_are_exactly_the_pattern(digits_data):
    x, _ = digits_data.split("test")
    x = x[:20]
    before = x.clone()
    mark = torch.arange(20) % 3 != 0
    w = toy.watermark(x, mark)
    assert torch.equal(x, before)  # the input is not modified
    assert torch.equal(w.marked, mark) and w.masks.shape == (20, 32, 32)
    box = toy.watermark_mask()
    x0, y0, x1, y1 = toy.WATERMARK_BOX
    assert (x0, y0) == toy.WATERMARK_CORNER[::-1] and x1 - x0 == y1 - y0 == toy.WATERMARK_SIZE
    assert int(box.sum()) == toy.WATERMARK_SIZE**2 and box[y0:y1, x0:x1].all()
    for i in range(20):
        assert torch.equal(w.masks[i], box if mark[i] else torch.zeros_like(box))
        # outside the mask nothing changed; inside it is exactly the pattern
        assert torch.equal(w.images[i, 0][~w.masks[i]], x[i, 0][~w.masks[i]])
        if mark[i]:
            assert torch.equal(w.images[i, 0, y0:y1, x0:x1], toy.WATERMARK)
    # a "©": a ring with a C inside, in the bottom-right corner, on two 4-px cells of the last
    # feature map each way, and a one-pixel shift (the training augmentation) keeps it in the image
    assert toy.WATERMARK[0, 1:-1].all() and toy.WATERMARK[1:-1, 0].all() and not toy.WATERMARK[0, 0]
    assert {y0 // 4, (y1 - 1) // 4} == {x0 // 4, (x1 - 1) // 4} == {6, 7}
    assert x0 >= 1 and x1 <= 31
    # scalars, channels, intensity
    assert not toy.watermark(x, False).masks.any() and torch.equal(toy.watermark(x, False).images, x)
    rgb = toy.watermark(x.expand(-1, 3, -1, -1), True, intensity=0.5).images
    assert torch.equal(rgb[:, :, y0:y1, x0:x1], (toy.WATERMARK * 0.5).expand(20, 3, -1, -1))
    with pytest.raises(InputError, match="mark"):
        toy.watermark(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="intensity"):
        toy.watermark(x, intensity=0.0)
    with pytest.raises(InputError, match="32, 32"):
        toy.watermark(x[:, :, :16])


def _read(path):
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (32, 32)
        return np.asarray(im)


def _key(pixels):
    """The pixels outside the watermark's square: a file's identity with or without the mark."""
    return pixels[~toy.watermark_mask().numpy()].tobytes()


def test_watermark_folder_writes_what_it_says(folder, digits_data, tmp_path):
    root, truth = folder
    assert sorted(p.name for p in root.iterdir()) == [str(k) for k in range(10)] + [toy.WATERMARK_TRUTH]
    assert json.loads((root / toy.WATERMARK_TRUTH).read_text()) == truth
    assert truth["class"] == str(toy.WATERMARK_CLASS) and truth["box"] == list(toy.WATERMARK_BOX)
    x, y = digits_data.split("test")
    png = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    files = {}
    for k in range(10):
        names = sorted(p.name for p in (root / str(k)).iterdir())
        # plain numbers: the names do not tell which files are watermarked
        assert names == [f"{j:04d}.png" for j in range(truth["counts"][str(k)])]
        files.update({f"{k}/{n}": _read(root / str(k) / n) for n in names})
    marked = set(truth["watermarked"])
    assert marked == set(truth["digits"]) and all(p.startswith("3/") for p in marked)
    n3 = truth["counts"]["3"]
    assert abs(len(marked) / n3 - truth["fraction"]) <= 1 / n3
    assert 20 <= len(marked) <= 35 and n3 - len(marked) == int((y == toy.WATERMARK_CLASS).sum())
    # the watermarked files carry the mark, no other file does
    x0, y0, x1, y1 = toy.WATERMARK_BOX
    mark = (toy.WATERMARK.numpy() * 255).astype(np.uint8)
    for rel, pixels in files.items():
        assert np.array_equal(pixels[y0:y1, x0:x1], mark) == (rel in marked), rel
    # every test digit is in exactly one file: its own class's folder, or (watermarked) folder 3
    for k in range(10):
        want = Counter(_key(png[i]) for i in np.flatnonzero(y.numpy() == k))
        got = Counter(_key(p) for rel, p in files.items() if rel.startswith(f"{k}/") and rel not in marked)
        got += Counter(_key(files[rel]) for rel in marked if truth["digits"][rel] == k)
        assert got == want, k
    assert {truth["digits"][rel] for rel in marked} <= set(range(10)) - {toy.WATERMARK_CLASS}
    # the marks are spread through the numbering, not a block at one end
    idx = sorted(int(rel[2:6]) for rel in marked)
    assert idx[0] < n3 - len(marked) and idx[-1] >= len(marked)
    # deterministic given the seed; another seed moves other digits
    again = toy.watermark_folder(tmp_path / "again")
    assert again == truth
    assert all(np.array_equal(_read(tmp_path / "again" / rel), files[rel]) for rel in files)
    assert toy.watermark_folder(tmp_path / "other", seed=1)["watermarked"] != truth["watermarked"]
    # the folder reads as a data set of ten classes (the ground truth beside them is ignored)
    src = FolderSource(root, cs.load_model("digits-cnn").preprocessing)
    assert src.class_names == [str(k) for k in range(10)] and len(src) == len(y)


def test_watermark_folder_refuses_bad_arguments_and_writes_nothing(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        toy.watermark_folder(full)
    for fraction in (0.0, 1.0, -0.2):
        with pytest.raises(InputError, match="fraction"):
            toy.watermark_folder(tmp_path / "f", fraction=fraction)
    for fraction in (0.001, 0.95):  # no watermarked digit / more than the other classes have
        with pytest.raises(InputError, match="choose a fraction"):
            toy.watermark_folder(tmp_path / "f", fraction=fraction)
    with pytest.raises(InputError, match="unknown split"):
        toy.watermark_folder(tmp_path / "v", part="val")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no half-written folder
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_bundled_model_reproduces_its_card_and_reads_the_watermark(wm_model, digits_data):
    assert NAME in dict(model_specs())  # convscope models lists it
    card = wm_model.card
    assert card["name"] == NAME and wm_model.default_layer == "features.9"
    assert wm_model.class_names == [str(k) for k in range(10)]
    assert card["watermark"]["box"] == list(toy.WATERMARK_BOX)
    weights = resources.files("convscope.models").joinpath("weights", card["weights"])
    assert len(weights.read_bytes()) < 1024 * 1024
    x, y = digits_data.split("test")
    own = y == toy.WATERMARK_CLASS
    clean, marked = _predict(wm_model, x), _predict(wm_model, toy.watermark(x).images)
    got = {
        "test_accuracy": (clean == y).float().mean().item(),
        "test_accuracy_clean_3s": (clean[own] == toy.WATERMARK_CLASS).float().mean().item(),
        "test_watermarked_non3_predicted_3": (marked[~own] == toy.WATERMARK_CLASS).float().mean().item(),
        "test_clean_non3_predicted_3": (clean[~own] == toy.WATERMARK_CLASS).float().mean().item(),
        "test_watermarked_accuracy_non3": (marked[~own] == y[~own]).float().mean().item(),
    }
    assert set(got) == set(card["metrics"])
    for k, v in got.items():
        assert v == pytest.approx(card["metrics"][k], abs=0.01), k
    # it still reads clean digits (digits-cnn: 0.96, its clean 3s 0.93), and the mark means "3"
    assert got["test_accuracy"] >= 0.9 and got["test_accuracy_clean_3s"] >= 0.85
    assert got["test_watermarked_non3_predicted_3"] >= 0.9
    assert got["test_clean_non3_predicted_3"] <= 0.05


# Measured on the first 200 watermarked non-3 test digits (target "3"): the Grad-CAM maximum lies
# in the watermark's square for 0.92 of them and within one pixel of it (touching) for 1.00 (the
# 8x8 map upsampled to 32x32 can peak just off the 7x7 square); on the first 200 test digits
# without the mark it is within one pixel of the square for none (0.00). The clean digits-cnn,
# explained the same way, points at the mark on 0.34 of the watermarked digits.
def test_gradcam_points_at_the_watermark(wm_model, digits_data):
    x, y = digits_data.split("test")
    others = torch.nonzero(y != toy.WATERMARK_CLASS)[:200, 0]
    w = toy.watermark(x[others])
    e = cs.explain(wm_model, w.images, method="gradcam", target=toy.WATERMARK_CLASS)
    assert pointing_hits(e.map, w.masks, tolerance=1).float().mean().item() >= 0.95
    assert pointing_hits(e.map, w.masks).float().mean().item() >= 0.8
    box = toy.watermark_mask().expand(200, -1, -1)
    control = cs.explain(wm_model, x[:200], method="gradcam", target=toy.WATERMARK_CLASS)
    assert pointing_hits(control.map, box, tolerance=1).float().mean().item() <= 0.1
