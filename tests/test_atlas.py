"""The concept atlas: equal to a brute-force top-n over zennit's layer relevance, resumable, bad input
in one line with nothing written, the model untouched, reused by ``concepts``, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zennit  # noqa: F401  (the dev extra has it: a missing peer fails, not skips)
from helpers import assert_same_state, model_state
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlus

import convscope as cs
from convscope.core.errors import InputError, LayerNotFoundError, MethodError
from convscope.frontends.cli.main import main
from convscope.methods.jobs import run_batch

PLAIN = cs.Preprocessing(size=(16, 16), mean=(0.0,) * 3, std=(1.0,) * 3, resize=None)


class Head(nn.Module):
    """ReLU, global average, linear: what follows layer ``c2`` of :class:`Net`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(a).mean((2, 3)))


class Net(nn.Module):
    """A plain network on [0, 1] pixels with functional ReLUs: conv, ReLU, pool, conv ``c2``, head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1)
        self.head = Head()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.max_pool2d(F.relu(self.c1(x)), 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _data(n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _brute_force(net: Net, x: torch.Tensor, n: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Oracle: per image, c2's activation and its relevance from zennit's LRP of the head alone
    (started at the predicted logit); per channel the top ``n`` images by peak value, ties to the
    lower index, with the (row, col) of the peak."""
    rel, act = [], []
    for i in range(len(x)):
        a = net.features(x[i:i + 1]).detach()
        out = net.head(a).detach()
        start = torch.zeros_like(out)
        t = int(out.argmax())
        start[0, t] = out[0, t]
        with Gradient(net.head, EpsilonPlus()) as attr:
            _, r = attr(a.clone().requires_grad_(True), start)
        rel.append(r[0])
        act.append(a[0])
    result = {}
    for name, maps in (("relevance", torch.stack(rel)), ("activation", torch.stack(act))):
        flat = maps.flatten(2).numpy()  # (N, C, h*w)
        w = maps.shape[3]
        v, pos = flat.max(2), flat.argmax(2)
        idx = np.stack([sorted(range(len(x)), key=lambda i, c=c: (-v[i, c], i))[:n]
                        for c in range(v.shape[1])])
        vals = np.take_along_axis(v.T, idx, 1)
        p = np.take_along_axis(pos.T, idx, 1)
        result[name] = (idx, vals, np.stack([p // w, p % w], -1))
    return result


@pytest.fixture(scope="module")
def net() -> cs.LoadedModel:
    return cs.load_model(Net().eval(), preprocessing=PLAIN)


def test_atlas_equals_brute_force_over_zennit(net, tmp_path):
    x = _data()
    atlas = cs.concept_atlas(net, x, "c2", n=4, composite="epsilon_plus", out=tmp_path / "a.zarr",
                             batch_size=3, chunk_size=8)  # batches and chunks cut across each other
    want = _brute_force(net.model, x, 4)
    for name, view in (("relevance", atlas.relevance), ("activation", atlas.activation)):
        idx, vals, pos = want[name]
        np.testing.assert_array_equal(view.indices.numpy(), idx, err_msg=name)
        np.testing.assert_allclose(view.values.numpy(), vals, rtol=1e-4, atol=1e-6, err_msg=name)
        live = vals > 0  # where a channel is 0 everywhere, any position is its peak
        np.testing.assert_array_equal(view.positions.numpy()[live], pos[live], err_msg=name)
    assert atlas.n_images == 20 and atlas.channels == 5 and atlas.layer == "c2"
    # relevance and activation rank differently: the atlas is not one ranking shown twice
    assert not torch.equal(atlas.relevance.indices, atlas.activation.indices)
    # one store serves any n: the top 2 are the first 2 of the top 4
    top2 = cs.load_atlas(tmp_path / "a.zarr", net, x, n=2)
    assert torch.equal(top2.relevance.indices, atlas.relevance.indices[:, :2])


def test_patches_are_the_receptive_field_at_the_peak(net, tmp_path):
    x = _data()
    atlas = cs.concept_atlas(net, x, "c2", n=3, out=tmp_path / "a.zarr", batch_size=8)
    rf = atlas.relevance.receptive_field
    assert rf is not None and rf.size == (8, 8) and rf.start == (-3, -3)  # 3x3 conv, 2x2 pool, 3x3 conv
    c = 0
    i, (r, col) = int(atlas.relevance.indices[c, 0]), atlas.relevance.positions[c, 0].tolist()
    t, le = r * rf.jump[0] + rf.start[0], col * rf.jump[1] + rf.start[1]
    patch = atlas.references(c, "relevance")[0]
    img = x[i].permute(1, 2, 0).numpy()
    assert patch.shape == (8, 8, 3)
    inside = (slice(max(t, 0) - t, min(t + 8, 16) - t), slice(max(le, 0) - le, min(le + 8, 16) - le))
    np.testing.assert_allclose(patch[inside], img[max(t, 0):t + 8, max(le, 0):le + 8], atol=1e-6)


def test_resume_after_interruption_gives_the_same_atlas(net, tmp_path):
    x = _data()
    kw = dict(n=3, composite="epsilon_plus", batch_size=3, chunk_size=4)  # 5 chunks

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        cs.concept_atlas(net, x, "c2", out=tmp_path / "a.zarr", progress=stop_after_two, **kw)
    with pytest.raises(InputError, match="unfinished atlas .2/5 chunks") as e:
        cs.load_atlas(tmp_path / "a.zarr", net, x)
    assert "\n" not in str(e.value)
    calls: list[int] = []
    resumed = cs.concept_atlas(net, x, "c2", out=tmp_path / "a.zarr", progress=lambda d, t: calls.append(d),
                               **kw)
    assert calls == [3, 4, 5]  # only the 3 chunks not done were computed
    fresh = cs.concept_atlas(net, x, "c2", out=tmp_path / "b.zarr", **kw)
    for a, b in ((resumed.relevance, fresh.relevance), (resumed.activation, fresh.activation)):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
        assert torch.equal(a.positions, b.positions)
    # a finished store is not computed again
    again: list[int] = []
    cs.concept_atlas(net, x, "c2", out=tmp_path / "a.zarr", progress=lambda d, t: again.append(d), **kw)
    assert again == []


@pytest.mark.parametrize("kw, err, msg", [
    ({"layer": "head.fc"}, MethodError, "has no channels"),
    ({"layer": "nope"}, LayerNotFoundError, "nope"),
    ({"n": 0}, InputError, "n must be"),
    ({"n": -3}, InputError, "n must be"),
    ({"n": 65}, InputError, "n must be"),
    ({"n": float("nan")}, InputError, "n must be"),
    ({"n": float("inf")}, InputError, "n must be"),
    ({"n": 10**9}, InputError, "n must be"),
    ({"n": 21}, InputError, "data set has 20 images"),
    ({"data": []}, InputError, "empty"),  # an empty torch Dataset
    ({"target": "bogus"}, InputError, "unknown atlas target"),
    ({"target": 4}, InputError, "class index in 0..3"),
    ({"target": -1}, InputError, "class index"),
    ({"target": "label"}, InputError, "needs labelled images"),
    ({"composite": "nope"}, MethodError, "unknown LRP composite"),
    ({"chunk_size": 0}, InputError, "chunk_size"),
    ({"batch_size": float("nan")}, InputError, "batch_size"),
])
def test_bad_input_is_one_line_and_writes_nothing(net, tmp_path, kw, err, msg):
    before = model_state(net.model)
    args = {"data": _data(), "layer": "c2", **kw}
    with pytest.raises(err, match=msg) as e:
        cs.concept_atlas(net, args.pop("data"), args.pop("layer"), out=tmp_path / "a.zarr", **args)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # no store, no temporary folder
    assert_same_state(before, model_state(net.model))


def test_model_is_bit_identical_after_the_atlas(tmp_path):
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    bn[1].running_mean.uniform_(-0.2, 0.2)  # a BatchNorm that LRP merges into the conv and must restore
    lm = cs.load_model(bn, preprocessing=PLAIN)
    before = model_state(bn)
    cs.concept_atlas(lm, _data(6), "3", n=2, out=tmp_path / "a.zarr", batch_size=4)
    assert_same_state(before, model_state(bn))
    assert not bn.training


def test_another_job_in_the_store_is_refused(net, tmp_path):
    x = _data()
    cs.concept_atlas(net, x, "c2", n=2, out=tmp_path / "a.zarr")
    with pytest.raises(InputError, match="differs in: composite"):
        cs.concept_atlas(net, x, "c2", n=2, composite="epsilon_plus", out=tmp_path / "a.zarr")
    run_batch(net, x[:4], "saliency", tmp_path / "b.zarr", batch_size=4)
    with pytest.raises(InputError, match="not a concept atlas"):
        cs.load_atlas(tmp_path / "b.zarr", net, x[:4])


def test_concepts_reuse_the_atlas(net, tmp_path):
    x = _data()
    atlas = cs.concept_atlas(net, x, "c2", n=3, composite="epsilon_plus", out=tmp_path / "a.zarr")
    res = cs.concepts(net, x[:1], layer="c2", k=3, composite="epsilon_plus", atlas=atlas, n_references=3)
    for c in res.concepts:
        (ch,) = c.channels
        np.testing.assert_array_equal(c.references, atlas.references(ch, "relevance"))
        np.testing.assert_array_equal(c.activation_references, atlas.references(ch, "activation"))
    assert res.options["atlas"]["target"] == "pred"
    with pytest.raises(InputError, match="composite 'epsilon_plus', not 'epsilon_plus_flat'"):
        cs.concepts(net, x[:1], layer="c2", k=2, atlas=atlas)
    with pytest.raises(InputError, match="layer 'c2', not 'c1'"):
        cs.concepts(net, x[:1], layer="c1", k=2, composite="epsilon_plus", atlas=atlas)
    with pytest.raises(InputError, match="without references= and groups="):
        cs.concepts(net, x[:1], layer="c2", groups={"a": [0, 1]}, k=1, composite="epsilon_plus", atlas=atlas)
    other = cs.load_model(Net(seed=5).eval(), preprocessing=PLAIN)
    with pytest.raises(InputError, match="other model weights"):
        cs.concepts(other, x[:1], layer="c2", k=2, composite="epsilon_plus", atlas=atlas)


def test_atlas_saves_and_shows(net, tmp_path):
    atlas = cs.concept_atlas(net, _data(), "c2", n=3, out=tmp_path / "a.zarr")
    png = atlas.save(tmp_path / "a.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    d = json.loads(atlas.save(tmp_path / "a.json").read_text())
    assert d["kind"] == "concept_atlas" and len(d["per_channel"]) == 5
    assert d["per_channel"][0]["relevance"][0]["image"] == int(atlas.relevance.indices[0, 0])
    assert "Concept atlas of c2" in atlas.save(tmp_path / "a.html").read_text()
    with pytest.raises(InputError, match="out of range"):
        atlas.references(5)


def test_cli_atlas_and_concepts_with_it(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    rc = main(["atlas", "-m", "digits-cnn-cue", "--data", "digits:test", "--limit", "24", "--layer",
               "features.9", "-n", "3", "-o", str(store), "--save", str(tmp_path / "a.png"), "-q"])
    assert rc == 0 and (tmp_path / "a.png").is_file()
    assert "atlas of features.9: 64 channels x top 3 of 24 images, complete" in capsys.readouterr().out
    from convscope.data.sources import as_source

    src = as_source("digits:test", cs.load_model("digits-cnn-cue").preprocessing)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((src.pixels(30) * 255).astype(np.uint8)).save(img)
    rc = main(["concepts", "-m", "digits-cnn-cue", str(img), "--layer", "features.9", "--k", "2", "--atlas",
               str(store), "--n-references", "3", "-o", str(tmp_path / "c.json")])
    assert rc == 0
    assert json.loads((tmp_path / "c.json").read_text())["options"]["atlas"]["images"] == 24
    rc = main(["atlas", "-m", "digits-cnn-cue", "--data", "digits:test", "--limit", "24", "--layer",
               "classifier", "-o", str(tmp_path / "t.zarr")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no channels" in err and "Traceback" not in err
    assert not (tmp_path / "t.zarr").exists()


def test_ray_engine_gives_the_same_atlas(ray_local, cue_model, tmp_path):
    kw = dict(n=3, limit=48, chunk_size=16, batch_size=8)
    with pytest.warns(cs.errors.UnreliableResultWarning):  # dead channels are named
        local = cs.concept_atlas(cue_model, "digits:test", "features.9", out=tmp_path / "l.zarr", **kw)
        remote = cs.concept_atlas(cue_model, "digits:test", "features.9", out=tmp_path / "r.zarr",
                                  engine="ray", slots=2, **kw)
    for a, b in ((local.relevance, remote.relevance), (local.activation, remote.activation)):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.positions, b.positions)
        torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-7)


def test_an_atlas_of_an_image_folder_reads_its_patches_from_anywhere(cue_model, tmp_path, monkeypatch):
    from PIL import Image

    from convscope.data.sources import as_source

    src = as_source("digits:test", cue_model.preprocessing)
    for i in range(12):
        (tmp_path / "imgs" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((src.pixels(i)[..., 0] * 255).astype(np.uint8)).save(tmp_path / "imgs" / str(i % 2) /
                                                                             f"{i}.png")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(cs.errors.UnreliableResultWarning):
        a = cs.concept_atlas(cue_model, "imgs", "features.9", n=2, target="label", out="a.zarr")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.warns(cs.errors.UnreliableResultWarning):
        b = cs.load_atlas(tmp_path / "a.zarr", n=2)  # the folder was recorded as an absolute path
    assert torch.equal(a.relevance.indices, b.relevance.indices)
    np.testing.assert_array_equal(a.references(3), b.references(3))


def test_progress_is_a_bar_by_default_none_when_false_and_a_bad_value_is_one_line(net, tmp_path, capsys):
    """Long work shows progress off a terminal too (lines on stderr by default); ``progress=False``
    (as ``cs.audit`` takes it) prints nothing; anything else but a callable is a one-line error."""
    x = _data()
    kw = dict(n=2, batch_size=4, chunk_size=8)
    cs.concept_atlas(net, x, "c2", out=tmp_path / "a.zarr", **kw)
    assert "atlas: chunks" in capsys.readouterr().err
    cs.concept_atlas(net, x, "c2", out=tmp_path / "b.zarr", progress=False, **kw)
    assert "atlas" not in capsys.readouterr().err
    with pytest.raises(InputError, match="progress=") as err:
        cs.concept_atlas(net, x, "c2", out=tmp_path / "c.zarr", progress="yes", **kw)
    assert "\n" not in str(err.value) and not (tmp_path / "c.zarr").exists()
