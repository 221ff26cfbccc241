"""The atlas picture is as wide as its grid: a long title wraps instead of widening it (review of #31)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import convscope as cs
from convscope.methods.dataset._grid import font, grid, wrap_text


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def _used_columns(img: Image.Image, top: int) -> float:
    """Share of the picture's columns that hold anything but background below ``top``."""
    a = np.asarray(img.convert("L"))[top:]
    return float((a < 250).any(0).mean())


def test_wrap_text_keeps_every_word_within_the_width() -> None:
    text = "digits-cnn-cue features.9: left top 3 by relevance (epsilon_plus_flat, target pred), right top 3"
    lines = wrap_text(text, 200, font(13))
    assert len(lines) > 1 and " ".join(lines).split() == text.split()
    from PIL import ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert all(probe.textlength(t, font=font(13)) <= 200 for t in lines)


def test_atlas_png_is_as_wide_as_its_grid(tmp_path) -> None:
    torch.manual_seed(0)
    net = cs.load_model(Net().eval(), preprocessing="none")
    x = torch.rand(10, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atlas = cs.concept_atlas(net, x, "c2", n=3, out=tmp_path / "a.zarr")
        img = Image.open(io.BytesIO(atlas.png()))
    img.save(tmp_path / "atlas.png")
    plain = grid([[np.zeros((4, 4, 3))] * 7], cell=48, row_labels=["ch 0"])  # the same grid, no title
    assert img.width == plain.width, (img.width, plain.width)
    assert _used_columns(img, top=60) > 0.6  # the patches fill the width (was about 0.4: a one-line title)
    title = np.asarray(img.convert("L"))[:60]
    ink_rows = np.flatnonzero((title < 128).any(1))
    assert ink_rows.size and ink_rows.max() - ink_rows.min() > 20  # the title runs over several lines
