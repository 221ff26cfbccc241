"""#27 item 6: values that were accepted or clamped without a word are one-line errors: exit
status 2 in the CLI (nothing written), 400 with a JSON reason in the web app."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convscope.frontends.cli.main import main


@pytest.fixture(scope="module")
def png(tmp_path_factory, cue_test):
    p = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype(np.uint8)).save(p)
    return p


def _refused(args, words, capsys, out=None):
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope: error:") and words in err[0], err
    if out is not None:
        assert not out.exists()


def test_arch_with_a_model_that_brings_its_own(capsys):
    _refused(["layers", "digits-cnn", "--arch", "torchvision:resnet18"], "drop --arch", capsys)


@pytest.mark.parametrize("box, words", [("nan,0,4,4", "nan or infinite"), ("8,8,4,4", "inverted"),
                                        ("0,0,inf,4", "nan or infinite")])
def test_bad_boxes(box, words, png, tmp_path, capsys):
    out = tmp_path / "t.csv"
    _refused(["evaluate", png, "-m", "digits-cnn-cue", "--metrics", "pointing", "--boxes", box, "-o", out],
             words, capsys, out)


def test_report_with_an_unknown_target(png, tmp_path, capsys):
    out = tmp_path / "r.html"
    _refused(["report", png, "-m", "digits-cnn-cue", "--methods", "saliency", "--target", "bogus", "-o", out],
             "unknown class name 'bogus'", capsys, out)


def test_lime_text_class_names_of_the_wrong_length(tmp_path, capsys):
    out = tmp_path / "t.json"
    _refused(["lime-text", "--class-names", "a", "b", "c", "-o", out], "3 class names for 2 classes",
             capsys, out)


def test_one_rule_for_top_k(png, tmp_path, capsys):
    out = tmp_path / "o.png"
    _refused(["explain", png, "-m", "digits-cnn-cue", "--target", "top11", "-o", out],
             "top-11 is out of range for a model with 10 classes", capsys, out)
    _refused(["explain", png, "-m", "digits-cnn-cue", "--compare", "top100", "-o", out],
             "top-100 is out of range for a model with 10 classes", capsys, out)
    html = tmp_path / "r.html"
    _refused(["report", png, "-m", "digits-cnn-cue", "--methods", "saliency", "--topk", "1000", "-o", html],
             "top-1000 is out of range for a model with 10 classes", capsys, html)


@pytest.mark.parametrize("host", ["exa mple.com", "x/y", "-bad.com", "a..b"])
def test_malformed_allow_host(host):
    import os
    import subprocess
    import sys

    # a subprocess with a time limit: an accepted host would start the server (it used to)
    r = subprocess.run([sys.executable, "-m", "convscope", "serve", "--port", "18734",
                        f"--allow-host={host}"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "is not a host name" in err[0], r.stderr


def test_list_flags_take_spaces_or_commas(png, tmp_path, capsys):
    import json

    for i, spelling in enumerate((["saliency", "gradient_x_input"], ["saliency,gradient_x_input"],
                                  ["saliency,", "gradient_x_input"])):
        out = tmp_path / f"e{i}.json"
        assert main(["evaluate", str(png), "-m", "digits-cnn-cue", "--methods", *spelling,
                     "--metrics", "gini", "faithfulness", "-o", str(out)]) == 0, capsys.readouterr().err
        text = out.read_text()
        assert "gradient_x_input" in text and "saliency" in text and "faithfulness" in text
        json.loads(text)


def test_a_list_flag_does_not_swallow_the_images_after_it(png, tmp_path, capsys):
    """``--methods saliency a.png``: the image is not taken for a method name; one line says where
    to put it (review of #27: argparse's own error only said the images were missing)."""
    out = tmp_path / "s.csv"
    assert main(["evaluate", "-m", "digits-cnn-cue", "--methods", "saliency", str(png), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a name" in err[0] and "before --methods" in err[0], err
    assert not out.exists()


# --- the web app ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from convscope.frontends.serve import Engine, create_app

    return TestClient(create_app(Engine(("digits-cnn-cue",))), base_url="http://127.0.0.1")


@pytest.mark.parametrize("path, form, words", [
    ("/api/explain", {"method": "saliency", "topk": "1000"}, "top-1000 is out of range"),
    ("/api/grid", {"method": "gradcam", "kind": "classes", "topk": "11"}, "top-11 is out of range"),
    ("/api/explain", {"method": "saliency", "layer": "features.9"}, "does not use a layer"),
    ("/api/activations", {"layer": "features.9", "n": "100000"}, "n must be"),
    ("/api/explain", {"method": "saliency", "sample": "x"}, "sample must be a number"),  # was 415
])
def test_web_refuses_instead_of_clamping(client, path, form, words):
    r = client.post(path, data={"model": "digits-cnn-cue", "sample": "3", **form})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_web_defaults_still_fit_a_model_with_few_classes(client):
    r = client.post("/api/explain", data={"model": "digits-cnn-cue", "method": "saliency", "sample": "3"})
    assert r.status_code == 200 and len(r.json()["probabilities"]) == 5
