"""The synthesis commands as a person runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "MPLBACKEND": "Agg"}


def run(*args):
    return subprocess.run([sys.executable, "-m", "convscope", *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, digits_data):
    x, y = digits_data.split("test")
    p = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray((x[0, 0].numpy() * 255).round().astype(np.uint8)).save(p)
    return p


def test_adversarial_cli_targeted(digit_png, tmp_path):
    out = tmp_path / "adv.json"
    r = run("adversarial", str(digit_png), "--model", "digits-cnn", "--target", "3",
            "--eps", "0.2", "--steps", "20", "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.read_text())
    assert meta["targeted"] and meta["success"] == [True] and meta["linf"][0] <= 0.2
    png = tmp_path / "adv.png"
    r = run("adversarial", str(digit_png), "--method", "fgsm", "--eps", "0.1", "-o", str(png))
    assert r.returncode == 0, r.stderr
    assert Image.open(png).size[0] > 200
    fool = tmp_path / "fool.json"  # from noise, unbounded by default
    r = run("adversarial", "--method", "fooling", "--target", "7", "--steps", "30", "-o", str(fool))
    assert r.returncode == 0, r.stderr
    meta = json.loads(fool.read_text())
    assert meta["eps"] is None and meta["success"] == [True] and meta["predictions"] == [7]


def test_texture_efros_leung_and_invert_cli(digit_png, tmp_path):
    out, img = tmp_path / "el.png", tmp_path / "el_only.png"
    r = run("texture", "skimage:brick", "--method", "efros-leung", "--size", "24",
            "--source-size", "32", "--window", "7", "-o", str(out), "--image-out", str(img))
    assert r.returncode == 0, r.stderr
    assert Image.open(img).size == (24, 24) and out.exists()
    out2 = tmp_path / "inv.npy"
    r = run("invert", str(digit_png), "--layer", "features.1", "--steps", "20", "-o", str(out2))
    assert r.returncode == 0, r.stderr
    assert np.load(out2).shape == (1, 1, 32, 32) and "SSIM" in r.stdout


def test_style_cli_with_digits_model(tmp_path):
    out = tmp_path / "style.json"
    r = run("style", "skimage:camera", "skimage:gravel", "--model", "digits-cnn", "--size", "24",
            "--style-size", "24", "--steps", "10", "-o", str(out))
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.read_text())
    assert meta["kind"] == "style" and len(meta["history"]["loss"]) == 10


def test_cli_errors_are_one_line_and_write_nothing(digit_png, tmp_path):
    out = tmp_path / "x.png"
    for args in (
        ("adversarial", str(digit_png), "--target", "42", "-o", str(out)),
        ("texture", "skimage:nosuchimage", "--method", "efros-leung", "-o", str(out)),
        ("invert", str(digit_png), "--layer", "features.77", "--steps", "2", "-o", str(out)),
    ):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("convscope: error:"), r.stderr
    assert list(tmp_path.iterdir()) == []
