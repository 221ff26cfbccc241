"""The CLI as a person uses it: run as a subprocess."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "MPLBACKEND": "Agg"}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convscope", *args],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, cue_test):
    p = tmp_path_factory.mktemp("img") / "digit.png"
    a = (cue_test.images[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(a).save(p)
    return p


def test_lists():
    r = run("models")
    assert r.returncode == 0 and "digits-cnn-cue" in r.stdout and "torchvision:<arch>" in r.stdout
    r = run("methods")
    assert r.returncode == 0 and "saliency" in r.stdout
    r = run("layers", "digits-cnn")
    assert r.returncode == 0
    assert "features.9" in r.stdout and "64x8x8" in r.stdout and "(default layer)" in r.stdout


def test_explain_writes_overlay(digit_png, tmp_path):
    out = tmp_path / "o.png"
    r = run("explain", str(digit_png), "--model", "digits-cnn-cue", "--method", "saliency",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size[0] >= 224
    r = run("explain", str(digit_png), str(digit_png), "-m", "digits-cnn", "-t", "3",
            "-o", str(tmp_path / "many"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "many").iterdir())) == 1  # same stem twice
    r = run("explain", str(digit_png), "-o", str(tmp_path / "m.npy"))
    assert np.load(tmp_path / "m.npy").shape == (1, 32, 32)


@pytest.mark.parametrize("args,msg", [
    (["--method", "nosuch"], "unknown method nosuch"),
    (["--method", "saliency,gradcam", "--compare", "top2"], "one --method"),
    (["--target", "3-vs-3"], "compares a class with itself"),
    (["--model", "digit-cnn"], "did you mean digits-cnn"),
    (["--target", "42"], "out of range"),
    (["--option", "steps=3"], "unknown option"),
])
def test_user_errors_are_one_line(args, msg, digit_png, tmp_path):
    out = tmp_path / "x.png"
    r = run("explain", str(digit_png), *args, "-o", str(out))
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_image_leaves_no_partial_output(digit_png, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    outdir = tmp_path / "out"
    r = run("explain", str(digit_png), str(bad), "-o", str(outdir))
    assert r.returncode == 2 and "not an image" in r.stderr and "Traceback" not in r.stderr
    assert not outdir.exists()
    r = run("explain", str(tmp_path / "missing.png"), "-o", str(tmp_path / "y.png"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_unsafe_load_flag(tmp_path, digit_png):
    import torch

    import convscope as cs

    torch.save(cs.load_model("digits-cnn").model, tmp_path / "whole.pt")
    r = run("explain", str(digit_png), "--model", str(tmp_path / "whole.pt"),
            "-o", str(tmp_path / "o.png"))
    assert r.returncode == 2 and "--unsafe-load" in r.stderr


def test_each_command_says_what_it_does_from_its_handler_docstring():
    # add_command: a command's line in `convscope --help` is the first paragraph of its handler's
    # docstring, its description the rest; every command has one.
    import argparse
    import inspect

    from convscope.frontends.cli.main import build_parser

    def commands(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in a._choices_actions}
                for name, sp in a.choices.items():
                    yield name, helps[name], sp
                    yield from commands(sp)

    seen = 0
    for name, help_line, sp in commands(build_parser()):
        func = sp.get_default("func")
        if func is None:  # a group of commands (benchmark)
            continue
        head, _, rest = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
        assert head and help_line == " ".join(head.split()), name
        assert sp.description == (" ".join(rest.split()) or None), name
        seen += 1
    assert seen >= 20
    r = run("serve", "--help")
    assert r.returncode == 0 and "Run the convscope web app." in r.stdout
