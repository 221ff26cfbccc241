"""A user's own model, end to end: stated preprocessing, model cards, one meaning for a tensor.

The model here is defined in this file, as a user would: a plain ``nn.Module`` on 48x48 RGB
pixels in [0, 1], no normalisation, functional ReLUs, two classes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convscope as cs
from convscope.core.errors import AssumptionWarning, InputError, ModelLoadError
from convscope.models.inputs import as_inputs, baseline
from convscope.models.preprocessing import preprocessing_from

NET_SRC = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class WolfNet(nn.Module):
        """48x48 RGB pixels in [0, 1], no normalisation, functional ReLUs."""

        def __init__(self, width=8, num_classes=2):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.relu(self.conv2(x))
            return self.head(x.mean((2, 3)))
''')


def _wolfnet_class(tmp_path: Path):
    (tmp_path / "wolfnet.py").write_text(NET_SRC)
    ns: dict = {}
    exec(compile(NET_SRC, str(tmp_path / "wolfnet.py"), "exec"), ns)
    return ns["WolfNet"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """(net, card path, image path, pixels (1, 3, 48, 48)) of a user's trained-looking model, in the
    user's project folder (the current folder: a card's Python file runs there without --trust-card)."""
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    WolfNet = _wolfnet_class(tmp_path)
    torch.manual_seed(3)
    net = WolfNet().eval()
    save_file(net.state_dict(), str(tmp_path / "wolfnet.safetensors"))
    card = {
        "architecture": "wolfnet.py:WolfNet",
        "kwargs": {"width": 8, "num_classes": 2},
        "weights": "wolfnet.safetensors",
        "preprocessing": "none",
        "input_size": [48, 48],
        "class_names": ["wolf", "husky"],
        "layer": "conv2",
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    rng = np.random.default_rng(0)
    arr = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    arr[36:] = 250  # the snow band
    Image.fromarray(arr).save(tmp_path / "wolf.png")
    pix = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 255
    return net, tmp_path / "card.json", tmp_path / "wolf.png", pix


# --- 1. no silent preprocessing ------------------------------------------------------------------
def test_plain_module_without_preprocessing_warns_naming_what_was_assumed(user):
    net = user[0]
    with pytest.warns(AssumptionWarning) as rec:
        lm = cs.load_model(net)
    msg = str(rec[0].message)
    for part in ("224", "256", "0.485", "0.229", "preprocessing='none'"):
        assert part in msg
    assert lm.assumed and lm.info()["assumed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stated: no warning at all
        lm = cs.load_model(net, preprocessing={"preset": "none", "size": 48})
    assert lm.assumed == [] and lm.preprocessing.size == (48, 48) and lm.preprocessing.resize is None


def test_stated_preprocessing_gives_the_models_own_probabilities(user):
    net, _card, png, pix = user
    with torch.no_grad():
        want = torch.softmax(net(pix), 1)
    e = cs.explain(net, str(png), method="saliency", preprocessing=preprocessing_from("none", size=48),
                   class_names=["wolf", "husky"])
    torch.testing.assert_close(e.probabilities, want, atol=1e-5, rtol=0)
    info = e.model_info
    assert info["preprocessing"]["mean"] == [0.0, 0.0, 0.0] and info["preprocessing"]["size"] == [48, 48]
    assert not [a for a in info["assumed"] if a.startswith(("preprocessing", "class names"))]
    assert "wolf" in info["class_names"]
    meta = json.loads(Path(e.save(png.parent / "m.json")).read_text())
    assert meta["model_info"]["preprocessing"]["std"] == [1.0, 1.0, 1.0]


def test_presets_and_bad_preprocessing():
    assert preprocessing_from("imagenet").resize == 256
    assert preprocessing_from("pixels", size="48x64").size == (48, 64)
    for bad, what in [("imagnet", "did you mean imagenet"), ({"size": 0}, "size"),
                      ({"std": [0, 1, 1]}, "std must be positive"), ({"mean": [float("nan")] * 3}, "finite"),
                      ({"weird": 1}, "unknown preprocessing key"), ({"resize": 10, "size": 48}, "resize")]:
        with pytest.raises(InputError, match=what):
            preprocessing_from(bad)


# --- 2. your architecture without pickles: model cards ---------------------------------------------
def test_model_card_json_and_yaml_load_the_users_class_and_weights(user, tmp_path):
    net, card, png, pix = user
    lm = cs.load_model(str(card))
    assert lm.class_names == ["wolf", "husky"] and lm.default_layer == "conv2" and lm.assumed == []
    for a, b in zip(lm.model.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    import yaml

    y = tmp_path / "card.yaml"
    y.write_text(yaml.safe_dump(json.loads(card.read_text())))
    e = cs.explain(str(y), str(png), method="gradcam")
    with torch.no_grad():
        torch.testing.assert_close(e.probabilities, torch.softmax(net(pix), 1), atol=1e-5, rtol=0)
    assert e.layer == "conv2" and e.map.shape == (1, 48, 48)


@pytest.mark.parametrize("change, message", [
    ({"architecture": None}, "missing key 'architecture'"),
    ({"architecture": "wolfnet.py:WolfNett"}, "did you mean WolfNet"),
    ({"architecture": "nothere.py:WolfNet"}, "architecture file not found"),
    ({"architecture": "no_such_package_xyz.mod:Net"}, "cannot import module"),
    ({"weights": "missing.safetensors"}, "weights file not found"),
    ({"kwargs": {"width": 4, "num_classes": 2}}, "do not fit this architecture"),
    ({"kwargs": {"depth": 3}}, "check the card's kwargs"),
    ({"class_names": ["wolf"]}, "1 class names for a model with 2 outputs"),
    ({"layer": "conv9"}, "layer"),
    ({"weigths": "x"}, "did you mean 'weights'"),
    ({"preprocessing": None, "input_size": None}, "missing key 'preprocessing'"),
    ({"preprocessing": "imagnet"}, "did you mean imagenet"),
    ({"labels": "labels.txt"}, "class_names or labels, not both"),
])
def test_bad_cards_get_one_line_errors_naming_the_key(user, change, message):
    card = json.loads(user[1].read_text())
    for k, v in change.items():
        if v is None:
            card.pop(k, None)
        else:
            card[k] = v
    bad = user[1].parent / "bad.json"
    bad.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=message) as info:
        cs.load_model(str(bad))
    assert "\n" not in str(info.value)


def test_card_with_a_labels_file_and_not_json(user):
    card = json.loads(user[1].read_text())
    card.pop("class_names")
    card["labels"] = "labels.txt"
    (user[1].parent / "labels.txt").write_text("wolf\nhusky\n")
    p = user[1].parent / "c2.json"
    p.write_text(json.dumps(card))
    assert cs.load_model(str(p)).class_names == ["wolf", "husky"]
    p.write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        cs.load_model(str(p))


def test_weights_none_is_seeded_and_recorded():
    a = cs.load_model("digits-cnn", weights=None)
    b = cs.load_model("digits-cnn", weights=None)
    c = cs.load_model("digits-cnn", weights=None, seed=1)
    pa, pb, pc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.info()["weights"] == "random init (seed 0)"


def test_loading_never_changes_the_users_module_modes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    net.train()
    net[1].eval()  # mixed modes
    before = [m.training for m in net.modules()]
    stats = net[1].running_mean.clone()
    lm = cs.load_model(net, preprocessing={"size": 16})
    lm.fill_from_input(torch.rand(1, 3, 16, 16))
    cs.load_model(net, preprocessing={"size": 16}, class_names=["a", "b"])
    assert [m.training for m in net.modules()] == before
    assert torch.equal(net[1].running_mean, stats)


# --- 3. one meaning for a tensor -----------------------------------------------------------------
def test_every_facade_reads_one_tensor_the_same_way(user):
    net, card, _png, pix = user
    lm = cs.load_model(str(card))
    x = pix.clone()  # for this model, model inputs are pixels; use a normalised model too below
    with torch.no_grad():
        want = torch.softmax(net(x), 1)
    e = cs.explain(lm, x, method="saliency")
    torch.testing.assert_close(e.probabilities, want, atol=1e-5, rtol=0)
    from convscope.methods.synthesis import pgd

    r = pgd(lm, x, eps=0.01, steps=1, progress=False)
    torch.testing.assert_close(torch.as_tensor(r.probs_original), want, atol=1e-5, rtol=0)
    # a normalised model: the same model-space tensor gives the model's probabilities everywhere
    d = cs.load_model("digits-cnn")
    xd = d.preprocessing.normalize(cs.datasets.digits().split("test")[0][:3])
    with torch.no_grad():
        want_d = torch.softmax(d.model(xd), 1)
    torch.testing.assert_close(cs.explain(d, xd).probabilities, want_d, atol=1e-5, rtol=0)
    r = pgd(d, xd, eps=0.01, steps=1, progress=False)
    torch.testing.assert_close(torch.as_tensor(r.probs_original), want_d, atol=1e-5, rtol=0)
    pix_d = d.preprocessing.denormalize(xd)
    r2 = pgd(d, pix_d, eps=0.01, steps=1, progress=False, space="pixels")
    torch.testing.assert_close(torch.as_tensor(r2.probs_original), want_d, atol=1e-5, rtol=0)
    from convscope.methods.dataset import TensorSource, top_activations

    src = TensorSource(xd, d.preprocessing)
    assert torch.equal(src[1][0], xd[1])  # the model's own input, untouched
    src_p = TensorSource(pix_d, d.preprocessing, space="pixels")
    torch.testing.assert_close(src_p[1][0], xd[1], atol=1e-5, rtol=0)
    res = top_activations(d, src, "features.4", k=1, batch_size=2)
    res_p = top_activations(d, src_p, "features.4", k=1, batch_size=2)
    assert torch.equal(torch.as_tensor(res.indices), torch.as_tensor(res_p.indices))


def test_inputs_are_checked_once_nan_inf_range_channels():
    pre = preprocessing_from("none", size=8)
    bad = torch.rand(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    for t, what in [(bad, "NaN or infinite"), (torch.rand(1, 1, 8, 8), "expects 3 channel"),
                    (torch.randint(0, 255, (1, 3, 8, 8)), "must be float")]:
        with pytest.raises(InputError, match=what):
            as_inputs(t, pre)
    with pytest.raises(InputError, match=r"pixels must lie in \[0, 1\]"):
        as_inputs(torch.rand(1, 3, 8, 8) * 2, pre, space="pixels")
    with pytest.raises(InputError, match="space must be"):
        as_inputs(torch.rand(1, 3, 8, 8), pre, space="pixel")
    d = cs.load_model("digits-cnn")
    x = torch.full((1, 1, 32, 32), float("inf"))
    for method in ("saliency", "gradcam", "occlusion"):
        with pytest.raises(InputError, match="NaN or infinite"):
            cs.explain(d, x, method=method)


# --- 4. baselines in pixel space -----------------------------------------------------------------
def test_named_baselines_mean_the_same_pixels_for_any_normalisation():
    x = torch.rand(2, 3, 6, 6)
    for pre in (preprocessing_from("imagenet"), preprocessing_from("none"), preprocessing_from("clip")):
        xm = pre.normalize(x)
        for kind, value in (("black", 0.0), ("zero", 0.0), ("white", 1.0), ("grey", 0.5), (0.25, 0.25)):
            got = pre.denormalize(baseline(xm, kind, pre))
            torch.testing.assert_close(got, torch.full_like(x, value), atol=1e-6, rtol=0)
        torch.testing.assert_close(pre.denormalize(baseline(xm, "mean", pre)),
                                   x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-5, rtol=0)
    for bad in (float("nan"), -0.1, 2.0, "nope"):
        with pytest.raises(InputError):
            baseline(x, bad)


def test_occlusion_black_baseline_is_black_pixels_on_a_normalised_model():
    d = cs.load_model("digits-cnn")
    x = d.preprocessing.normalize(cs.datasets.digits().split("test")[0][:1])
    # a window the size of the image, stride it: the map is the score drop of an all-black image
    e = cs.explain(d, x, method="occlusion", window=32, stride=32, baseline="black", target=0)
    black = d.preprocessing.normalize(torch.zeros_like(x))
    with torch.no_grad():
        want = d.model(x)[0, 0] - d.model(black)[0, 0]
    assert abs(float(e.map[0, 0, 0]) - float(want)) < 1e-4


# --- the CLI and the web app on a card, as subprocesses --------------------------------------------
def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(cs.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=240)


def test_cli_on_a_card_and_on_flags(user, tmp_path):
    net, card, png, pix = user
    r = _cli("explain", str(png), "--model", str(card), "--method", "gradcam", "-o", str(tmp_path / "a.npy"),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "labels.txt").write_text("wolf\nhusky\n")
    r2 = _cli("explain", str(png), "--model", "wolfnet.safetensors", "--arch", "wolfnet.py:WolfNet",
              "--preprocessing", "none", "--input-size", "48", "--classes", "labels.txt",
              "--method", "saliency", "-o", str(tmp_path / "b.json"), cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    meta = json.loads((tmp_path / "b.json").read_text())
    with torch.no_grad():
        want = torch.softmax(net(pix), 1)[0].tolist()
    assert meta["class_names"] == ["wolf", "husky"]
    np.testing.assert_allclose(meta["probabilities"][0], want, atol=1e-5)
    assert meta["model_info"]["preprocessing"]["mean"] == [0.0, 0.0, 0.0]
    # bad input: one line, exit 2, no file
    for args in (["--model", "nope.json"], ["--model", str(card), "--preprocessing", "imagnet"],
                 ["--model", "wolfnet.safetensors", "--arch", "wolfnet.py:Nope"],
                 ["--model", str(card), "--classes", "missing.txt"], ["--model", str(tmp_path)]):
        out = tmp_path / "bad.png"
        r = _cli("explain", str(png), *args, "-o", str(out), cwd=tmp_path)
        # one error line; besides it only the one-line note that a Python file ran (#27)
        lines = [ln for ln in r.stderr.strip().splitlines()
                 if not (ln.startswith("convscope: warning: running ") and "wolfnet.py" in ln)]
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith("convscope: error:") and not out.exists()


def test_cli_weights_none_is_reproducible(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}.npy"
        r = _cli("explain", "--model", "torchvision:resnet18", "--weights", "none", "--method", "saliency",
                 _digit_png(tmp_path), "-o", str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def _digit_png(tmp_path: Path) -> str:
    p = tmp_path / "digit.png"
    img = (cs.datasets.digits().split("test")[0][0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(img).save(p)
    return str(p)


def test_serve_on_a_card(user, tmp_path):
    card = user[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "serve", "--no-bundled",
                             "--model", str(card), "--port", str(port)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert info is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        text = json.dumps(info)
        assert "wolf" in text and "husky" in text and "conv2" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- found by a new user trying the feature --------------------------------------------------------
def test_review_findings_are_one_line_errors_or_recorded(user, tmp_path):
    net, card, png, pix = user
    # a 1-channel plain module with nothing stated: what was really done is recorded
    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumptionWarning)
        e = cs.explain(gray, torch.rand(1, 28, 28), method="saliency")
    assert e.model_info["preprocessing"]["channels"] == 1 and e.model_info["preprocessing"]["mean"] == [0.0]
    assert "1 channel(s) as its first convolution takes" in e.model_info["assumed"][0]  # #27 item 9
    # stated preprocessing: class-name count and channel count are checked
    with pytest.raises(ModelLoadError, match="3 class names for a model with 2 outputs"):
        cs.load_model(net, preprocessing={"preset": "none", "size": 48}, class_names=["a", "b", "c"])
    lm = cs.load_model(net, preprocessing={"preset": "none", "size": 48})
    with pytest.raises(InputError, match="expects 3 channel"):
        cs.explain(lm, torch.rand(1, 48, 48))
    with pytest.raises(ModelLoadError, match="fails on a 1x1x48x48 input"):
        cs.load_model(net, preprocessing={"preset": "none", "size": 48, "channels": 1})
    g1 = cs.load_model(gray, preprocessing={"preset": "none", "size": 28, "channels": 1})
    assert g1.preprocessing.mean == (0.0,)
    for bad in ("48x64x2", "48x"):
        with pytest.raises(InputError, match="N or HxW"):
            preprocessing_from("none", size=bad)
    with pytest.raises(InputError, match="resize"):
        preprocessing_from("none", size=48, resize=0)
    with pytest.raises(ModelLoadError, match="add the class"):
        cs.load_model(str(tmp_path / "wolfnet.safetensors"), arch=str(tmp_path / "wolfnet.py"))
    with pytest.raises(ModelLoadError, match="random weights"):
        cs.load_model(str(tmp_path / "wolfnet.safetensors"), arch="x.py:WolfNet", weights=None)
    (tmp_path / "lab.json").write_text('{"0": "wolf", "5": "husky"}')
    c = json.loads(card.read_text())
    c.pop("class_names")
    c["labels"] = "lab.json"
    (tmp_path / "c3.json").write_text(json.dumps(c))
    with pytest.raises(ModelLoadError, match="indices must be 0..1"):
        cs.load_model(str(tmp_path / "c3.json"))


def test_cli_preprocessing_flags_refuse_mismatched_values(user, tmp_path):
    _net, _card, png, _pix = user
    base = ["explain", str(png), "--model", "wolfnet.safetensors", "--arch", "wolfnet.py:WolfNet",
            "--preprocessing", "none", "--method", "saliency", "-o", str(tmp_path / "o.json")]
    from convscope.frontends.cli.main import main

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for extra in (["--mean", "1,2"], ["--std", "1,1,1,1"], ["--input-channels", "1"],
                      ["--input-size", "48x"], ["--resize", "0"]):
            assert main(base + extra) == 2, extra
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "o.json").exists()


def test_cli_layers_on_a_card_and_on_a_weights_file(user, tmp_path, capsys):
    from convscope.frontends.cli.main import main

    assert main(["layers", str(user[1])]) == 0
    out = capsys.readouterr().out
    assert "conv2" in out and "(default layer)" in out
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # RGB WolfNet told it takes 1 channel: one warning-free error line, no traceback
        assert main(["layers", "wolfnet.safetensors", "--arch", "wolfnet.py:WolfNet",
                     "--preprocessing", "none", "--input-size", "48", "--input-channels", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("convscope: error:") and "Traceback" not in err
        assert main(["layers", "wolfnet.safetensors", "--arch", "wolfnet.py:WolfNet",
                     "--preprocessing", "none", "--input-size", "48"]) == 0
    finally:
        os.chdir(cwd)


def test_overrides_on_a_loaded_model_leave_it_unchanged():
    lm = cs.load_model("digits-cnn")
    before = (lm.preprocessing, list(lm.class_names), lm.default_layer)
    other = cs.load_model(lm, preprocessing={"preset": "none", "size": 32, "channels": 1},
                          class_names=[str(i) for i in "abcdefghij"], default_layer="features.4")
    assert other is not lm and other.preprocessing.mean == (0.0,) and other.class_names[0] == "a"
    assert (lm.preprocessing, list(lm.class_names), lm.default_layer) == before
    assert cs.load_model(lm) is lm
