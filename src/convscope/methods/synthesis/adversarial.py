"""Adversarial and fooling images: FGSM, iterative FGSM / PGD in L-infinity and L2.

References:
    Goodfellow, Shlens, Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015 (FGSM).
    Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world", 2016 (iterative).
    Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018 (PGD).
    Nguyen, Yosinski, Clune, "Deep neural networks are easily fooled", CVPR 2015 (fooling images).

Everything happens in **pixel space**: ``x`` holds pixels in [0, 1] and the model sees
``preprocessing.normalize(x)``, so the budget ``eps`` means the same on every model. With the
loss ``L`` (cross-entropy of the label for untargeted attacks, to be raised; of the target for
targeted ones, to be lowered; or the logit margin), one step is

* L-infinity: ``x <- clip_[0,1](clip_{|x - x0| <= eps}(x + a sign(g)))``
* L2: ``x <- clip_[0,1](P_{||x - x0|| <= eps}(x + a g / ||g||))``

with ``g = +-dL/dx``. FGSM is one step with ``a = eps`` from ``x0``; PGD starts at a seeded
random point in the ball and takes ``steps`` steps of ``a = 2.5 eps / steps`` (Madry et al.).
Clipping to [0, 1] after the ball projection never leaves the ball (each coordinate moves
towards ``x0``, which lies in the box). The budget is then enforced **exactly**: where the
float32 image differs from ``x0`` by more than ``eps`` (checked in float64), it is clipped in
float64 and rounded, then moved to the next float towards ``x0`` until it does not.

A fooling image is a targeted attack whose start is noise (or a photo) and whose budget may be
unbounded (``eps=inf``: only the pixel box constrains it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import state_guard
from convscope.core.image import ImageLike
from convscope.core.targets import TargetSpec, resolve_target
from convscope.core.validate import check_values, ints
from convscope.methods.synthesis._common import as_loaded, pixels_from, progress_bar
from convscope.methods.synthesis.results import AdversarialResult
from convscope.models import LoadedModel, Preprocessing
from convscope.models.forward import chunked_outputs

__all__ = ["attack", "enforce_budget", "fgsm", "fooling_image", "pgd"]

_NORMS = ("linf", "l2")


def _norm_name(norm: str | float) -> str:
    n = str(norm).lower().replace("-", "").replace("_", "")
    if n in ("linf", "inf", "infinity", "linfinity"):
        return "linf"
    if n in ("l2", "2", "2.0"):
        return "l2"
    raise InputError(f"unknown norm {norm!r}; use 'linf' or 'l2'")


def _bnorm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast over (B, C, H, W)."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if math.isinf(eps):
        return x.clamp(0, 1)
    d = x - x0
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        n = _bnorm(d)
        d = d * torch.where(n > eps, eps / n.clamp(min=1e-30), torch.ones_like(n))
    return (x0 + d).clamp(0, 1)


def enforce_budget(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x`` clipped to [0, 1] and nudged so that its distance to ``x0`` is at most ``eps``
    exactly (checked in float64 on the float32 values).

    Shape:
        x, x0: (B, C, H, W); returns the same.
    """
    x = x.clamp(0, 1)
    if math.isinf(eps):
        return x
    norm = _norm_name(norm)
    if norm == "linf":  # round the double-precision clip once, so one float step is enough below
        x0d = x0.double()
        x = x.double().clamp(x0d - eps, x0d + eps).float().clamp(0, 1)
    for _ in range(64):
        d = x.double() - x0.double()
        if norm == "linf":
            bad = d.abs() > eps
            if not bad.any():
                return x
            x = torch.where(bad, torch.nextafter(x, x0), x)
        else:
            n = d.flatten(1).norm(dim=1)
            bad = n > eps
            if not bad.any():
                return x
            shrink = (eps / n.clamp(min=1e-300) * (1 - 1e-6)).view(-1, *([1] * (x.ndim - 1)))
            x = torch.where(bad.view(-1, *([1] * (x.ndim - 1))),
                            (x0.double() + d * shrink).float(), x).clamp(0, 1)
    raise AssertionError("could not enforce the budget")  # pragma: no cover - converges in 1-2


def _loss(logits: torch.Tensor, cls: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss to *raise* for class ``cls`` being left (untargeted sign is applied outside)."""
    if kind == "ce":
        return F.cross_entropy(logits, cls, reduction="none")
    if kind == "margin":  # Carlini-Wagner style: best other logit minus the class logit
        own = logits.gather(1, cls.view(-1, 1)).squeeze(1)
        other = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        return other - own
    raise InputError(f"unknown loss {kind!r}; use 'ce' or 'margin'")


def _random_start(x0: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    if math.isinf(eps):
        return torch.rand(x0.shape, generator=gen)
    if norm == "linf":
        d = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
    else:  # uniform direction, radius ~ eps * U^(1/n): uniform in the ball
        g = torch.randn(x0.shape, generator=gen)
        n = x0[0].numel()
        r = torch.rand(x0.shape[0], generator=gen).pow(1.0 / n).view(-1, 1, 1, 1)
        d = g / _bnorm(g).clamp(min=1e-12) * r * eps
    return (x0 + d.to(x0.dtype)).clamp(0, 1)


def attack(
    model: str | nn.Module | LoadedModel,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    *,
    target: TargetSpec = None,
    labels: TargetSpec = None,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool | None = None,
    loss: str = "ce",
    start: torch.Tensor | None = None,
    method: str = "pgd",
    space: str = "model",
    preprocessing: Preprocessing | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool | None = None,
) -> AdversarialResult:
    """The general iterative attack; :func:`fgsm`, :func:`pgd` and :func:`fooling_image` call it.

    Args:
        model: a model spec, ``nn.Module`` or :class:`LoadedModel`. Not modified: its mode,
            ``requires_grad`` flags and parameters are restored; no hook is registered.
        images: paths / PIL images / arrays (read and resized by the model's preprocessing), or a
            (B, C, H, W) tensor by the one input rule (:mod:`convscope.models.inputs`): what ``model(x)``
            takes (``space="model"``, default) or pixels in [0, 1] (``space="pixels"``).
        target: ``None`` for an untargeted attack; else the class(es) to reach: an index, a name,
            one per sample, or ``"top2"``-style ranks of the original prediction.
        labels: classes an untargeted attack moves away from and that ``success`` is judged
            against (default: the model's prediction on the originals).
        eps: budget in pixel units (pixels in [0, 1]); ``float("inf")`` for none.
        norm: ``"linf"`` or ``"l2"`` (L2 over all pixels and channels of an image).
        steps: gradient steps (default 10; ``method="fgsm"``: 1, and only 1).
        step_size: pixel step ``a``; default ``eps`` for one step, else ``2.5 eps / steps``.
        random_start: start at a seeded uniform point in the ball (PGD) instead of the original
            (default: yes, except for ``method="fgsm"``).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (best other logit minus the class logit).
        start: (B, C, H, W) pixels to start from instead of the originals (fooling from noise).
        method: ``"fgsm"`` runs the single-step fast gradient sign method (step ``eps`` from the
            original, like :func:`fgsm`); any other name (``"pgd"``, ``"bim"``, ...) runs ``steps``
            steps and is recorded in the result.
        space: how to read a tensor ``images``: ``"model"`` (default) or ``"pixels"``.
        preprocessing: for a plain ``nn.Module`` (default ImageNet's).
        batch_size: images per forward/backward pass; results do not depend on it.
        seed: seeds the random start.
        progress: tqdm bar over steps (``None``: only on a terminal).

    Returns:
        An :class:`AdversarialResult`.

    Shape:
        images: (B, C, H, W); result tensors (B, C, H, W) and (B,).
    """
    norm = _norm_name(norm)
    eps = float(eps)
    if not eps > 0:  # inf is allowed: an unbounded attack
        raise InputError(f"eps must be positive (pixel units), got {eps}")
    if method == "fgsm":
        if steps not in (None, 1):
            raise InputError(f"method='fgsm' is a single step, got steps={steps}; "
                             "use method='pgd' (or 'bim') for an iterative attack")
        steps = 1
        random_start = bool(random_start)
    elif steps is None:
        steps = 10
    if random_start is None:
        random_start = True
    check_values(steps=(steps, ints(1)), batch_size=(batch_size, ints(1)))
    if loss not in ("ce", "margin"):
        raise InputError(f"unknown loss {loss!r}; use 'ce' or 'margin'")
    lm = as_loaded(model, preprocessing)
    pre = lm.preprocessing
    x0 = pixels_from(images, pre, space=space)
    b = x0.shape[0]
    if step_size is None:
        if math.isinf(eps):
            step_size = 2.0 / 255 if norm == "linf" else 0.5
        else:
            step_size = eps if steps == 1 else 2.5 * eps / steps
    net = lm.model
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(int(seed))
    if start is not None:
        s = start.detach().float()
        if s.shape != x0.shape:
            raise InputError(f"start has shape {tuple(s.shape)}, the images {tuple(x0.shape)}")
        x_init = _project(s.clone(), x0, eps, norm)
    elif random_start:
        x_init = _random_start(x0, eps, norm, gen)
    else:
        x_init = x0.clone()

    def logits_of(px: torch.Tensor) -> torch.Tensor:
        return net(pre.normalize(px.to(dev)))

    chunks = [slice(i, min(i + batch_size, b)) for i in range(0, b, batch_size)]
    with state_guard(net, [x0] + ([start] if start is not None else [])):
        logits0 = chunked_outputs(logits_of, x0, batch_size, lambda out: out.float().cpu())
        k = logits0.shape[1]
        names = lm.class_names if len(lm.class_names) == k else [f"class {i}" for i in range(k)]
        lab = resolve_target(labels, logits0, names).indices
        tgt = None if target is None else resolve_target(target, logits0, names).indices
        if lab is None or (target is not None and tgt is None):
            raise InputError("attacks need class targets (indices or names), not callables")
        cls = tgt if tgt is not None else lab
        sign = -1.0 if tgt is not None else 1.0
        x = x_init.clone()
        for _ in progress_bar(range(steps), total=steps, desc=method, progress=progress):
            grads = []
            for c in chunks:
                xc = x[c].to(dev).requires_grad_(True)
                lo = _loss(net(pre.normalize(xc)), cls[c].to(dev), loss)
                (g,) = torch.autograd.grad(sign * lo.sum(), xc)
                grads.append(g.detach().cpu().float())
            g = torch.cat(grads)
            if norm == "linf":
                x = x + step_size * g.sign()
            else:
                x = x + step_size * g / _bnorm(g).clamp(min=1e-12)
            x = _project(x, x0, eps, norm)
        x = enforce_budget(x, x0, eps, norm)
        logits1 = chunked_outputs(logits_of, x, batch_size, lambda out: out.float().cpu())
    pred = logits1.argmax(1)
    success = pred == tgt if tgt is not None else pred != lab
    options: dict[str, Any] = dict(eps=eps, norm=norm, steps=steps, step_size=step_size,
                                   random_start=random_start, loss=loss, seed=seed)
    return AdversarialResult(
        method=method, norm=norm, eps=eps, original=x0, adversarial=x.detach(),
        labels=lab.clone(), targets=None if tgt is None else tgt.clone(), predictions=pred,
        success=success, probs_original=logits0.softmax(1), probs_adversarial=logits1.softmax(1),
        class_names=tuple(names), options=options, model_name=lm.name,
        model_info=lm.info(default_layer_used=False),
    )


def fgsm(
    model: str | nn.Module | LoadedModel,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    target: TargetSpec = None,
    **kw: Any,
) -> AdversarialResult:
    """Fast gradient sign method: one step of size ``eps`` from the original (``norm="l2"``: the
    fast gradient method, one step of L2 length ``eps``). See :func:`attack` for the arguments."""
    kw.setdefault("method", "fgsm")
    return attack(model, images, eps=eps, norm=norm, target=target, steps=1, step_size=eps,
                  random_start=False, **kw)


def pgd(
    model: str | nn.Module | LoadedModel,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int = 20,
    target: TargetSpec = None,
    random_start: bool = True,
    **kw: Any,
) -> AdversarialResult:
    """Projected gradient descent (``random_start=False``: iterative FGSM / BIM).
    See :func:`attack` for the arguments."""
    kw.setdefault("method", "pgd")
    return attack(model, images, eps=eps, norm=norm, steps=steps, target=target,
                  random_start=random_start, **kw)


def fooling_image(
    model: str | nn.Module | LoadedModel,
    target: TargetSpec,
    *,
    image: ImageLike | torch.Tensor | None = None,
    n: int = 1,
    eps: float = float("inf"),
    norm: str = "linf",
    steps: int = 100,
    step_size: float | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    **kw: Any,
) -> AdversarialResult:
    """An image the model classifies as ``target``: from seeded uniform noise (``image=None``,
    ``n`` images) or from a photo (``image=``, e.g. within a small ``eps`` so it still looks the same).

    The result's ``original`` is the start (the noise or the photo); ``success`` means the
    model's class is ``target``.
    """
    lm = as_loaded(model, preprocessing)
    pre = lm.preprocessing
    space = kw.pop("space", "model")
    if image is None:
        gen = torch.Generator().manual_seed(int(seed))
        x0 = torch.rand(n, pre.channels, *pre.size, generator=gen)
    else:
        x0 = pixels_from(image, pre, space=space, what="image")
    return attack(lm, x0, target=target, eps=eps, norm=norm, steps=steps, step_size=step_size,
                  random_start=False, method="fooling", seed=seed, space="pixels", **kw)
