"""#27 item 9: a new user's private model, stated or assumed, said once and only where it applies."""

import torch
from torch import nn

import convscope as cs


class Net(nn.Module):
    """A plain module: [0, 1] pixels, functional ReLUs."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


def _layer_notes(e):
    return [a for a in e.model_info["assumed"] if a.startswith("layer:")]


def test_assumed_lists_a_layer_only_for_methods_that_use_the_default_one():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12, 12)
    net = Net().eval()
    for method in ("saliency", "occlusion"):
        e = cs.explain(net, x, method=method, preprocessing="none", class_names=list("abc"),
                       **({"window": 4} if method == "occlusion" else {}))
        assert _layer_notes(e) == [], method
    e = cs.explain(net, x, method="gradcam", preprocessing="none", class_names=list("abc"))
    assert _layer_notes(e) == ["layer: conv2 (the last layer with a spatial map; pass layer= to explain() "
                               "or default_layer= to load_model())"]
    e = cs.explain(net, x, method="gradcam", layer="conv1", preprocessing="none", class_names=list("abc"))
    assert _layer_notes(e) == []


def _gray_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def test_one_value_mean_and_std_mean_one_channel():
    lm = cs.load_model(_gray_net(), preprocessing={"size": 28, "mean": [0.13], "std": [0.3]})
    assert lm.preprocessing.channels == 1 and lm.preprocessing.mean == (0.13,)
    from convscope.models.preprocessing import preprocessing_from

    assert preprocessing_from(None, mean=(0.5,), std=(0.25,)).channels == 1  # the CLI's --mean 0.5 --std 0.25
    assert preprocessing_from({"mean": 0.5, "channels": 3}).channels == 3  # stated: kept
    assert preprocessing_from("imagenet", mean=(0.5,)).channels == 3  # the preset's other values have 3


def test_assumed_preprocessing_takes_the_first_convolutions_channels_and_probes_at_load():
    import warnings

    import numpy as np

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = cs.load_model(_gray_net())
    assert lm.preprocessing.channels == 1
    notes = [str(w.message) for w in caught]
    assert len(notes) == 1 and "1 channel(s) as its first convolution takes" in notes[0]
    e = cs.explain(lm, np.random.default_rng(0).random((20, 20)), method="saliency")  # an image, not a tensor
    assert e.map.shape == (1, 224, 224)

    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))  # fails on the assumed 224 px input
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = cs.load_model(flat)
    said = [str(w.message) for w in caught if "fails on" in str(w.message)]
    assert len(said) == 1 and "images will be refused" in said[0]
    e = cs.explain(lm, torch.rand(1, 3, 8, 8), method="saliency")  # a tensor in its shape still works
    assert e.map.shape == (1, 8, 8)
