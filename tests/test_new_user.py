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
