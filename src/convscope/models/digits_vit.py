"""The bundled digits vision transformer: a small torchvision ``VisionTransformer`` for 32x32
grayscale digits.

8x8 patches (a 4x4 grid of 16 patch tokens after one class token), 4 encoder blocks of width 64
with 4 heads. It is a :class:`torchvision.models.VisionTransformer` whose patch projection takes
one channel, so everything convscope knows about torchvision ViTs (the attention methods, the
token layout of the CAMs) applies to it unchanged.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import VisionTransformer

__all__ = ["DigitsViT"]


class DigitsViT(VisionTransformer):
    """Small ViT for 32x32 one-channel digits.

    Shape:
        input: (B, in_channels, 32, 32) normalised pixels; output: (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, patch_size: int = 8,
                 num_layers: int = 4, num_heads: int = 4, hidden_dim: int = 64, mlp_dim: int = 128) -> None:
        super().__init__(image_size=32, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                         hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes)
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
