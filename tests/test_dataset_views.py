"""Dataset views: top activations, exact receptive fields, nearest neighbours, embeddings, CLI.

Oracles: a brute-force pass over all activations at once (through ``capture`` and a full forward,
not the truncated graph the library uses), gradient-based receptive fields, brute-force distances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.methods.dataset import (
    TensorSource,
    as_source,
    embed,
    layer_features,
    nearest_neighbors,
    receptive_field,
    top_activations,
)
from convscope.methods.dataset.receptive import rf_box
from convscope.methods.dataset.top import RunningTopK

N = 150


@pytest.fixture(scope="module")
def pixels(digits_data):
    return digits_data.images[:N], digits_data.labels[:N]


def _all_acts(lm, x, layer):
    with cs.capture(lm.model, layer) as cap, torch.no_grad():
        lm.model(x)
        return cap.activation(layer).float()


def test_top_activations_match_brute_force(clean_model, pixels):
    x, y = pixels
    k = 5
    res = top_activations(
        clean_model, TensorSource(x, clean_model.preprocessing, y, space="pixels"), "features.6", k=k,
        batch_size=32
    )
    act = _all_acts(clean_model, clean_model.preprocessing.normalize(x), "features.6")  # (N, C, 16, 16)
    n, c, h, w = act.shape
    flat = act.reshape(n, c, h * w).numpy()
    vmax = flat.max(2)  # (N, C)
    assert res.values.shape == (c, k) and res.feature_size == (h, w)
    live = 0
    for ch in range(c):
        order = np.lexsort((np.arange(n), -vmax[:, ch]))
        np.testing.assert_allclose(res.values[ch].numpy(), vmax[order[:k], ch], rtol=1e-5, atol=1e-5)
        srt = vmax[order, ch]
        if srt[0] <= 0 or np.min(np.abs(np.diff(srt[: k + 1]))) < 1e-4:
            continue  # dead channel or a near-tie: the order is not defined by the values
        live += 1
        assert res.indices[ch].tolist() == order[:k].tolist()
        for r, img in enumerate(order[:k]):
            vals = np.sort(flat[img, ch])
            if vals[-1] - vals[-2] > 1e-4:  # unique spatial maximum: its position is defined
                pos = int(np.argmax(flat[img, ch]))
                assert res.positions[ch, r].tolist() == [pos // w, pos % w]
    assert live >= c // 3


def test_running_topk_memory_is_bounded():
    top = RunningTopK(3)
    g = torch.Generator().manual_seed(0)
    for b in range(5):
        top.update(torch.rand(7, 4, 5, 5, generator=g), torch.arange(b * 7, b * 7 + 7))
        assert top.values.shape == (4, 3) and top.positions.shape == (4, 3, 2)


def _grad_box(model, layer, i, j, size, channels=1, n=12):
    """Bounding box of the pixels whose gradient reaches unit (i, j) of ``layer`` on random inputs."""
    x = torch.randn(n, channels, *size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with cs.capture(model, layer) as cap:
        model(x)
        a = cap.activation(layer)
        (g,) = torch.autograd.grad(a[:, :, i, j].sum(), x)
    support = g.abs().sum((0, 1)) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class Stack(nn.Module):
    """Strides, padding, dilation, max and average pooling with padding, a 5x5 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=2, dilation=2)
        self.a1 = nn.LeakyReLU(0.1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.p1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.c3 = nn.Conv2d(4, 4, 5, padding=2)
        self.p2 = nn.AvgPool2d(3, stride=2, padding=1)
        self.c4 = nn.Conv2d(4, 4, (3, 1), stride=(1, 2), padding=(1, 0))

    def forward(self, x):
        return self.c4(self.p2(self.c3(self.p1(self.c2(self.a1(self.c1(x)))))))


@pytest.mark.parametrize("case", ["digits", "stack", "resnet"])
def test_receptive_field_matches_gradient(case, clean_model):
    if case == "digits":
        model, size, ch, layers = (
            clean_model.model,
            (32, 32),
            1,
            ["features.0", "features.4", "features.6", "features.9"],
        )
    elif case == "stack":
        torch.manual_seed(0)
        model, size, ch, layers = Stack(), (40, 40), 1, ["c1", "p1", "c3", "p2", "c4"]
    else:  # residual branches: the field is the union of the paths
        torch.manual_seed(0)
        model = cs.load_model("torchvision:resnet18", weights=None).model
        size, ch, layers = (64, 64), 3, ["maxpool", "layer1", "layer2.0"]
    for layer in layers:
        rf = receptive_field(model, layer, size)
        with cs.capture(model, layer) as cap, torch.no_grad():
            model(torch.zeros(1, ch, *size))
            h, w = cap.activation(layer).shape[-2:]
        for i, j in {(0, 0), (h - 1, w - 1), (h // 2, w // 3), (0, w - 1)}:
            assert rf_box(rf, i, j, *size) == _grad_box(model, layer, i, j, size, ch), (case, layer, i, j)


def test_patches_are_the_receptive_field_crops(cue_model, pixels):
    x, y = pixels
    src = TensorSource(x[:60], cue_model.preprocessing, y[:60], space="pixels")
    res = top_activations(cue_model, src, "features.9", k=3, batch_size=16)
    live = [c for c in range(res.channels) if float(res.values[c, 0]) > 0][:4]
    for c in live:
        for r in range(3):
            i, j = res.positions[c, r].tolist()
            t, le, b, rr = _grad_box(cue_model.model, "features.9", i, j, (32, 32))
            assert res.box(c, r) == (t, le, b, rr)
            patch = res.patch(c, r)
            assert patch.shape[:2] == tuple(res.receptive_field.size)
            ut, ul = t - res.receptive_field.box(i, j)[0], le - res.receptive_field.box(i, j)[1]
            img = src.pixels(int(res.indices[c, r]))
            np.testing.assert_array_equal(patch[ut : ut + b - t, ul : ul + rr - le], img[t:b, le:rr])
            outside = np.ones(patch.shape[:2], bool)
            outside[ut : ut + b - t, ul : ul + rr - le] = False
            assert np.all(patch[outside] == 0.5)


def _brute_features(lm, x, layer):
    return _all_acts(lm, lm.preprocessing.normalize(x), layer).mean((2, 3)).double().numpy()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_neighbors_match_brute_force(clean_model, pixels, metric):
    x, y = pixels
    src = TensorSource(x, clean_model.preprocessing, y, space="pixels")
    f = _brute_features(clean_model, x, "features.9")
    for q in (7, 101):
        res = nearest_neighbors(clean_model, src, q, "features.9", k=6, metric=metric, batch_size=40)
        if metric == "cosine":
            fn = f / np.linalg.norm(f, axis=1, keepdims=True)
            d = 1 - fn @ fn[q]
        else:
            d = np.sqrt(((f - f[q]) ** 2).sum(1))
        d[q] = np.inf
        order = np.argsort(d, kind="stable")[:6]
        assert res.indices.tolist() == order.tolist()
        np.testing.assert_allclose(res.distances, d[order], rtol=1e-4, atol=1e-5)
    # a query given as an image (model-space tensor) equals the query by index, itself included
    res_img = nearest_neighbors(
        clean_model, src, clean_model.preprocessing.normalize(x[7]), "features.9", k=3, metric=metric
    )
    assert res_img.indices[0] == 7 and res_img.distances[0] == pytest.approx(0, abs=1e-5)


def test_embedding_pca_is_the_principal_projection(clean_model, pixels, tmp_path):
    x, y = pixels
    src = TensorSource(x, clean_model.preprocessing, y, class_names=[str(i) for i in range(10)],
                       space="pixels")
    feats = layer_features(clean_model, src, "features.9")
    e = embed(clean_model, src, "features.9", method="pca", features=feats)
    f = _brute_features(clean_model, x, "features.9")
    fc = f - f.mean(0)
    _, _, vt = np.linalg.svd(fc, full_matrices=False)
    ref = fc @ vt[:2].T
    for a in range(2):
        s = np.sign(np.dot(ref[:, a], e.coords[:, a]))
        np.testing.assert_allclose(e.coords[:, a] * s, ref[:, a], rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    assert (e.labels == y.numpy()).all()
    t = embed(clean_model, src, "features.9", method="tsne", features=feats, seed=0)
    assert t.coords.shape == (N, 2) and np.isfinite(t.coords).all()
    assert t.perplexity == min(30.0, (N - 1) / 3) and e.perplexity is None  # the one t-SNE ran with
    for kind in ("scatter", "thumbnails"):
        p = t.save(tmp_path / f"{kind}.png", kind=kind)
        assert Image.open(p).size[0] > 300
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="umap-learn"):
            embed(clean_model, src, "features.9", method="umap", features=feats)


def test_sources_folder_and_torch_dataset(clean_model, pixels, tmp_path):
    x, y = pixels
    root = tmp_path / "imgs"
    for i in range(12):
        d = root / f"class_{int(y[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(d / f"{i:03d}.png")
    src = as_source(str(root), clean_model.preprocessing)
    assert len(src) == 12 and src.class_names == sorted({f"class_{int(v)}" for v in y[:12]})
    xi, lab, idx = src[0]
    assert xi.shape == (1, 32, 32) and idx == 0 and src.class_names[lab] == Path(src.files[0]).parent.name
    assert src.describe()["files_sha256"]
    # PNG round trip: the folder's pixels equal the digits to 8 bits
    j = int(Path(src.files[0]).stem)
    np.testing.assert_allclose(src.pixels(0)[..., 0], x[j, 0].numpy(), atol=1 / 255 + 1e-6)
    items = [(Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8)), int(y[i])) for i in range(10)]
    tsrc = as_source(items, clean_model.preprocessing)
    assert len(tsrc) == 10 and tsrc[3][1] == int(y[3])
    res = top_activations(clean_model, tsrc, "features.4", k=2, batch_size=4)
    assert res.indices.shape == (32, 2)
    with pytest.raises(InputError):
        as_source(str(tmp_path / "missing"), clean_model.preprocessing)


def _cli(*args):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "convscope", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_dataset_commands(tmp_path):
    r = _cli("top-activations", "--layer", "features.9", "--limit", "60", "-k", "4", "--channels", "0-3",
             "-o", str(tmp_path / "top.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "top.png").size[1] > 4 * 64
    bad = _cli("top-activations", "--layer", "features.99", "--limit", "10", "-o", str(tmp_path / "bad.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "features.9" in bad.stderr and not (tmp_path / "bad.png").exists()
    # the other commands in-process through the same entry point (a subprocess costs seconds)
    from convscope.frontends.cli.main import main

    nb = tmp_path / "nb.json"
    assert main(["neighbors", "#5", "--layer", "features.9", "--limit", "60", "-o", str(nb)]) == 0
    assert len(json.loads((tmp_path / "nb.json").read_text())["indices"]) == 8
    assert main(["embed", "--layer", "features.9", "--limit", "60", "--kind", "thumbnails",
                 "-o", str(tmp_path / "emb.png")]) == 0
    assert Image.open(tmp_path / "emb.png").size[0] >= 1000
    code = main(["top-activations", "--layer", "features.9", "--channels", "500", "--limit", "10",
                 "-o", str(tmp_path / "bad.png")])
    assert code == 2 and not (tmp_path / "bad.png").exists()
