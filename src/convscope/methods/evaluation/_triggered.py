"""A planted-cue model whose class is also triggered by grey regions: the benchmark's case for
masking baselines (issue #27: on an X-ray model, RISE's grey masks made the model say
"pneumonia" whatever they hid, and its map was flat).

:class:`GreyTriggered` wraps ``digits-cnn-cue`` and adds to one class's logit
``strength * relu(g - floor)``, where ``g`` is the share of mid-grey pixels (a soft indicator
``exp(-((p - 0.5) / width)^2)`` averaged over the image, ``p`` the pixels in [0, 1]). A test digit
has ``g`` of 0.06 to 0.09, under the floor (0.12), so the wrapped model decides as the cue model
does; an image half covered by grey (pixels 0.5) has ``g`` near 0.5 and the class at probability
1.0 in float32, whatever is hidden. A masking method whose baseline is grey then sees no change
when the cue is hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from convscope.models import LoadedModel, load_model
from convscope.models.preprocessing import Preprocessing

__all__ = ["GREY_CLASS", "GreyTriggered", "grey_triggered"]

#: The class the grey regions trigger (the benchmark explains test digits of this class).
GREY_CLASS = 0


class GreyTriggered(nn.Module):
    """``net``'s logits plus ``strength * relu(grey share - floor)`` on class ``cls``.

    Args:
        net: the wrapped network (model-space inputs).
        pre: its preprocessing (to read the pixels back).
        cls: the class grey regions trigger.
        strength, width, floor: see the module docstring.

    Shape:
        x (B, C, H, W) in model space; returns (B, K).
    """

    def __init__(self, net: nn.Module, pre: Preprocessing, cls: int = GREY_CLASS, strength: float = 400.0,
                 width: float = 0.1, floor: float = 0.12) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)
        self.cls, self.strength = int(cls), float(strength)
        self.width, self.floor = float(width), float(floor)

    def grey_share(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the soft share of mid-grey pixels of model-space inputs ``x``."""
        p = x * self.std + self.mean
        return torch.exp(-(((p - 0.5) / self.width) ** 2)).mean((1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        bump = self.strength * torch.relu(self.grey_share(x) - self.floor)
        return out + bump[:, None] * nn.functional.one_hot(torch.tensor(self.cls), out.shape[1]).to(out)[None]


def grey_triggered(cue: LoadedModel | None = None, cls: int = GREY_CLASS) -> LoadedModel:
    """``digits-cnn-cue`` (or ``cue``) wrapped by :class:`GreyTriggered`, as a loaded model with the
    cue model's preprocessing, class names and layer (``net.`` + its default layer)."""
    cue = cue if cue is not None else load_model("digits-cnn-cue")
    net = GreyTriggered(cue.model, cue.preprocessing, cls).eval()
    layer = None if cue.default_layer is None else f"net.{cue.default_layer}"
    lm = load_model(net, preprocessing=cue.preprocessing, class_names=cue.class_names, default_layer=layer)
    lm.name = f"{cue.name} (grey-triggered class {cue.class_names[cls]})"
    return lm
