"""The dataset audit (SpRAy): its numerical pieces against oracles, and the whole audit on a model
defined here whose strategies are known by construction."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.frontends.cli.main import main
from convscope.methods.dataset import TensorSource
from convscope.methods.dataset import _spectral as sp
from convscope.methods.dataset._settings import AUDIT_RANGES

# --- the numerical pieces --------------------------------------------------------------------


def _brute_box(m: np.ndarray, share: float) -> tuple[float, float]:
    """(smallest area, most mass at that area) over every box: the oracle for ``mass_box``."""
    h, w = m.shape
    need = share * m.sum() * (1 - 1e-9)
    best = (np.inf, -1.0)
    for t, b in itertools.combinations(range(h + 1), 2):
        for le, r in itertools.combinations(range(w + 1), 2):
            s = m[t:b, le:r].sum()
            a = (b - t) * (r - le)
            if s >= need and (a < best[0] or (a == best[0] and s > best[1])):
                best = (a, s)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mass_box_is_the_smallest_box_holding_the_share(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((6, 7)) ** 4 * (rng.random((6, 7)) < 0.6)
    share = [0.5, 0.8, 0.95][seed % 3]
    box = sp.mass_box(m, share)
    area = (box.x1 - box.x0) * (box.y1 - box.y0)
    got = m[box.y0:box.y1, box.x0:box.x1].sum()
    want_area, want_mass = _brute_box(m, share)
    assert area == want_area and got == pytest.approx(want_mass)


def test_mass_box_of_a_point_and_of_nothing():
    m = np.zeros((8, 8))
    assert sp.mass_box(m).area(8) == 1.0  # no mass: the whole grid
    m[6, 1] = 1.0
    b = sp.mass_box(m)
    assert (b.x0, b.y0, b.x1, b.y1) == (1, 6, 2, 7) and sp.where(b, 8) == "bottom-left"
    assert b.scaled(8, 32, 32) == [4, 24, 8, 28]


def test_eigengap_finds_separated_groups_and_clusters_them():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 20))
    truth = np.repeat(np.arange(3), [30, 20, 12])
    x = centres[truth] + rng.normal(0, 0.3, (len(truth), 20))
    aff = sp.knn_affinity(x, 8)
    spec = sp.spectrum(aff, 8)
    assert spec.k == 3
    assert np.allclose(spec.eigenvalues[:3], 0, atol=1e-8) and spec.eigenvalues[3] > 0.1
    lab = sp.cluster(aff, 3, seed=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, lab) == 1.0
    assert np.bincount(lab).tolist() == [30, 20, 12]  # renumbered: largest first


# --- a model whose strategies are known ------------------------------------------------------

TAG = (slice(27, 31), slice(27, 31))  # a 4x4 tag at the bottom-right, off the object
OBJ = (slice(2, 26), slice(2, 26))  # the object region


class TagOrObject(nn.Module):
    """Unnormalised pixels, functional ReLUs. Class 0 ("tagged") scores 3x the tag's brightness when
    that beats the bright object pixels, so its gradient sits on the tag for tagged images and on
    the object's bright pixels otherwise; class 1 always reads the object."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tag = x[:, 0, TAG[0], TAG[1]].mean((1, 2))
        obj = F.relu(x[:, 0, OBJ[0], OBJ[1]] - 0.5).mean((1, 2))
        return torch.stack([torch.maximum(3 * tag, obj), 0.8 * obj + 0.05], 1)


def _tag_data(n_tag: int = 24, n_obj0: int = 26, n_obj1: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = n_tag + n_obj0 + n_obj1
    x = torch.zeros(n, 1, 32, 32)
    x[:, 0, OBJ[0], OBJ[1]] = (torch.rand(n, 24, 24, generator=g) < 0.5).float() * 0.9
    tagged = torch.zeros(n, dtype=torch.bool)
    tagged[:n_tag] = True
    x[tagged, 0, TAG[0], TAG[1]] = 1.0
    y = torch.tensor([0] * (n_tag + n_obj0) + [1] * n_obj1)
    perm = torch.randperm(n, generator=g)
    return x[perm], y[perm], tagged[perm]


@pytest.fixture(scope="module")
def tag_model():
    return cs.load_model(TagOrObject(), preprocessing={"size": [32, 32], "mean": [0.0], "std": [1.0],
                                                        "channels": 1}, class_names=["tagged", "plain"])


def test_audit_splits_the_tagged_images_into_a_suspect_cluster(tag_model):
    x, y, tagged = _tag_data()
    before = x.clone()
    src = TensorSource(x, tag_model.preprocessing, y, space="pixels", class_names=["tagged", "plain"])
    a = cs.audit(tag_model, src, method="saliency", progress=False)
    assert torch.equal(x, before)  # the caller's tensor is left as it was
    c0, c1 = a.classes
    assert c0.name == "tagged" and c0.k == 2 and c0.k_source == "eigengap"
    sus = [k for k in c0.clusters if k.suspect]
    assert len(sus) == 1
    members = set(sus[0].members.tolist())
    assert members == set(np.flatnonzero(tagged.numpy()).tolist())  # exactly the tagged images
    x0, y0, x1, y1 = sus[0].box  # the box is the tag
    assert (27, 27, 31, 31) == (x0, y0, x1, y1) or (x0 >= 26 and y0 >= 26 and x1 <= 32 and y1 <= 32)
    assert "bottom-right" in sus[0].reading and sus[0].reading.startswith("24 of 50 images of class tagged")
    assert not any(k.suspect for k in c1.clusters)  # the object class reads the object only
    obj = [k for k in c0.clusters if not k.suspect][0]
    assert obj.concentration < 0.5 and obj.exclusivity > 0.9  # large region: not suspect
    # proved by intervention: without the tag the tagged images are "plain" (class 0 = 3 x tag
    # loses to 0.8 obj + 0.05 once the tag holds a plain image's pixels), and the tag pasted into
    # plain images makes every one of them "tagged" (3 x 1 beats any object score)
    iv = sus[0].intervention
    assert iv.applied and iv.pasted_flips == iv.pasted_n == 24 and sus[0].confirmed
    assert iv.removed_before == 24 and iv.removed_flips == 24
    assert "flips 24 of 24 predictions" in sus[0].evidence and sus[0].evidence.endswith("confirmed")
    assert a.headline.startswith("Shortcut confirmed by intervention in 1 class(es) (")
    assert "; 0 unconfirmed" in a.headline
    assert len(repr(c0)) < 200 and len(repr(sus[0])) < 200 and "confirmed suspect" in repr(sus[0])
    # plain data, the same as audit.json
    d = json.loads(json.dumps(a.to_dict()))
    assert d["suspects"][0]["class"] == "tagged"
    assert d["classes"][0]["clusters"][0]["members"] == [int(i) for i in c0.clusters[0].members]
    assert len(d["classes"][0]["embedding"]["xy"]) == c0.n


def test_with_interventions_off_the_headline_says_nothing_is_proved(tag_model):
    """``intervention="none"``: the suspects are untested because the user turned the test off,
    not because it could not be applied (review of #28)."""
    x, y, _ = _tag_data(seed=1)
    a = cs.audit(tag_model, TensorSource(x, tag_model.preprocessing, y, space="pixels"),
                 method="saliency", progress=False, embedding="none", intervention="none")
    assert a.suspects and not any(k.confirmed for _, k in a.suspects)
    assert "interventions are off" in a.headline and "could not be applied" not in a.headline
    assert a.headline.startswith("No shortcut confirmed by intervention")


def test_suspicion_is_the_documented_product(tag_model):
    x, y, _ = _tag_data(seed=1)
    a = cs.audit(tag_model, TensorSource(x, tag_model.preprocessing, y, space="pixels"),
                 method="saliency", progress=False, embedding="none")
    for c in a.classes:
        for k in c.clusters:
            assert k.suspicion == pytest.approx(k.concentration * k.consistency * k.exclusivity)
            assert k.concentration == pytest.approx((1 - k.box_area) ** 2)
            by_cluster = k.suspicion >= 0.5 and k.size >= 3
            assert k.suspect == (by_cluster or "class" in k.flagged_by)
            assert ("cluster" in k.flagged_by) == by_cluster
            assert k.mass_share >= 0.8 - 1e-6


def test_audit_reads_maps_one_chunk_at_a_time(tag_model, monkeypatch, tmp_path):
    """Memory is bounded by the chunk: the full maps array is never read at once."""
    from convscope.methods.jobs import store as store_mod

    seen = []
    orig = store_mod.BatchStore.read

    def read(self, name, **kw):
        seen.append(name)
        if name == "maps":
            raise AssertionError("the audit read every map at once")
        return orig(self, name, **kw)

    monkeypatch.setattr(store_mod.BatchStore, "read", read)
    x, y, _ = _tag_data()
    cs.audit(tag_model, TensorSource(x, tag_model.preprocessing, y, space="pixels"), method="saliency",
             chunk_size=16, batch_size=8, progress=False, embedding="none", store=tmp_path / "m.zarr")
    assert "targets" in seen and "probabilities" not in seen


# --- folders, the CLI, bad input -------------------------------------------------------------


def _folder(root, x, y, names, extra=None):
    for i, (img, lab) in enumerate(zip(x, y, strict=True)):
        d = root / names[int(lab)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(d / f"{i:03d}.png")
    for name, imgs in (extra or {}).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, img in enumerate(imgs):
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(root / name / f"{j}.png")
    return root


def _save_tag_model(tmp_path, classes):
    """A model card for TagOrObject (so the CLI can load it): architecture in a file of its own."""
    src = tmp_path / "tagnet.py"
    src.write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n"
        "TAG = (slice(27, 31), slice(27, 31))\nOBJ = (slice(2, 26), slice(2, 26))\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, k=2):\n        super().__init__()\n        self.k = k\n\n"
        "    def forward(self, x):\n"
        "        tag = x[:, 0, TAG[0], TAG[1]].mean((1, 2))\n"
        "        obj = F.relu(x[:, 0, OBJ[0], OBJ[1]] - 0.5).mean((1, 2))\n"
        "        out = [torch.maximum(3 * tag, obj), 0.8 * obj + 0.05]\n"
        "        out += [0.1 * obj] * (self.k - 2)\n"
        "        return torch.stack(out, 1)\n"
    )
    card = tmp_path / "tag.json"
    card.write_text(json.dumps({
        "name": "tagnet", "architecture": f"{src}:Net", "kwargs": {"k": len(classes)}, "weights": None,
        "preprocessing": {"size": [32, 32], "mean": [0.0], "std": [1.0], "channels": 1, "resize": None},
        "class_names": classes,
    }))
    return card


def test_cli_audit_writes_json_and_report_with_notes_for_small_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's project: its cards' Python files run (#27)
    x, y, tagged = _tag_data(n_tag=12, n_obj0=14, n_obj1=20)
    root = _folder(tmp_path / "data", x, y, ["tagged", "plain"],
                   extra={"one": [x[0]], "none": []})
    card = _save_tag_model(tmp_path, ["tagged", "plain", "one", "none"])
    out = tmp_path / "out"
    rc = main(["audit", "--data", str(root), "--model", str(card), "--method", "saliency", "-q",
               "--k", "5", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads((out / "audit.json").read_text())
    by = {c["name"]: c for c in d["classes"]}
    assert by["none"]["n"] == 0 and "no images" in by["none"]["note"]
    assert by["one"]["n"] == 1 and "only 1 image" in by["one"]["note"] and by["one"]["clusters"] == []
    assert by["tagged"]["k"] == 5 and by["tagged"]["k_source"] == "given"
    # paths of a folder are recorded and point at the files
    tagged_cluster = max(by["tagged"]["clusters"], key=lambda c: c["suspicion"])
    assert all((root / p).is_file() for p in tagged_cluster["paths"])
    html = (out / "report.html").read_text()
    assert "only 1 image" in html and "no images" in html and "eigengap" in html
    # no absolute path: the data folder and the store relative to audit.json's folder
    text = (out / "audit.json").read_text()
    assert str(tmp_path) not in text and d["root"] == "../data" and d["store"] == "maps.zarr"
    assert d["data"]["path"] == "../data"
    assert "not checked: none (no images), one (only 1 image)" in d["headline"]
    assert "intervention: replacing the" in cap.out and "confirmed" in cap.out
    assert (out / "maps.zarr" / "manifest.json").is_file()


def test_cli_audit_k_larger_than_a_class_is_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's project: its cards' Python files run (#27)
    x, y, _ = _tag_data(n_tag=3, n_obj0=3, n_obj1=8)
    root = _folder(tmp_path / "data", x, y, ["tagged", "plain"])
    card = _save_tag_model(tmp_path, ["tagged", "plain"])
    assert main(["audit", "--data", str(root), "--model", str(card), "--method", "saliency", "-q",
                 "--k", "7", "--embedding", "pca", "-o", str(tmp_path / "o")]) == 0
    d = json.loads((tmp_path / "o" / "audit.json").read_text())
    by = {c["name"]: c for c in d["classes"]}
    assert by["tagged"]["k"] == 5 and "k=7 asked for, but the class has 6 images" in by["tagged"]["note"]
    assert by["plain"]["k"] == 7 and by["plain"]["note"] == "" and len(by["plain"]["clusters"]) == 7


def test_cli_audit_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's project: its cards' Python files run (#27)
    x, y, _ = _tag_data(n_tag=4, n_obj0=4, n_obj1=4)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(5):
        Image.fromarray((x[i, 0].numpy() * 255).astype(np.uint8)).save(flat / f"{i}.png")
    card = _save_tag_model(tmp_path, ["tagged", "plain"])
    root = _folder(tmp_path / "data", x, y, ["tagged", "plain"])
    cases = [
        (["--data", str(flat)], "needs labelled images"),
        (["--data", str(tmp_path / "missing")], "not found"),
        (["--data", str(root), "--only-classes", "zebra"], "unknown class 'zebra'"),
        (["--data", str(root), "--embedding", "umap"] if not _has_umap() else
         ["--data", str(root), "--method", "nope"], "umap" if not _has_umap() else "invalid choice"),
    ]
    for name, rng in AUDIT_RANGES.items():
        flag = {"n_neighbors": "--neighbors", "min_cluster": "--min-cluster", "max_k": "--max-k"}.get(
            name, "--" + name)
        for bad in rng.outside():
            cases.append((["--data", str(root), flag, str(bad)], flag))
    for extra, want in cases:
        out = tmp_path / "never"
        rc = main(["audit", "--model", str(card), "-q", *extra, "-o", str(out)])
        err = capsys.readouterr().err
        # the note that the card's Python file ran comes once per process (#27); then one line
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("convscope: warning: running")]
        assert rc == 2, (extra, err)
        assert len(lines) == 1 and want in err, (extra, err)
        assert not out.exists(), extra


def _has_umap() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def test_api_settings_refuse_every_bad_value(tag_model):
    x, y, _ = _tag_data(n_tag=4, n_obj0=4, n_obj1=4)
    src = TensorSource(x, tag_model.preprocessing, y, space="pixels")
    for name, rng in AUDIT_RANGES.items():
        for bad in rng.outside():
            with pytest.raises(InputError, match=name):
                cs.audit(tag_model, src, method="saliency", progress=False, **{name: bad})


SCRIPT = """
import sys
from convscope.frontends.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_audit_killed_and_restarted_writes_the_same_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's project: its cards' Python files run (#27)
    x, y, _ = _tag_data(n_tag=20, n_obj0=20, n_obj1=24)
    root = _folder(tmp_path / "data", x, y, ["tagged", "plain"])
    card = _save_tag_model(tmp_path, ["tagged", "plain"])
    args = ["audit", "--data", str(root), "--model", str(card), "--method", "saliency", "-q",
            "--chunk-size", "8", "--batch-size", "4"]
    assert main([*args, "-o", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    ref = json.loads((tmp_path / "ref" / "audit.json").read_text())
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *args, "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = out / "maps.zarr" / "done"
        if done.is_dir() and len(list(done.glob("chunk-*"))) >= 2:
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the audit finished before it could be killed; use more images"
    assert not (out / "audit.json").exists() and not (out / "report.html").exists()
    assert main([*args, "-o", str(out)]) == 0  # resumes the store
    got = json.loads((out / "audit.json").read_text())
    first = (out / "audit.json").read_bytes()
    for d in (ref, got):
        d.pop("store")
    assert got == ref
    assert main([*args, "-o", str(out)]) == 0  # a finished audit run again: the same bytes
    assert (out / "audit.json").read_bytes() == first


def test_ray_engine_gives_the_same_audit(ray_local, clean_model, digits_data, tmp_path):
    x, y = digits_data.split("test")
    src = TensorSource(x[:48], clean_model.preprocessing, y[:48], space="pixels")
    kw = dict(chunk_size=16, batch_size=8, progress=False, classes=[0, 1, 2, 3])
    local = cs.audit(clean_model, src, store=tmp_path / "l.zarr", **kw).to_dict()
    remote = cs.audit(clean_model, src, store=tmp_path / "r.zarr", engine="ray", **kw).to_dict()
    for d in (local, remote):
        d.pop("store")
    assert remote == local and len(local["classes"]) == 4


def test_clean_bundled_model_has_no_suspect(clean_model):
    a = cs.audit(clean_model, "digits:test", progress=False, embedding="none")
    assert sum(c.n for c in a.classes) == 540 and len(a.classes) == 10
    assert a.suspects == [], [k.reading for _, k in a.suspects]


def test_progress_lines_off_a_terminal(tag_model, capfd):
    x, y, _ = _tag_data(n_tag=4, n_obj0=4, n_obj1=4)
    cs.audit(tag_model, TensorSource(x, tag_model.preprocessing, y, space="pixels"), method="saliency",
             embedding="none")
    err = capfd.readouterr().err
    assert "convscope: audit: maps: 1/1 chunks (100%" in err and "audit: classes: 2/2" in err


@pytest.fixture(scope="module")
def watermark_heldout(tmp_path_factory):
    from convscope.data.toydata import watermark_folder

    root = tmp_path_factory.mktemp("wm") / "held-out"
    truth = watermark_folder(root, part="test")
    return root, set(truth["watermarked"])


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_audit_finds_the_planted_watermark(watermark_heldout, method):
    """The bundled Clever Hans: class 3's watermarked images form their own suspect cluster
    (precision >= 0.9, recall >= 0.8) and no other class gets a suspect. benchmarks/audit_watermark.py
    measures more methods (all at 1.00 / 1.00 when written)."""
    root, truth = watermark_heldout
    a = cs.audit("digits-watermark", root, method=method, progress=False, embedding="none")
    by = {c.name: c for c in a.classes}
    flagged = {p for k in by["3"].clusters if k.suspect for p in k.paths}
    assert flagged, [k.reading for k in by["3"].clusters]
    precision = len(flagged & truth) / len(flagged)
    recall = len(flagged & truth) / len(truth)
    assert precision >= 0.9 and recall >= 0.8, (precision, recall)
    assert [c.name for c, _ in a.suspects] == ["3"] * len(a.suspects)
    k = a.suspects[0][1]
    x0, y0, x1, y1 = k.box  # the region overlaps the mark (24..31 both ways)
    assert x1 > 24 and y1 > 24 and x0 < 31 and y0 < 31 and "bottom-right" in k.reading


def test_model_that_never_saw_the_watermark_has_no_suspect(watermark_heldout, clean_model):
    root, _ = watermark_heldout
    a = cs.audit(clean_model, root, progress=False, embedding="none")
    assert a.suspects == [], [k.reading for _, k in a.suspects]


def test_a_torch_dataset_gives_the_same_audit_as_a_tensor(tag_model):
    """Any labelled data the dataset views take: a torch Dataset of (pixels, label)."""
    from torch.utils.data import TensorDataset

    x, y, _ = _tag_data(n_tag=8, n_obj0=8, n_obj1=10)
    kw = dict(method="saliency", progress=False, embedding="pca")
    via_tensor = cs.audit(tag_model, TensorSource(x, tag_model.preprocessing, y, space="pixels"), **kw)
    via_dataset = cs.audit(tag_model, TensorDataset(x, y), space="pixels", **kw)
    a, b = via_tensor.to_dict(), via_dataset.to_dict()
    assert a["classes"] == b["classes"] and a["suspects"] == b["suspects"]
    assert [c["name"] for c in a["classes"]] == ["tagged", "plain"]  # unnamed labels: the model's names


def test_cli_audit_mixed_sizes_and_channels_and_a_root_without_classes(tmp_path, capsys, monkeypatch):
    """Images of mixed sizes and channel counts are fitted to the model (the tag survives a
    resize to 32x32); a data root whose class folders hold no image is a one-line error."""
    monkeypatch.chdir(tmp_path)  # the card's tagnet.py runs from inside the project folder
    x, y, _ = _tag_data(n_tag=10, n_obj0=10, n_obj1=12)
    root = _folder(tmp_path / "data", x, y, ["tagged", "plain"])
    for i, p in enumerate(sorted((root / "plain").glob("*.png"))[:6]):  # RGB, 64x64
        img = Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
        img.save(p) if i % 2 else img.convert("RGBA").save(p)
    card = _save_tag_model(tmp_path, ["tagged", "plain"])
    out = tmp_path / "out"
    assert main(["audit", "--data", str(root), "--model", str(card), "--method", "saliency", "-q",
                 "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "suspect (confirmed)" in cap.out and "intervention: replacing" in cap.out
    empty = tmp_path / "empty"
    for name in ("a", "b"):
        (empty / name).mkdir(parents=True)
    assert main(["audit", "--data", str(empty), "--model", str(card), "-q", "-o", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no images" in err and not (tmp_path / "n").exists()
