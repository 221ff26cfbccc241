"""Hugging Face ``transformers`` image classifiers (``hf:<folder>``) and the one output rule.

Tiny randomly initialised ViT, Swin and ResNet (and a ConvNeXt for the preprocessing check) are
built from configs and saved with ``save_pretrained`` into a temporary folder once per session:
nothing is downloaded. Every task runs on them through ``load_model("hf:DIR")``; the oracles are
computed here by hand (autograd on the raw ``transformers`` model, the processor's own output).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data as skdata
from torch import nn

import convscope as cs
from convscope.core.errors import ModelLoadError
from convscope.core.hooks import count_hooks
from convscope.frontends.cli.main import main
from convscope.models.outputs import ScoresModel, class_scores

LABELS = {0: "tabby", 1: "tiger", 2: "lynx"}
FAMILIES = ("vit", "swin", "resnet")
# the default CAM layer each family must get: a transformer's last block's first norm, a
# convolutional model's last stage (names as transformers gives them)
DEFAULT_LAYER_END = {"vit": ".1.layernorm_before", "swin": "layers.1.blocks.0.layernorm_before",
                     "resnet": "encoder.stages.1", "convnext": "encoder.stages.1"}


def _build(family: str) -> tuple[nn.Module, object]:
    T = transformers
    kw = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    if family == "vit":
        model = T.ViTForImageClassification(T.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, **kw))
        proc = T.ViTImageProcessor(size={"height": 32, "width": 32})  # bilinear, mean/std 0.5
    elif family == "swin":
        model = T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, **kw))
        proc = T.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3,  # bicubic, ImageNet's
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    elif family == "resnet":  # microsoft/resnet-* ship a ConvNeXt processor with crop_pct
        model = T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **kw))
        proc = T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=2)
    else:
        model = T.ConvNextForImageClassification(T.ConvNextConfig(
            image_size=32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **kw))
        proc = T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)  # bicubic
    return model.eval(), proc


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for family in (*FAMILIES, "convnext"):
            model, proc = _build(family)
            with torch.no_grad():  # random heads give near-uniform scores: spread them
                for p in model.classifier.parameters():
                    p.mul_(20)
            model.save_pretrained(root / family)
            proc.save_pretrained(root / family)
            out[family] = root / family
    return out


@pytest.fixture(scope="session")
def loaded(hf_dirs):
    return {f: cs.load_model(f"hf:{d}") for f, d in hf_dirs.items()}


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    return skdata.chelsea()  # a real photo, 300x451


def _raw(lm: cs.LoadedModel) -> nn.Module:
    assert isinstance(lm.model, ScoresModel)
    return lm.model.wrapped


def _pil_processor(path: Path):
    """The processor with its PIL backend (transformers 5: backend="pil"; 4.x: the default slow
    processor), whose resize convscope reproduces."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        return transformers.AutoImageProcessor.from_pretrained(path, backend="pil")
    return transformers.AutoImageProcessor.from_pretrained(path, use_fast=False)


# --- loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", (*FAMILIES, "convnext"))
def test_load_reads_config_processor_and_labels(loaded, hf_dirs, family):
    lm = loaded[family]
    assert lm.class_names == list(LABELS.values())
    assert lm.default_layer is not None and lm.default_layer.endswith(DEFAULT_LAYER_END[family])
    assert lm.name == f"hf:{hf_dirs[family]}" and lm.assumed == []
    pre = lm.preprocessing
    assert pre.size == (32, 32) and pre.channels == 3
    expect = {"vit": (None, "bilinear", (0.5,) * 3), "swin": (None, "bicubic", (0.485, 0.456, 0.406)),
              "resnet": (36, "bilinear", (0.5,) * 3), "convnext": (36, "bicubic", (0.5,) * 3)}[family]
    assert (pre.resize, pre.resample) == expect[:2] and pre.mean == pytest.approx(expect[2])
    # the user's layer names, not a wrapper's
    raw = _raw(lm)
    assert [n for n, _ in lm.model.named_modules()] == [n for n, _ in raw.named_modules()]
    assert lm.model.state_dict().keys() == raw.state_dict().keys()


@pytest.mark.parametrize("family", (*FAMILIES, "convnext"))
def test_probabilities_equal_the_processor_pipeline_on_a_photo(loaded, hf_dirs, photo, family):
    lm = loaded[family]
    px = _pil_processor(hf_dirs[family])(images=photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.softmax(_raw(lm)(pixel_values=px).logits, 1)
    e = cs.explain(lm, photo, "saliency")
    torch.testing.assert_close(e.probabilities, want, atol=1e-5, rtol=0)
    assert want.max() - want.min() > 1e-3  # scores that differ: the check can fail


def test_layers_cli_lists_the_models_own_names(hf_dirs, loaded, capsys):
    for family in FAMILIES:
        assert main(["layers", f"hf:{hf_dirs[family]}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        names = [ln.split()[0] for ln in lines]
        assert names == [n for n, _ in _raw(loaded[family]).named_modules() if n]
        marked = [ln.split()[0] for ln in lines if ln.endswith("(default layer)")]
        assert marked == [loaded[family].default_layer]


def test_bad_hf_specs_give_one_line(tmp_path, capsys):
    assert main(["layers", f"hf:{tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convscope: error: hf:") and "folder not found" in err and "\n" not in err
    with pytest.raises(ModelLoadError, match="no config.json"):
        cs.load_model(f"hf:{tmp_path}")
    with pytest.raises(ModelLoadError, match="hf:<folder>"):
        (tmp_path / "config.json").write_text("{}")
        cs.load_model(str(tmp_path))


# --- every task on every family -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_saliency_equals_a_hand_written_gradient(loaded, photo, family):
    lm = loaded[family]
    e = cs.explain(lm, photo, "saliency", target=1)
    x, _ = lm.preprocessing(photo)
    x = x[None].requires_grad_(True)
    (g,) = torch.autograd.grad(_raw(lm)(pixel_values=x).logits[0, 1], x)
    torch.testing.assert_close(e.raw, g, atol=1e-5, rtol=0)
    torch.testing.assert_close(e.map, g.abs().amax(1), atol=1e-5, rtol=0)
    assert g.abs().max() > 1e-4
    assert count_hooks(_raw(lm)) == 0 and not _raw(lm).training


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_completeness(loaded, photo, family):
    e = cs.explain(loaded[family], photo, "integrated_gradients", target=0, steps=256)
    assert e.diagnostics["completeness_rel_gap"][0] < 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_at_the_default_layer_at_input_resolution(loaded, photo, family):
    lm = loaded[family]
    e = cs.explain(lm, photo, "gradcam")
    assert e.layer == lm.default_layer
    assert tuple(e.map.shape) == (1, *lm.preprocessing.size)
    assert torch.isfinite(e.map).all() and e.map.max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_occlusion(loaded, photo, family):
    lm = loaded[family]
    e = cs.explain(lm, photo, "occlusion", window=8, stride=8)
    assert tuple(e.map.shape) == (1, 32, 32) and torch.isfinite(e.map).all()
    assert e.map.abs().max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_class_visualisation_and_pgd_run(loaded, photo, family):
    from convscope.methods.synthesis import pgd

    lm = loaded[family]
    # a ViT takes only its own input size, and the standard transforms rescale (as for torchvision's)
    vis = cs.visualize_class(lm, [2], steps=4, transforms=None if family == "vit" else "standard")
    assert np.isfinite(np.asarray(vis.images)).all()
    adv = pgd(lm, photo, steps=3, eps=8 / 255)
    assert 0 < (adv.adversarial - adv.original).abs().max() <= 8 / 255 + 1e-6
    x = lm.preprocessing.normalize(adv.adversarial)
    with torch.no_grad():  # what the attack reports is the model's own output on its images
        want = torch.softmax(_raw(lm)(pixel_values=x).logits, 1)
    torch.testing.assert_close(adv.probs_adversarial, want, atol=1e-5, rtol=0)
    assert count_hooks(_raw(lm)) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_report_on_an_hf_folder(hf_dirs, photo, tmp_path, family):
    from convscope.frontends.report import explain_report

    rep = explain_report(f"hf:{hf_dirs[family]}", [photo], methods=["saliency", "gradcam"], topk=2)
    out = tmp_path / "r.html"
    rep.write(out)
    html = out.read_text()
    assert "tabby" in html and str(hf_dirs[family]) in html


def test_web_app_on_hf_folders(hf_dirs, loaded, photo):
    from fastapi.testclient import TestClient

    from convscope.frontends.serve import Engine, create_app

    specs = [f"hf:{hf_dirs[f]}" for f in FAMILIES]
    engine = Engine(specs)
    client = TestClient(create_app(engine), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    by_name = {m["name"]: m for m in info["models"]}
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    for family, spec in zip(FAMILIES, specs, strict=True):
        assert by_name[spec]["default_layer"] == loaded[family].default_layer
        for method in ("saliency", "gradcam"):
            r = client.post("/api/explain", data={"model": spec, "method": method, "topk": "3"},
                            files={"file": ("cat.png", buf.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            lm = loaded[family]
            x, _ = lm.preprocessing(photo)
            with torch.no_grad():
                p = torch.softmax(_raw(lm)(pixel_values=x[None]).logits, 1)[0]
            got = {c["index"]: c["p"] for c in body["probabilities"]}
            np.testing.assert_allclose([got[i] for i in range(3)], p.numpy(), atol=1e-5)
            assert body["overlay"].startswith("data:image/png;base64,")
            base64.b64decode(body["overlay"].split(",", 1)[1])
    engine.close()


def test_model_card_with_an_hf_architecture(hf_dirs, tmp_path, photo):
    card = hf_dirs["vit"].parent / "vit-card.json"  # the folder relative to the card's
    card.write_text(json.dumps({"name": "my-vit", "architecture": "hf:vit", "class_names": ["a", "b", "c"]}))
    lm = cs.load_model(str(card))
    assert lm.name == "my-vit" and lm.class_names == ["a", "b", "c"] and lm.card["name"] == "my-vit"
    assert lm.default_layer.endswith(DEFAULT_LAYER_END["vit"]) and lm.preprocessing.size == (32, 32)
    e = cs.explain(lm, photo, "gradcam")
    assert e.class_names == ("a", "b", "c") and e.layer == lm.default_layer
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"architecture": f"hf:{hf_dirs['vit']}", "class_names": ["a"]}))
    with pytest.raises(ModelLoadError, match="1 class names for a model with 3 outputs"):
        cs.load_model(str(card))


# --- the output rule ----------------------------------------------------------------------


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor
    features: torch.Tensor


class _Net(nn.Module):
    """A small CNN whose forward returns its scores in any container."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        s = self.fc(f.mean((2, 3)))
        return {
            "dict": {"logits": s, "features": f},
            "dict_one": {"scores": s, "name": "x"},
            "tuple": (f, s, f.mean()),
            "dataclass": _Out(s, f),
            "ambiguous": {"a": s, "b": 2 * s},
            "tensor": s,
        }[self.kind]


def test_rule_reads_tensor_logits_dict_and_tuple():
    s = torch.randn(2, 5)
    f = torch.randn(2, 4, 3, 3)
    assert class_scores(s) is s
    assert class_scores(_Out(s, f)) is s
    assert class_scores({"features": f, "logits": s}) is s
    assert class_scores({"scores": s, "meta": "x"}) is s
    assert class_scores((f, s)) is s
    assert class_scores([f, s, f]) is s
    assert class_scores({"a": s, "b": f}, output="b") is f
    assert class_scores((f, s), output="0") is f
    assert class_scores(_Out(s, f), output="features") is f


@pytest.mark.parametrize("bad, why", [({"a": torch.zeros(1, 2), "b": torch.zeros(1, 2)}, "keys 'a', 'b'"),
                                      ((torch.zeros(2, 3, 4),), "tuple of 1"),
                                      ("text", "str")])
def test_rule_that_cannot_tell_names_the_option(bad, why):
    with pytest.raises(ModelLoadError) as exc:
        class_scores(bad)
    msg = str(exc.value)
    assert "\n" not in msg and why in msg and "output=" in msg and "--model-output" in msg


def test_a_named_output_that_is_missing_says_what_there_is():
    with pytest.raises(ModelLoadError, match=r"no 'score'.*keys 'logits'"):
        class_scores({"logits": torch.zeros(1, 2)}, output="score")


@pytest.mark.parametrize("kind", ["dict", "dict_one", "tuple", "dataclass"])
def test_every_task_gets_tensors_from_any_container(kind):
    torch.manual_seed(0)
    net = _Net(kind).eval()
    ref = _Net("tensor").eval()
    ref.load_state_dict(net.state_dict())
    lm = cs.load_model(net, preprocessing={"size": 16})
    assert lm.model.wrapped is net and isinstance(lm.model, ScoresModel)
    assert cs.resolve_layers(lm.model, "conv") == ["conv"]
    x = torch.randn(1, 3, 16, 16)
    for method in ("saliency", "gradcam", "integrated_gradients"):
        got = cs.explain(lm, x, method, target=2)
        want = cs.explain(cs.load_model(ref, preprocessing={"size": 16}), x, method, target=2)
        torch.testing.assert_close(got.map, want.map)
    assert count_hooks(net) == 0 and not net.training
    assert vars(net)["kind"] == kind and not hasattr(net, "output")  # the user's module untouched


def test_ambiguous_output_is_refused_at_load_and_named_output_works():
    net = _Net("ambiguous").eval()
    with pytest.raises(ModelLoadError, match="cannot tell which output"):
        cs.load_model(net, preprocessing={"size": 16})
    lm = cs.load_model(net, preprocessing={"size": 16}, output="b")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), net(x)["b"])
    assert lm.info()["output"] == "b"
    with pytest.raises(ModelLoadError, match="no 'c'"):
        cs.load_model(net, preprocessing={"size": 16}, output="c")


def test_card_output_key_and_cli_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's project: its cards' Python files run (#27)
    src = tmp_path / "net.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.fc = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n"
        "        s = self.fc(torch.relu(self.conv(x)).mean((2, 3)))\n"
        "        return {'main': s, 'aux': -s}\n"
    )
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"architecture": "net.py:Net", "input_size": 16, "output": "aux"}))
    lm = cs.load_model(str(card))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), lm.model.wrapped(x)["aux"])
    card2 = tmp_path / "card2.json"
    card2.write_text(json.dumps({"architecture": "net.py:Net", "input_size": 16}))
    assert main(["layers", str(card2)]) == 2
    err = capsys.readouterr().err
    assert "cannot tell which output" in err and "--model-output" in err
    assert main(["layers", str(card2), "--model-output", "main"]) == 0
    assert "conv" in capsys.readouterr().out


def test_generic_module_without_preprocessing_is_read_by_the_rule():
    net = _Net("tuple").eval()
    with pytest.warns(cs.errors.AssumptionWarning):
        lm = cs.load_model(net)  # ImageNet's assumed: the probe at 224 px fits, the tuple is read
    assert isinstance(lm.model, ScoresModel)
    e = cs.explain(lm, torch.randn(1, 3, 20, 20), "gradcam", target=1)
    assert e.layer == "conv" and tuple(e.map.shape) == (1, 20, 20)


def test_generic_one_channel_module_input_is_inferred_and_said():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"aux": x.mean(), "logits": self.net(x)}

    model = Dict().eval()
    x = torch.randn(2, 1, 12, 12)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)["logits"][:, 0].sum(), xg)
    with pytest.warns(cs.errors.AssumptionWarning, match="1 channel"):
        lm = cs.load_model(model)  # unstated: one channel, from the first convolution (#27), and said
    assert lm.preprocessing.channels == 1 and any("1 channel" in a for a in lm.assumed)
    torch.testing.assert_close(cs.explain(lm, x, "saliency", target=0).raw, g)
    lm = cs.load_model(model, preprocessing={"size": 12, "channels": 1})
    e = cs.explain(lm, x, "saliency", target=0)
    torch.testing.assert_close(e.raw, g)
    assert isinstance(lm.model, ScoresModel) and lm.class_names == ["class 0", "class 1", "class 2"]


def test_wrapper_copies_pickles_and_leaves_the_loaded_model_alone():
    import copy
    import pickle

    net = _Net("dict").eval()
    lm = cs.load_model(net, preprocessing={"size": 16})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = lm.model(x)
        for twin in (copy.deepcopy(lm.model), pickle.loads(pickle.dumps(lm.model))):
            torch.testing.assert_close(twin(x), want)
            assert [n for n, _ in twin.named_modules()] == ["", "conv", "fc"]
    named = cs.load_model(lm, output="features")
    assert named is not lm and lm.model.output is None and named.model.output == "features"
    assert named.model.wrapped is net


def test_weights_none_builds_a_seeded_random_model(hf_dirs):
    a = cs.load_model(f"hf:{hf_dirs['resnet']}", weights=None, seed=3)
    b = cs.load_model(f"hf:{hf_dirs['resnet']}", weights=None, seed=3)
    c = cs.load_model(f"hf:{hf_dirs['resnet']}")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))
        assert not torch.allclose(a.model(x), c.model(x))
    assert a.weights == "random init (seed 3)"


@pytest.mark.parametrize("proc, pre, note", [
    ({"size": {"height": 40, "width": 40}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}},
     {"size": (32, 32), "resize": None}, "resizes to 40x40 then centre-crops 32x32"),
    ({"size": {"shortest_edge": 36}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
      "resample": 3, "image_mean": 0.5, "image_std": [0.25, 0.25, 0.25]},
     {"size": (32, 32), "resize": 36, "resample": "bicubic", "mean": (0.5,) * 3}, None),
    ({"size": {"shortest_edge": 36}}, {"size": (36, 36), "resize": 36}, "keeps the aspect ratio"),
    ({"size": {"height": 32, "width": 32}, "do_rescale": True, "rescale_factor": 1.0},
     {"size": (32, 32)}, "scales pixels by 1"),
    ({"size": {"height": 32, "width": 32}, "do_normalize": False},
     {"mean": (0.0,) * 3, "std": (1.0,) * 3}, None),
])
def test_processor_configs_map_to_preprocessing(proc, pre, note):
    from convscope.models.hf import preprocessing_from_processor

    got, notes = preprocessing_from_processor({"image_processor_type": "XImageProcessor", **proc})
    for k, v in pre.items():
        assert getattr(got, k) == (pytest.approx(v) if k in ("mean", "std") else v), k
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0] and notes[0].startswith("preprocessing: ")


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_evaluation_dataset_views_and_batch_jobs_run(loaded, family, tmp_path):
    from convscope.methods.dataset import TensorSource, embed, top_activations
    from convscope.methods.evaluation import deletion, model_randomization
    from convscope.methods.jobs.batch import run_batch

    lm = loaded[family]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e = cs.explain(lm, x, "saliency")
    curve = deletion(lm, x, e.map, score="probability")
    with torch.no_grad():  # nothing deleted yet: the model's own probability of the target
        full = torch.softmax(_raw(lm)(pixel_values=x).logits, 1)
    assert curve.scores.shape[0] == 4 and torch.isfinite(curve.scores).all()
    torch.testing.assert_close(curve.scores[:, 0], full.gather(1, curve.targets[:, None].cpu())[:, 0],
                               atol=1e-5, rtol=0)
    sanity = model_randomization(lm, x[:2], "saliency", progress=False)
    assert sanity.stages[0].startswith("classifier")
    src = TensorSource(x, lm.preprocessing)
    assert embed(lm, src, lm.default_layer).coords.shape == (4, 2)
    if family == "resnet":
        assert top_activations(lm, src, lm.default_layer, k=2) is not None
    store = run_batch(lm, src, "gradcam", tmp_path / "maps.zarr", fsync=False)
    assert store.path.exists()


def test_without_transformers_one_line_says_what_to_install(monkeypatch, hf_dirs):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    want = r"^hf: models need transformers: pip install 'convscope\[hf\]'$"
    with pytest.raises(ModelLoadError, match=want):
        cs.load_model(f"hf:{hf_dirs['vit']}")


def test_weights_file_for_an_hf_model_is_refused(hf_dirs):
    with pytest.raises(ModelLoadError, match="weights are in the model's folder"):
        cs.load_model(f"hf:{hf_dirs['vit']}", weights=str(hf_dirs["vit"] / "model.safetensors"))


def test_a_wrong_layer_name_names_the_users_model(loaded, photo):
    with pytest.raises(cs.errors.LayerNotFoundError, match="in ViTForImageClassification; close matches"):
        cs.explain(loaded["vit"], photo, "gradcam", layer="vit.layers.1.layernorm_befor")
