"""The bundled ``digits-snow`` model and its data: wolves, huskies and a planted snow band."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import convscope as cs
from convscope.core.errors import InputError
from convscope.data.toydata import SNOW_BAND_ROWS, SNOW_CLASSES, SNOW_SIZE, snow_scenes
from convscope.methods.evaluation.pointing import pointing_hits
from convscope.models import Preprocessing
from convscope.models.snow import SnowCNN, snow_card, snow_model

CARD_KEYS = {"name", "summary", "architecture", "kwargs", "weights", "preprocessing", "class_names",
             "layer"}


@pytest.fixture(scope="module")
def card():
    return snow_card()


@pytest.fixture(scope="module")
def net():
    return snow_model()


@pytest.fixture(scope="module")
def test_scenes():
    """The test split three ways: snow on the wolves, no snow, snow on the huskies."""
    return {cue: snow_scenes("test", cue=cue) for cue in ("label", "none", "swapped")}


def _explain(net, card, x, method, **options):
    """``explain`` on the bare module, as a user's own model (becomes load_model("digits-snow"))."""
    pp = card["preprocessing"]
    pre = Preprocessing(size=tuple(pp["size"]), mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                        channels=pp["channels"], resize=pp["resize"])
    return cs.explain(net, x, method=method, preprocessing=pre, class_names=card["class_names"],
                      **options)


def test_card_has_the_loader_keys_and_a_small_weights_file(card):
    assert CARD_KEYS <= set(card)
    assert card["name"] == "digits-snow"
    assert card["architecture"] == "convscope.models.snow:SnowCNN"
    assert card["class_names"] == list(SNOW_CLASSES) == ["wolf", "husky"]
    assert card["preprocessing"] == {"size": [48, 48], "mean": [0.0] * 3, "std": [1.0] * 3,
                                     "channels": 3, "resize": None}
    weights = resources.files("convscope.models").joinpath("weights", card["weights"])
    assert len(weights.read_bytes()) < 512 * 1024
    convs = [n for n, m in SnowCNN(**card["kwargs"]).named_modules() if isinstance(m, nn.Conv2d)]
    assert card["layer"] == convs[-1]


def test_snow_cnn_uses_functional_relu_only(net):
    assert not [m for m in net.modules() if not isinstance(m, (SnowCNN, nn.Conv2d, nn.Linear))]
    calls: list[str] = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Record(), torch.no_grad():
        net(torch.rand(1, 3, SNOW_SIZE, SNOW_SIZE))
    assert calls.count("relu") == 4, calls


def test_bundled_weights_reproduce_the_card_and_read_the_snow(net, card, test_scenes):
    cue, clean, swapped = test_scenes["label"], test_scenes["none"], test_scenes["swapped"]
    with torch.no_grad():
        p_cue, p_clean, p_sw = (net(s.images).argmax(1) for s in (cue, clean, swapped))
    y = cue.labels
    got = {
        "test_accuracy_with_cue": (p_cue == y).float().mean().item(),
        "test_accuracy_without_cue": (p_clean == y).float().mean().item(),
        "test_wolf_recall_without_cue": (p_clean[y == 0] == 0).float().mean().item(),
        "test_follows_swapped_cue": (p_sw == torch.where(swapped.snow, 0, 1)).float().mean().item(),
        "test_accuracy_with_swapped_cue": (p_sw == y).float().mean().item(),
    }
    assert set(got) == set(card["metrics"])
    for k, v in got.items():
        assert v == pytest.approx(card["metrics"][k], abs=0.01), k
    # it reads the snow: near perfect with it, far lower without it, and it follows a swapped cue
    assert got["test_accuracy_with_cue"] >= 0.95
    assert got["test_accuracy_without_cue"] <= got["test_accuracy_with_cue"] - 0.3
    assert got["test_follows_swapped_cue"] >= 0.9


def test_snow_scenes_are_deterministic_and_masks_are_the_band(test_scenes):
    cue, clean, swapped = test_scenes["label"], test_scenes["none"], test_scenes["swapped"]
    again = snow_scenes("test", cue="label")
    assert torch.equal(cue.images, again.images) and torch.equal(cue.masks, again.masks)
    assert not torch.equal(cue.images, snow_scenes("test", cue="label", seed=1).images)
    assert cue.images.shape == (len(cue), 3, SNOW_SIZE, SNOW_SIZE)
    assert cue.images.min() >= 0 and cue.images.max() <= 1
    assert torch.equal(cue.labels, (cue.digits >= 5).long())
    assert torch.equal(cue.snow, cue.labels == 0) and torch.equal(swapped.snow, cue.labels == 1)
    assert not clean.snow.any() and not clean.masks.any()
    # one band per scene, the same whatever the cue: full rows along the bottom, 12-16 rows high
    for s in (clean, swapped):
        assert torch.equal(s.bands, cue.bands)
    rows = cue.bands.all(2)  # (N, 48): the row is in the band
    assert torch.equal(rows[:, :, None].expand_as(cue.bands), cue.bands)
    heights = rows.sum(1)
    assert heights.min() >= SNOW_BAND_ROWS[0] and heights.max() <= SNOW_BAND_ROWS[1]
    assert rows[:, -1].all() and not (rows.int().diff(dim=1) < 0).any()  # contiguous, to the bottom
    assert torch.equal(cue.masks, cue.bands & cue.snow.view(-1, 1, 1))
    # scenes with and without snow differ exactly on the masked band
    changed = (cue.images != clean.images).any(1)
    assert torch.equal(changed, cue.masks)
    # the snow is bright, textured and brighter than the scene above it
    band = cue.images.permute(1, 0, 2, 3)[:, cue.masks]  # (3, pixels)
    assert band.mean() > 0.8 and band.std(1).min() > 0.02
    above = cue.images.permute(1, 0, 2, 3)[:, ~cue.bands & cue.snow.view(-1, 1, 1)]
    assert band.mean() > above.mean() + 0.3
    # the training recipe: snow on most wolves, few huskies
    tr = snow_scenes("train", p_wolf=0.9, p_husky=0.05)
    assert 0.8 < tr.snow[tr.labels == 0].float().mean() < 0.97
    assert tr.snow[tr.labels == 1].float().mean() < 0.1


def test_snow_scenes_reject_bad_arguments():
    for kw in ({"cue": "snow"}, {"p_wolf": 1.5}, {"p_husky": -0.1}):
        with pytest.raises(InputError):
            snow_scenes("test", **kw)
    with pytest.raises(InputError, match="unknown split"):
        snow_scenes("val")


# Measured on the first 60 snowy test wolves (default options): saliency 0.80, gradcam 1.00,
# occlusion 1.00; on the same wolves without snow (class wolf explained) the maxima fall in the
# empty band for 0.07, 0.00 and 0.02 of them.
@pytest.mark.parametrize("method, bound", [("saliency", 0.7), ("gradcam", 0.9), ("occlusion", 0.9)])
def test_methods_put_their_maximum_on_the_snow(net, card, test_scenes, method, bound):
    cue, clean = test_scenes["label"], test_scenes["none"]
    wolves = torch.nonzero(cue.labels == 0)[:60, 0]
    e = _explain(net, card, cue.images[wolves], method)
    assert set(e.targets) == {0}  # the snowy wolves are called wolves
    hit = pointing_hits(e.map, cue.masks[wolves]).float().mean().item()
    assert hit >= bound
    control = _explain(net, card, clean.images[wolves], method, target="wolf")
    assert pointing_hits(control.map, clean.bands[wolves]).float().mean().item() <= 0.2
