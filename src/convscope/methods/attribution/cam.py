"""The CAM family on one engine: every variant is one small weight rule.

The engine (:func:`~convscope.methods.attribution._cam_engine.cam_engine`) runs the model once per chunk
of ``ctx.batch_size`` samples with the layer(s) captured, and differentiates the target score
``S`` with respect to the captured activations ``A`` only (the backward pass stops at the layer);
inside :func:`~convscope.methods.attribution._shared.shared_work` that pass is shared by every CAM on the
same images, layers and target. Each variant then turns ``A`` (B, K, h, w) and ``G = dS/dA`` into
a map (B, h, w) at the layer's resolution:

=============== =================================================================================
``cam``         Zhou et al. 2016, "Learning Deep Features for Discriminative Localization":
                ``M = sum_k W[t, k] A_k`` for a head ``logits = W mean_ij(A) + b`` (global average
                pooling then one linear layer). The head is found automatically: a ``Linear``
                with K inputs whose output on the spatial mean of ``A`` reproduces the logits
                (checked numerically, so a norm or an activation between layer and head is
                refused with a ``MethodError``). Callable targets use ``w = dS/dlogits @ W``.
``gradcam``     Selvaraju et al. 2017, "Grad-CAM": ``w_k = mean_ij G_kij``, ``M = sum_k w_k A_k``.
                On a GAP + linear head ``G_kij = W[t, k] / (h w)``, so Grad-CAM = CAM / (h w).
``gradcam_pp``  Chattopadhay et al. 2018, "Grad-CAM++": ``alpha_kij = G^2 / (2 G^2 + sum_ab A_kab
                G^3)`` (0 where the denominator is 0), ``w_k = sum_ij alpha_kij relu(G_kij)``. The
                higher derivatives use the paper's exponential-score closed form.
``xgradcam``    Fu et al. 2020, "Axiom-based Grad-CAM": ``w_k = sum_ij A_kij G_kij / sum_ij A_kij``
                (0 for an all-zero channel).
``hirescam``    Draelos and Carin 2020, "Use HiResCAM instead of Grad-CAM": ``M = sum_k G_k * A_k``
                (element-wise; no spatial averaging of the gradient).
``layercam``    Jiang et al. 2021, "LayerCAM": ``M = sum_k relu(G_k) * A_k``.
``eigencam``    Muhammad and Yeasin 2020, "Eigen-CAM": ``M = A v_1`` with ``v_1`` the first right
                singular vector of ``A`` read as an (h w) x K matrix (no gradient; computed for
                the whole batch at once from the smaller Gram matrix, ``A^T A`` or ``A A^T``, by
                one batched ``eigh`` in float64; ``center=True`` subtracts the spatial mean
                first, i.e. true PCA). The sign of a
                singular vector is arbitrary: it is fixed as scikit-learn's ``svd_flip`` does, so
                that the largest-magnitude entry of ``M`` is positive (for non-negative, e.g.
                post-ReLU, activations the uncentred ``M`` is then non-negative everywhere).
                Class-agnostic: the target does not change it.
``guided_gradcam`` Selvaraju et al. 2017: guided backpropagation (the gradient half's
                ``guided_backprop``) times the upsampled Grad-CAM. ``map = max_c |GB_c| * GC``,
                ``raw = GB * GC`` (B, C, H, W, signed). Both gradients come from one forward
                pass (:mod:`~convscope.methods.attribution._guided_cam`).
=============== =================================================================================

Every map is rectified (``relu(M)``, as in the papers), then upsampled bilinearly
(``align_corners=False``) to the input size.

Several layers at once (``layer=["layer3", "layer4"]`` or a glob): each layer's rectified,
upsampled map is divided by its own per-sample maximum and the maps are averaged, so each layer
counts equally whatever its scale (layers with deeper, larger activations would otherwise win).
``Explanation.raw`` holds the per-layer maps before that normalisation, (B, L, H, W), in the
order of ``diagnostics["layers"]``; for one layer ``map == raw[:, 0]``.

Transformers: token outputs are reshaped to a grid by :mod:`convscope.models.tokens`
(ViT: (B, 1 + h w, C) with the class token dropped; Swin: channels-last (B, h, w, C)); the
``layout`` option overrides the guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import MethodError
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._cam_engine import LayerData, Rule, cam_engine
from convscope.methods.attribution._guided import NONRELU_CHOICES
from convscope.methods.attribution._guided_cam import one_pass
from convscope.methods.attribution._shared import shared_work
from convscope.methods.registry import CueClaim, get_method, register
from convscope.models.tokens import LAYOUTS

__all__ = [
    "LayerData",
    "cam",
    "cam_engine",
    "eigencam",
    "find_gap_head",
    "gradcam",
    "gradcam_pp",
    "guided_gradcam",
    "hirescam",
    "layercam",
    "xgradcam",
]


def _cue(at_least: float, measured: float, layer: str | None = None, note: str = "") -> CueClaim:
    """A CAM's planted-cue claim: the first 120 cue digits, the clean control below 0.15."""
    return CueClaim(n=120, at_least=at_least, clean_below=0.15, measured=measured, layer=layer, note=note)


def _weighted(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A_k. Shape: w (b, K), a (b, K, h, w) -> (b, h, w)."""
    return torch.einsum("bk,bkhw->bhw", w, a)


# --- CAM: find the GAP + linear head ----------------------------------------------------------


def find_gap_head(
    model: nn.Module, act: torch.Tensor, logits: torch.Tensor, head: str | None = None
) -> tuple[str, nn.Linear]:
    """The ``Linear`` whose output on the spatial mean of ``act`` reproduces ``logits``.

    Args:
        model: the network.
        act: (b, K, h, w) activations of the CAM layer.
        logits: (b, n) model outputs for the same inputs.
        head: the head's dotted name, to skip the search (still checked).

    Raises:
        MethodError: no such layer: the model has no global-average-pooling + linear head after
            this layer.
    """
    pooled = act.mean((2, 3))
    k, n = pooled.shape[1], logits.shape[1]
    named = dict(model.named_modules())
    if head is not None:
        if head not in named:
            raise MethodError(f"no module named {head!r} for head=")
        cands = [(head, named[head])]
    else:
        cands = [(nm, m) for nm, m in model.named_modules() if isinstance(m, nn.Linear)][::-1]
    fits = [(nm, m) for nm, m in cands
            if isinstance(m, nn.Linear) and m.in_features == k and m.out_features == n]
    tol = 1e-4 * float(logits.abs().max()) + 1e-7  # float rounding of pool-then-linear
    for nm, m in fits:
        with torch.no_grad():
            pred = F.linear(pooled.to(m.weight.dtype), m.weight, m.bias)
        if torch.allclose(pred.float(), logits.float(), rtol=1e-4, atol=tol):
            return nm, m
    what = f"the layer's {k} channels" if not fits else "the spatial mean of the layer"
    raise MethodError(
        f"CAM needs a global-average-pooling + linear head right after the layer, and no linear "
        f"layer of {type(model).__name__} maps {what} to its {n} outputs (a norm, an activation "
        "or a deeper head in between?); use gradcam, which equals CAM up to scale on such "
        "heads, or pick the layer just before the pooling"
    )


def _cam_rule(head: str | None) -> Rule:
    def rule(d: LayerData) -> torch.Tensor:
        _, lin = find_gap_head(d.model, d.act, d.logits, head)
        assert d.logit_grad is not None
        w = d.logit_grad.to(lin.weight.dtype) @ lin.weight
        return _weighted(w.float(), d.act)

    return rule


# --- the weight rules -------------------------------------------------------------------------


def _gradcam_rule(d: LayerData) -> torch.Tensor:
    assert d.grad is not None
    return _weighted(d.grad.mean((2, 3)), d.act)


def _gradcam_pp_rule(d: LayerData) -> torch.Tensor:
    g, a = d.grad, d.act
    assert g is not None
    g2 = g * g
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
    return _weighted((alpha * g.clamp(min=0)).sum((2, 3)), a)


def _xgradcam_rule(d: LayerData) -> torch.Tensor:
    g, a = d.grad, d.act
    assert g is not None
    s = a.sum((2, 3))
    w = torch.where(s != 0, (a * g).sum((2, 3)) / torch.where(s != 0, s, 1.0), 0.0)
    return _weighted(w, a)


def _hirescam_rule(d: LayerData) -> torch.Tensor:
    assert d.grad is not None
    return (d.grad * d.act).sum(1)


def _layercam_rule(d: LayerData) -> torch.Tensor:
    assert d.grad is not None
    return (d.grad.clamp(min=0) * d.act).sum(1)


@contextmanager
def _one_thread(t: torch.Tensor) -> Iterator[None]:
    """Run a batch of small CPU LAPACK calls on one thread, restoring the setting after.

    Batched ``eigh`` of small matrices gains nothing from threads, and on a busy 2-core machine
    the thread pool costs 4.7x (measured: 64 matrices 64x64, 35 ms on one thread, 165 ms on two).
    """
    if t.device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _eigen_rule(center: bool) -> Rule:
    def rule(d: LayerData) -> torch.Tensor:
        a = d.act
        b, k, h, w = a.shape
        m = a.flatten(2).transpose(1, 2)  # (b, h*w, K)
        if center:
            m = m - m.mean(1, keepdim=True)
        md = m.double()
        # The first singular pair from the smaller Gram matrix (one batched eigh; much cheaper
        # than a full SVD when h*w and K differ): M v_1 = s_1 u_1.
        small_k = md.shape[1] >= md.shape[2]
        gram = md.transpose(1, 2) @ md if small_k else md @ md.transpose(1, 2)
        with _one_thread(gram):
            vals, vecs = torch.linalg.eigh(gram)  # ascending
        if small_k:
            u1 = md @ vecs[:, :, -1:]  # (b, h*w, 1) = s_1 u_1
        else:
            u1 = vecs[:, :, -1:] * vals[:, -1:, None].clamp(min=0).sqrt()
        u1 = u1[:, :, 0]
        # svd_flip convention (as scikit-learn's PCA): the largest-magnitude entry is positive
        peak = u1.gather(1, u1.abs().argmax(1, keepdim=True))
        proj = (u1 * torch.where(peak < 0, -1.0, 1.0).to(u1.dtype)).to(a.dtype)
        return proj.view(b, h, w)

    return rule




@register(
    "cam",
    summary="class activation map: the head's class weights applied to the layer's feature maps",
    caveats="only for models whose layer is followed by global average pooling and one linear "
    "layer (found and checked automatically); resolution of that layer",
    reference="Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
    family="cam",
    needs_layer=True,
    choices={"layout": LAYOUTS},
    claims=(_cue(0.75, 0.85),),
)
def cam(ctx: MethodContext, head: str | None = None, layout: str = "auto") -> MethodOutput:
    """CAM: ``relu(sum_k W[t, k] A_k)``, upsampled.

    Args:
        head: dotted name of the final ``Linear`` (default: found automatically).
        layout: how to read the layer output: auto, nchw, nhwc, tokens, cls_tokens.

    Shape:
        map (B, H, W); raw (B, L, H, W) per layer.
    """
    return cam_engine(ctx, _cam_rule(head), need_grad=False, need_logit_grad=True, layout=layout)


_LAYOUT_ARG = "layout: how to read the layer output: auto, nchw, nhwc, tokens, cls_tokens."


def _rule_method(name: str, rule: Rule, doc: str, meta: dict[str, Any]) -> Callable[..., MethodOutput]:
    """Register ``name``: a gradient CAM that is :func:`cam_engine` with weight ``rule`` and the
    ``layout`` option (the five gradient CAMs below differ only in the rule and their metadata)."""

    def method(ctx: MethodContext, layout: str = "auto") -> MethodOutput:
        return cam_engine(ctx, rule, layout=layout)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{doc}\n\nArgs:\n    {_LAYOUT_ARG}\n\n"
                      "Shape:\n    map (B, H, W); raw (B, L, H, W) per layer.\n")
    return register(name, family="cam", needs_layer=True, choices={"layout": LAYOUTS}, **meta)(method)


#: The gradient CAMs: (name, weight rule, docstring, registry metadata), one row each.
_GRADIENT_CAMS: tuple[tuple[str, Rule, str, dict[str, Any]], ...] = (
    ("gradcam", _gradcam_rule, "Grad-CAM: ``relu(sum_k mean_ij(G_k) A_k)``.", {
        "summary": "the layer's feature maps weighted by their spatially averaged gradient",
        "caveats": "coarse (resolution of the layer); averaging the gradient can credit regions the "
        "score does not depend on (see hirescam)",
        "reference": "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via "
        "Gradient-based Localization",
        "claims": (_cue(0.75, 0.85), _cue(0.85, 0.97, layer="features.6"))}),
    ("gradcam_pp", _gradcam_pp_rule, "Grad-CAM++ (see the module docstring for the weights).", {
        "summary": "Grad-CAM with pixel-wise weights on the positive gradients, better for several "
        "instances of a class",
        "caveats": "its higher-order terms assume an exponential score; coarse like Grad-CAM",
        "reference": "Chattopadhay et al. 2018, Grad-CAM++: Improved Visual Explanations for Deep "
        "Convolutional Networks",
        "claims": (_cue(0.9, 1.0),)}),
    ("xgradcam", _xgradcam_rule, "XGrad-CAM: ``w_k = sum_ij A_kij G_kij / sum_ij A_kij``.", {
        "summary": "Grad-CAM with gradients weighted by the normalised activations (axiom-based)",
        "caveats": "coarse like Grad-CAM; all-zero channels get weight 0",
        "reference": "Fu et al. 2020, Axiom-based Grad-CAM: Towards Accurate Visualization and "
        "Explanation of CNNs",
        "claims": (_cue(0.75, 0.85),)}),
    ("hirescam", _hirescam_rule, "HiResCAM: ``relu(sum_k G_k * A_k)``.", {
        "summary": "element-wise gradient times activation summed over channels: what the score "
        "depends on at each location of the layer",
        "caveats": "noisier than Grad-CAM; resolution of the layer",
        "reference": "Draelos and Carin 2020, Use HiResCAM instead of Grad-CAM for faithful "
        "explanations of convolutional neural networks",
        "claims": (_cue(0.75, 0.85), _cue(0.85, 0.975, layer="features.6"))}),
    ("layercam", _layercam_rule, "LayerCAM: ``relu(sum_k relu(G_k) * A_k)``.", {
        "summary": "positive gradients times activations, location by location; works at shallow "
        "layers too",
        "caveats": "ignores negative evidence; shallow layers give fine but noisy maps",
        "reference": "Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for "
        "Localization",
        "claims": (_cue(0.9, 1.0), _cue(0.85, 0.98, layer="features.6"))}),
)

gradcam, gradcam_pp, xgradcam, hirescam, layercam = (_rule_method(*row) for row in _GRADIENT_CAMS)


@register(
    "eigencam",
    needs_gradients=False,
    summary="the first principal direction of the layer's activations: where the layer "
    "responds most, whatever the class",
    caveats="class-agnostic (the target does not change the map); the sign of a principal "
    "component is a convention (its largest-magnitude entry is made positive)",
    reference="Muhammad and Yeasin 2020, Eigen-CAM: Class Activation Map using Principal "
    "Components",
    family="cam",
    needs_layer=True,
    choices={"layout": LAYOUTS},
    claims=(_cue(0.9, 0.99, note="class-agnostic: it shows what is salient (clean model 0.08)"),),
)
def eigencam(ctx: MethodContext, center: bool = False, layout: str = "auto") -> MethodOutput:
    """Eigen-CAM: the activations projected on their first right singular vector.

    Args:
        center: subtract the spatial mean of each channel before the SVD (PCA proper; the
            paper and the default do not).
        layout: how to read the layer output: auto, nchw, nhwc, tokens, cls_tokens.
    """
    return cam_engine(ctx, _eigen_rule(center), need_grad=False, layout=layout)


@register(
    "guided_gradcam",
    summary="guided backpropagation times the upsampled Grad-CAM: fine detail, class-specific",
    caveats="inherits guided backprop's weakness: it reconstructs the image more than it "
    "explains the class; ReLU networks only (see guided_backprop)",
    reference="Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via "
    "Gradient-based Localization",
    family="cam",
    needs_layer=True,
    choices={"layout": LAYOUTS, "nonrelu": NONRELU_CHOICES},
    claims=(_cue(0.8, 0.93),),
)
def guided_gradcam(ctx: MethodContext, layout: str = "auto", nonrelu: str = "error") -> MethodOutput:
    """Guided Grad-CAM.

    Args:
        layout: how to read the layer output: auto, nchw, nhwc, tokens, cls_tokens.
        nonrelu: passed to guided backpropagation: ``"error"`` refuses activations without a
            guided rule (SiLU, GELU, ...), ``"gradient"`` lets them pass the ordinary gradient.

    Shape:
        map (B, H, W) = max_c |GB_c| * GradCAM; raw (B, C, H, W) = GB * GradCAM (signed).
    """
    with shared_work():  # one forward pass gives both halves their gradients (see _guided_cam)
        one_pass(ctx, nonrelu)  # refuses activations without a guided rule before other work
        gb = get_method("guided_backprop").func(ctx, nonrelu=nonrelu)
        gc = cam_engine(ctx, _gradcam_rule, layout=layout)
    if gb.raw is None:
        raise MethodError("guided_backprop returned no raw gradient")
    raw = gb.raw * gc.map[:, None]
    diagnostics = dict(gc.diagnostics)
    return MethodOutput(map=raw.abs().amax(1), targets=gc.targets, raw=raw, logits=gc.logits,
                        diagnostics=diagnostics)
