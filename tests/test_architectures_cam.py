"""CAM mechanics on torchvision architectures with random weights (weights=None).

Random networks show nothing worth checking in the values; these tests check that every CAM
method runs on each architecture's default layer, reads its output as the right grid (tokens for
ViT, channels-last for Swin), returns finite, non-constant maps of the input's size, and leaves
no hook and no changed state behind.
"""

import pytest
import torch
from torch import nn
from torchvision import models as tvm

import convscope as cs
from convscope.core.errors import MethodError
from convscope.core.hooks import count_hooks
from convscope.models.zoo import _family_layer

# arch -> (input side, batch, expected grid of the default layer, layout, CAM applies)
ARCHS = {
    "resnet18": (64, 2, [2, 2], "nchw", True),
    "vgg16": (64, 1, [2, 2], "nchw", False),
    "densenet121": (64, 1, [2, 2], "nchw", False),
    "mobilenet_v3_small": (64, 1, [2, 2], "nchw", False),
    "efficientnet_b0": (64, 1, [2, 2], "nchw", True),
    "convnext_tiny": (64, 1, [2, 2], "nchw", False),
    "vit_b_16": (224, 1, [14, 14], "cls_tokens", False),
    "swin_t": (96, 1, [3, 3], "nhwc", True),
}
RELU_ONLY = {"resnet18", "vgg16", "densenet121"}  # guided backprop has a rule for every activation
NAMES = [f"class {i}" for i in range(1000)]


def _load(arch: str):
    """torchvision's builder with weights=None and the zoo's default CAM layer for the family.

    (``load_model("torchvision:...")`` runs a 224-px probe forward on top; the zoo's own tests
    cover that path.)
    """
    torch.manual_seed(0)
    net = tvm.get_model(arch, weights=None).eval()
    if arch == "vit_b_16":  # torchvision zero-initialises the ViT head: no gradient at all
        nn.init.normal_(net.heads.head.weight, std=0.02)
    return cs.load_model(net, class_names=NAMES, default_layer=_family_layer(arch))


def _check(e, x, lm):
    b, _, h, w = x.shape
    assert e.map.shape == (b, h, w)
    assert torch.isfinite(e.map).all() and (e.map >= 0).all()
    assert count_hooks(lm.model) == 0
    assert all(p.requires_grad for p in lm.model.parameters())
    return e


@pytest.mark.parametrize("name", list(ARCHS))
def test_cam_mechanics(name):
    side, b, grid, layout, has_gap_head = ARCHS[name]
    lm = _load(name)
    x = torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(1))
    x0 = x.clone()
    layer = lm.default_layer
    e = _check(cs.explain(lm, x, method="gradcam", target=list(range(b))), x, lm)
    assert e.diagnostics["layer_grid"] == {layer: grid}
    assert e.diagnostics["layer_layout"] == {layer: layout}
    assert e.raw.shape == (b, 1, side, side)
    # A random network's Grad-CAM can be negative everywhere before its ReLU (measured: vgg16,
    # densenet121, mobilenet_v3_small on this input), so structure is asserted where it exists;
    # Eigen-CAM always has spatial structure.
    if name not in ("vgg16", "densenet121", "mobilenet_v3_small"):
        assert (e.map.flatten(1).std(1) > 0).all(), name
    eig = _check(cs.explain(lm, x, method="eigencam"), x, lm).map
    assert (eig.flatten(1).std(1) > 0).all(), name
    assert torch.equal(x, x0)

    if has_gap_head:
        c = _check(cs.explain(lm, x, method="cam", target=list(range(b))), x, lm).map
        # on a GAP + linear head Grad-CAM is CAM divided by the number of positions
        torch.testing.assert_close(e.map * (grid[0] * grid[1]), c, rtol=1e-3, atol=1e-6 * float(c.max()))
    else:
        with pytest.raises(MethodError, match="global-average-pooling"):
            cs.explain(lm, x, method="cam")
        assert count_hooks(lm.model) == 0

    if name in RELU_ONLY:
        g = _check(cs.explain(lm, x, method="guided_gradcam"), x, lm)
        assert g.raw.shape == x.shape
    else:  # SiLU, GELU, Hardswish have no guided rule: a clear error (or nonrelu="gradient")
        with pytest.raises(MethodError):
            cs.explain(lm, x, method="guided_gradcam")
        assert count_hooks(lm.model) == 0
        assert all(p.requires_grad for p in lm.model.parameters())


def test_all_cam_methods_and_several_layers_on_resnet18():
    lm = _load("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for method in cs.method_names("cam"):
        if cs.get_method(method).func.__module__ != "convscope.methods.attribution.cam":
            continue
        _check(cs.explain(lm, x, method=method, target=[3, 5]), x, lm)
    e = cs.explain(lm, x, method="gradcam", layer="layer[34]")
    assert e.diagnostics["layers"] == ["layer3", "layer4"]
    assert e.diagnostics["layer_grid"] == {"layer3": [4, 4], "layer4": [2, 2]}
    assert e.raw.shape == (2, 2, 64, 64)
    assert float(e.map.max()) <= 1.0 + 1e-6  # mean of max-normalised maps
