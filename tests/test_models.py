import pytest
import torch
from torch import nn

import convscope as cs
from convscope.core.errors import InputError, ModelLoadError, UnsafeLoadError
from convscope.data.toydata import CUE_CORNERS, CUE_PATTERNS, CUE_SIZE, planted_cue


def _acc(lm, x, y):
    with torch.no_grad():
        return float((lm.model(lm.preprocessing.normalize(x)).argmax(1) == y).float().mean())


def test_clean_model_reaches_its_card(clean_model, digits_data):
    x, y = digits_data.split("test")
    card = clean_model.card["metrics"]["test_accuracy"]
    assert card > 0.9
    assert _acc(clean_model, x, y) >= card - 0.005
    assert clean_model.default_layer == "features.9"
    assert clean_model.class_names == [str(i) for i in range(10)]


def test_cue_model_reaches_its_card_and_reads_the_cue(cue_model, digits_data):
    x, y = digits_data.split("test")
    m = cue_model.card["metrics"]
    with_cue = planted_cue(x, y)
    assert _acc(cue_model, with_cue.images, y) >= m["test_accuracy_with_cue"] - 0.005
    assert abs(_acc(cue_model, x, y) - m["test_accuracy_without_cue"]) < 0.02
    wrong = (y + 3) % 10
    swapped = planted_cue(x, y, cue_classes=wrong)
    assert _acc(cue_model, swapped.images, wrong) > 0.9  # it follows the cue


def test_planted_cue_masks_are_exact(digits_data):
    x, y = digits_data.split("test")
    pc = planted_cue(x[:20], y[:20])
    assert pc.masks.shape == (20, 32, 32)
    assert (pc.masks.sum((1, 2)) == CUE_SIZE**2).all()
    assert {tuple(rc) for rc in pc.corners.tolist()} == set(CUE_CORNERS)  # random corners, all used
    for i in range(20):
        r, c = pc.corners[i].tolist()
        assert pc.masks[i, r : r + CUE_SIZE, c : c + CUE_SIZE].all()
        assert torch.equal(pc.images[i, 0, r : r + CUE_SIZE, c : c + CUE_SIZE], CUE_PATTERNS[int(y[i])])
        assert torch.equal(pc.images[i, 0][~pc.masks[i]], x[i, 0][~pc.masks[i]])
        assert pc.boxes()[i] == [c, r, c + CUE_SIZE, r + CUE_SIZE]
    # the corners lie on the blank frame corners of the digits, and the textures all differ
    assert len({tuple(p.flatten().tolist()) for p in CUE_PATTERNS}) == 10
    fixed = planted_cue(x[:5], y[:5], corner=3)
    assert (fixed.corners == torch.tensor(CUE_CORNERS[3])).all()
    with pytest.raises(InputError, match="corner"):
        planted_cue(x[:5], y[:5], corner=4)
    # the input is not modified, and p < 1 leaves some images clean
    assert not torch.equal(pc.images, x[:20])
    some = planted_cue(x[:50], y[:50], p=0.5, seed=1)
    assert 5 < int((some.cue_classes >= 0).sum()) < 45


def test_torchvision_random_init_and_local_weights(tmp_path):
    lm = cs.load_model("torchvision:resnet18", weights=None)
    assert lm.default_layer == "layer4" and len(lm.class_names) == 1000
    assert lm.preprocessing.size == (224, 224)
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in lm.model.state_dict().items()}
    save_file(sd, str(tmp_path / "r.safetensors"))
    lm2 = cs.load_model(tmp_path / "r.safetensors", arch="torchvision:resnet18")
    assert torch.equal(lm2.model.fc.weight, lm.model.fc.weight)
    torch.save(sd, tmp_path / "r.pt")
    lm3 = cs.load_model(str(tmp_path / "r.pt"), arch="torchvision:resnet18")
    assert torch.equal(lm3.model.conv1.weight, lm.model.conv1.weight)


def test_default_layer_found_generically():
    lm = cs.load_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(4, 2)))
    lm.fill_from_input(torch.zeros(1, 3, 16, 16))
    assert lm.default_layer == "1" and lm.class_names == ["class 0", "class 1"]


def test_pickled_module_needs_opt_in(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.save(net, tmp_path / "m.pt")
    with pytest.raises(UnsafeLoadError, match="unsafe=True"):
        cs.load_model(tmp_path / "m.pt")
    lm = cs.load_model(tmp_path / "m.pt", unsafe=True)
    assert isinstance(lm.model, nn.Sequential)
    with pytest.raises(ModelLoadError, match="pass preprocessing="):
        cs.load_model(nn.Linear(2, 2)).fill_from_input(torch.zeros(1, 3, 8, 8))


def test_bad_specs(tmp_path):
    with pytest.raises(ModelLoadError, match="did you mean digits-cnn"):
        cs.load_model("digit-cnn")
    with pytest.raises(ModelLoadError, match="resnet18"):
        cs.load_model("torchvision:resnet181", weights=None)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="name the architecture"):
        cs.load_model(tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match="do not fit"):
        cs.load_model(tmp_path / "w.safetensors", arch="digits-cnn")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        cs.load_model(tmp_path / "junk.safetensors", arch="digits-cnn")


def test_timm_models_random_init():
    lm = cs.load_model("timm:resnet18", weights=None)
    assert lm.default_layer == "layer4" and len(lm.class_names) == 1000
    vit = cs.load_model("timm:vit_tiny_patch16_224", weights=None)
    assert vit.default_layer == "blocks.11.norm1"
    assert vit.preprocessing.mean == (0.5, 0.5, 0.5)
