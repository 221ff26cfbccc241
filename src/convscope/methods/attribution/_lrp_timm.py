"""A zennit canonizer for timm ResNets (``timm.models.resnet.BasicBlock`` and ``Bottleneck``).

zennit's ``ResNetCanonizer`` knows torchvision's residual blocks only. A timm block adds its shortcut
in place (``x += shortcut``), which has no module a rule could attach to, so LRP would pass the
addition as a gradient (refused by convscope's forward watch). This canonizer does for timm's blocks
what zennit's does for torchvision's: for the time of the call it gives each block a ``Sum`` module
(zennit's) and a forward that feeds the two branches through it, and merges every batch norm into
the convolution before it (zennit's ``SequentialMergeBatchNorm``).

The replacement forwards follow timm 1.0's block forwards step by step (the layers the block owns, in
the same order) with the addition made a module; ``tests/test_lrp.py`` checks that a canonized
block computes what the original computes. zennit is imported only when the canonizer is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["is_timm_resnet_block", "timm_resnet_canonizer"]

_BLOCKS = ("BasicBlock", "Bottleneck")


def is_timm_resnet_block(module: nn.Module) -> bool:
    """Whether ``module`` is one of timm's ResNet blocks (checked without importing timm)."""
    return type(module).__module__ == "timm.models.resnet" and type(module).__name__ in _BLOCKS


def _tail(block: Any, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """The end both block types share: gate, drop path, shortcut, and the addition as a module."""
    if block.se is not None:
        x = block.se(x)
    if block.drop_path is not None:
        x = block.drop_path(x)
    if block.downsample is not None:
        shortcut = block.downsample(shortcut)
    return block.canonizer_sum(torch.stack([shortcut, x], dim=-1))


def _basic_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    shortcut = x
    x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    x = self.bn2(self.conv2(x))
    return self.act2(_tail(self, x, shortcut))


def _bottleneck_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    shortcut = x
    x = self.act1(self.bn1(self.conv1(x)))
    x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
    x = self.bn3(self.conv3(x))
    return self.act3(_tail(self, x, shortcut))


def timm_resnet_canonizer() -> Any:
    """A zennit ``CompositeCanonizer``: batch-norm merging plus a ``Sum`` module in every timm block."""
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum

    def attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
        if not is_timm_resnet_block(module):
            return None
        forward = _basic_forward if type(module).__name__ == "BasicBlock" else _bottleneck_forward
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    class TimmResNetCanonizer(CompositeCanonizer):  # a named class: its name is what results record
        def __init__(self) -> None:
            super().__init__((SequentialMergeBatchNorm(), AttributeCanonizer(attributes)))

    return TimmResNetCanonizer()
