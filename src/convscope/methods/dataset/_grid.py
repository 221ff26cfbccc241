"""Small PIL helpers for the dataset views' grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
PAD_GRAY = 0.5


def to_pil(a: np.ndarray, side: int) -> Image.Image:
    """(H, W, 3) float in [0, 1] -> PIL image scaled (nearest) so its longer side is ``side``."""
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    s = side / max(img.width, img.height)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img.resize(size, Image.Resampling.NEAREST if s >= 1 else Image.Resampling.BILINEAR)


def font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


TITLE_MIN = 360  # a narrower grid still gets a title line this wide


def wrap_text(text: str, width: int, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide in ``fnt`` (a longer word: own line)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and probe.textlength(f"{lines[-1]} {word}", font=fnt) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def grid(
    rows: Sequence[Sequence[np.ndarray]],
    *,
    cell: int = 64,
    row_labels: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    label_width: int = 56,
    highlight_first: bool = False,
) -> Image.Image:
    """Lay out rows of images (H, W, 3) in cells of ``cell`` pixels with labels and captions."""
    ncol = max((len(r) for r in rows), default=1)
    gap = 4
    cap_h = 14 if captions is not None else 0
    top = 20 if title else 0
    lw = label_width if row_labels is not None else 0
    width = lw + ncol * (cell + gap) + gap
    lines: list[str] = []
    if title:  # wrapped to the grid's width (at least TITLE_MIN px), never cut
        lines = wrap_text(title, max(width, TITLE_MIN) - 2 * gap, font(13))
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        width = max(width, *(int(probe.textlength(t, font=font(13))) + 2 * gap for t in lines))
        top = 4 + 16 * len(lines)
    height = top + len(rows) * (cell + cap_h + gap) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    f = font(11)
    for i, line in enumerate(lines):
        draw.text((gap, 4 + 16 * i), line, fill=(0, 0, 0), font=font(13))
    for r, row in enumerate(rows):
        y = top + gap + r * (cell + cap_h + gap)
        if row_labels is not None:
            draw.text((4, y + cell // 2 - 6), row_labels[r], fill=(0, 0, 0), font=f)
        for c, a in enumerate(row):
            x = lw + gap + c * (cell + gap)
            tile = to_pil(a, cell)
            canvas.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            if highlight_first and c == 0:
                draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=(220, 40, 40), width=2)
            if captions is not None and c < len(captions[r]):
                draw.text((x, y + cell + 1), captions[r][c], fill=(40, 40, 40), font=f)
    return canvas


def draw_box(
    a: np.ndarray, box: tuple[int, int, int, int], color: tuple[float, float, float] = (1.0, 0.2, 0.1)
) -> np.ndarray:
    """A copy of ``a`` (H, W, 3) with the outline of ``box`` = (top, left, bottom, right), drawn inside it."""
    out = a.copy()
    t, le, b, r = box
    lw = max(1, round(max(a.shape[:2]) / 64))  # stays visible when the image is shown small
    lw = min(lw, max(1, (b - t) // 2), max(1, (r - le) // 2))
    out[t : t + lw, le:r] = color
    out[b - lw : b, le:r] = color
    out[t:b, le : le + lw] = color
    out[t:b, r - lw : r] = color
    return out
