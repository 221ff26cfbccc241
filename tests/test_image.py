import io

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.core.errors import ImageLoadError
from convscope.core.image import load_image


def test_grayscale_and_rgb(tmp_path):
    Image.new("L", (10, 7), 128).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "L" and img.size == (10, 7)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "c.jpg")
    assert load_image(str(tmp_path / "c.jpg")).mode == "RGB"


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[:2, :, 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_16bit_rescaled(tmp_path):
    a = np.full((5, 5), 65535, np.uint16)
    a[0, 0] = 0
    a[1, 1] = 32768
    Image.fromarray(a).save(tmp_path / "d.png")
    out = np.asarray(load_image(tmp_path / "d.png"))
    assert out.dtype == np.uint8
    assert out[2, 2] == 255 and out[0, 0] == 0 and 126 <= out[1, 1] <= 129


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (10, 20)


def test_arrays_and_tensors():
    assert load_image(np.zeros((3, 8, 9), np.float32)).size == (9, 8)  # CHW
    assert load_image(np.ones((8, 9), np.uint16) * 65535).getpixel((0, 0)) == 255
    assert load_image(torch.rand(1, 3, 6, 5)).size == (5, 6)
    assert load_image(np.zeros((4, 4), bool)).mode == "L"
    with pytest.raises(ImageLoadError, match="in \\[0, 1\\]"):
        load_image(np.full((4, 4), 3.0))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 2, 2)))


def test_not_an_image(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError):
        load_image(12)


def test_truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated|decoded"):
        load_image(tmp_path / "t.png")


def test_decompression_bomb(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert load_image(tmp_path / "big.png").size == (3000, 3000)
