"""The bundled ``digits-snow`` model: a small RGB CNN written the way many users write theirs.

Four 3x3 convolutions with functional ReLUs (``F.relu`` in ``forward``, no ``nn.ReLU`` modules)
and two max-pools, then global average pooling and one linear layer. Inputs are RGB pixels in
[0, 1] at 48x48, not normalised. The default CAM layer is the last convolution, ``conv4`` (12x12,
one cell = 4x4 px), whose output is taken *before* its ReLU: plain CAM, which needs the pooled
layer to feed the head directly, refuses it; Grad-CAM and the rest apply.

It was trained (``scripts/train_snow.py``) on :func:`convscope.data.toydata.snow_scenes`: digits 0-4
("wolves") nearly always with a snow band along the bottom, digits 5-9 ("huskies") nearly never,
and it learned to read the snow.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SnowCNN", "snow_card", "snow_model"]

NAME = "digits-snow"


class SnowCNN(nn.Module):
    """Small GAP-headed RGB CNN with functional ReLUs.

    Shape:
        input: (B, 3, 48, 48) pixels in [0, 1]; output: (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv4 = nn.Conv2d(48, 64, 3, padding=1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return self.fc(x.mean((2, 3)))


def snow_card() -> dict[str, Any]:
    """The model card of ``digits-snow`` (``weights/digits-snow.json``)."""
    from convscope.models.zoo import model_card

    return model_card(NAME)


def snow_model() -> SnowCNN:
    """``SnowCNN`` with the bundled weights, in eval mode: ``load_model("digits-snow").model``."""
    from convscope.models.zoo import load_model

    return load_model(NAME).model  # type: ignore[return-value]
