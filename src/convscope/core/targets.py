"""Targets: which output score an explanation explains.

A target is the predicted class (``None``, the default), a class index, a class name, a
sequence with one of those per sample, ``"top-k"`` / ``("top", k)`` for the k-th most likely class,
a contrast, or a callable ``f(output) -> scores`` of shape (B,) on the model output.

A **contrast** (:func:`contrast`, or the string ``"a-vs-b"``: ``"wolf-vs-husky"``, ``"3-vs-8"``,
``"pred-vs-top2"``) explains the difference of two class scores, ``logit[a] - logit[b]``: why
``a`` rather than ``b``. Each side is one class spec (an index, a name, ``"pred"`` or ``None`` for
the predicted class, ``"top2"`` for the runner-up), resolved once per image on the clean input's
logits, so perturbed or interpolated inputs keep the same two classes. Every method that reads a
target score (gradients, CAMs, perturbations, integrated gradients, SmoothGrad) explains the
difference; methods with signed maps show evidence for ``a`` positive and for ``b`` negative.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from convscope.core.errors import TargetError

__all__ = ["Contrast", "ResolvedTarget", "TargetSpec", "class_index", "contrast", "is_contrast",
           "check_topk", "parse_target", "resolve_target", "select_scores", "target_scores",
           "top_classes"]

#: A target: ``None`` (the predicted class), a class index or name, one per image (a sequence or
#: a 1-D integer tensor), or a callable ``f(outputs) -> (B,) scores``.
TargetSpec = Union[
    None, int, str, Sequence[int | str], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]
]

_TOPK = re.compile(r"^top-?(\d+)$")
_VS = re.compile(r"^(.+?)-vs-(.+)$")
_PRED = ("pred", "predicted")


@dataclass(frozen=True)
class Contrast:
    """Explain ``score[positive] - score[negative]``: why ``positive`` rather than ``negative``.

    Each side is one class: an index, a name, ``None`` / ``"pred"`` (the predicted class) or
    ``"top2"`` (the runner-up).
    """

    positive: Any
    negative: Any

    def __str__(self) -> str:
        def side(v: Any) -> str:
            return "pred" if v is None else str(v)

        return f"{side(self.positive)}-vs-{side(self.negative)}"


def contrast(a: Any, b: Any) -> Contrast:
    """The target "why ``a`` rather than ``b``": the difference of the two class scores.

    Args:
        a, b: one class each: an index, a class name, ``None`` or ``"pred"`` (the predicted
            class), ``"top2"`` (the runner-up).
    """
    for side in (a, b):
        if isinstance(side, bool) or not (side is None or isinstance(side, (int, str))):
            raise TargetError(f"each side of a contrast is one class (an index or a name), got {side!r}")
    return Contrast(a, b)


def is_contrast(target: Any, class_names: Sequence[str] | None = None) -> bool:
    """Whether ``target`` is a contrast (a :class:`Contrast` or an ``"a-vs-b"`` string that is
    not itself a class name)."""
    if isinstance(target, Contrast):
        return True
    return (isinstance(target, str) and _VS.match(target.strip()) is not None
            and not (class_names and target.strip() in class_names))


@dataclass(frozen=True)
class ResolvedTarget:
    """Per-sample class indices, or a callable, for a batch of B outputs.

    Attributes:
        indices: (B,) long tensor of class indices, or ``None`` for a callable target.
        func: the callable, or ``None``.
    """

    indices: torch.Tensor | None
    func: Callable[[torch.Tensor], torch.Tensor] | None = None
    negative: torch.Tensor | None = None  # (B,) the class subtracted, for a contrast

    def labels(self) -> list[int | None]:
        """Class index per sample (``None`` for callable targets); the positive side of a contrast."""
        if self.indices is None:
            return []
        return [int(i) for i in self.indices.tolist()]

    def take(self, rows: Any) -> ResolvedTarget:
        """The targets of ``rows`` (a slice or an index tensor) of the batch."""
        if self.indices is None:
            return self
        return ResolvedTarget(self.indices[rows], None,
                              None if self.negative is None else self.negative[rows])


def parse_target(value: str | None) -> Any:
    """A target typed as text (a CLI flag, a form field): ``None`` or blank -> ``None`` (the
    predicted class), digits -> an index, anything else (a class name, ``"top2"``, ``"a-vs-b"``)
    as it is, for :func:`resolve_target`."""
    if value is None or str(value).strip() == "":
        return None
    v = str(value).strip()
    return int(v) if re.fullmatch(r"-?[0-9]+", v) else v


def top_classes(
    probs: Sequence[float] | torch.Tensor, names: Sequence[str], k: int = 3
) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes as (index, name, probability), most probable first (ties in
    index order); a class without a name is ``"class i"``."""
    p = torch.as_tensor(probs, dtype=torch.float64).flatten()
    order = torch.argsort(p, descending=True, stable=True)[: max(1, int(k))].tolist()
    return [(i, str(names[i]) if i < len(names) else f"class {i}", float(p[i])) for i in order]


def check_topk(k: Any, n_classes: int, limit: int | None = None, default: int | None = None) -> int:
    """``k`` if it counts classes that exist: the one rule for every top-k (a ``"top3"`` target,
    ``explain_classes(topk=)``, the report's and the web app's class lists); never clamped.

    Args:
        k: the requested count (or rank); ``None``: ``default``, at most ``n_classes`` (an unstated
            count fits a model with few classes).
        n_classes: the model's number of classes.
        limit: a lower cap of the caller's (e.g. panels a view shows), or ``None``.
        default: the count when ``k`` is ``None``.

    Raises:
        TargetError: ``k`` is not a positive integer, or exceeds the classes (or ``limit``).
    """
    if k is None and default is not None:
        return min(default, n_classes)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TargetError(f"top-k needs a positive whole number of classes, got {k!r}")
    if k > n_classes:
        raise TargetError(f"top-{k} is out of range for a model with {n_classes} classes; give at most "
                          f"{n_classes}")
    if limit is not None and k > limit:
        raise TargetError(f"top-{k} asks for more classes than shown here ({limit} at most)")
    return k


def class_index(spec: Any, class_names: Sequence[str] | None, n_classes: int) -> int:
    """One class as an index: an int, a digit string or a class name (exact, else ignoring case).

    Raises:
        TargetError: an unknown name (with close matches), another type, or an index out of range.
    """
    if isinstance(spec, bool):
        raise TargetError(f"target must be a class index or name, got {spec!r}")
    if isinstance(spec, (int,)) or (isinstance(spec, torch.Tensor) and spec.ndim == 0):
        idx = int(spec)
    elif isinstance(spec, str):
        s = spec.strip()
        if s.lstrip("-").isdigit():
            idx = int(s)
        elif class_names is not None and s in class_names:
            idx = list(class_names).index(s)
        else:
            lowered = [c.lower() for c in class_names] if class_names else []
            if s.lower() in lowered:
                idx = lowered.index(s.lower())
            else:
                import difflib

                close = difflib.get_close_matches(s, list(class_names or []), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise TargetError(
                    f"unknown class name {s!r}{hint} (pass a class index or one of the model's "
                    "class names)"
                )
    else:
        raise TargetError(f"cannot use {type(spec).__name__} as a target; pass an int or a name")
    if not 0 <= idx < n_classes:
        raise TargetError(f"class index {idx} out of range for a model with {n_classes} outputs")
    return idx


def resolve_target(
    target: TargetSpec,
    output: torch.Tensor,
    class_names: Sequence[str] | None = None,
) -> ResolvedTarget:
    """Turn a target spec into per-sample class indices for model ``output``.

    Shape:
        output: (B, K) logits.
    """
    if output.ndim != 2:
        raise TargetError(
            f"the model output has shape {tuple(output.shape)}; class targets need (batch, classes)"
            " - pass a callable target for other outputs"
        )
    b, k = output.shape
    if isinstance(target, ResolvedTarget):  # already resolved (on the clean images)
        n = b if target.indices is None else len(target.indices)
        if n != b:
            raise TargetError(f"got {n} resolved targets for a batch of {b}")
        return target
    if is_contrast(target, class_names):
        return _resolve_contrast(target, output, class_names)
    if callable(target) and not isinstance(target, (str, torch.Tensor)):
        return ResolvedTarget(indices=None, func=target)
    if target is None:
        return ResolvedTarget(indices=output.argmax(1).detach().cpu())
    if isinstance(target, str):
        m = _TOPK.match(target.strip().lower())
        if m:
            rank = check_topk(int(m.group(1)), k)
            return ResolvedTarget(indices=output.topk(rank, dim=1).indices[:, rank - 1].cpu())
    if isinstance(target, tuple) and len(target) == 2 and target[0] == "top":
        return resolve_target(f"top{int(target[1])}", output, class_names)
    if isinstance(target, torch.Tensor) and target.ndim == 1:
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != b:
            raise TargetError(f"got {len(target)} targets for a batch of {b}; pass one per sample")
        idx = [class_index(t, class_names, k) for t in target]
        return ResolvedTarget(indices=torch.tensor(idx, dtype=torch.long))
    one = class_index(target, class_names, k)
    return ResolvedTarget(indices=torch.full((b,), one, dtype=torch.long))


def _resolve_contrast(target: Any, output: torch.Tensor, class_names: Sequence[str] | None) -> ResolvedTarget:
    if isinstance(target, Contrast):
        sides = (target.positive, target.negative)
    else:
        m = _VS.match(target.strip())
        assert m is not None
        sides = (m.group(1).strip(), m.group(2).strip())
    idx = []
    for side in sides:
        if isinstance(side, str) and side.lower() in _PRED:
            side = None
        if isinstance(side, (list, tuple, torch.Tensor)) or is_contrast(side, class_names):
            raise TargetError(f"each side of a contrast is one class, got {side!r}")
        idx.append(resolve_target(side, output, class_names).indices)
    pos, neg = idx
    assert pos is not None and neg is not None
    if bool((pos == neg).any()):
        raise TargetError(f"the contrast {target} compares a class with itself on some images; "
                          "pick two different classes (e.g. pred-vs-top2)")
    return ResolvedTarget(indices=pos, negative=neg)


def select_scores(output: torch.Tensor, target: ResolvedTarget) -> torch.Tensor:
    """The score of each sample's target.

    Shape:
        output: (B, K); returns (B,).
    """
    if target.func is not None:
        return target_scores(target.func, output)
    assert target.indices is not None
    score = output.gather(1, target.indices.to(output.device).view(-1, 1)).squeeze(1)
    if target.negative is not None:
        score = score - output.gather(1, target.negative.to(output.device).view(-1, 1)).squeeze(1)
    return score


def target_scores(func: Callable[[torch.Tensor], torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """The scores a callable target gives ``output``, checked: the one check of callable targets,
    used by every method (gradients, CAMs, every perturbation chunk).

    Shape:
        output: (n, ...) model outputs of n inputs; returns (n,).

    Raises:
        TargetError: the callable returned something other than a tensor of shape (n,) (e.g. one
            scalar for the whole batch), or non-finite scores (nan or inf), which would turn every
            map into nan.
    """
    scores = func(output)
    n = output.shape[0]
    if not isinstance(scores, torch.Tensor) or scores.shape != (n,):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TargetError(
            f"a callable target must return one score per sample, a tensor of shape ({n},); it "
            f"returned {got} (e.g. use o[:, 3], not o[:, 3].sum())"
        )
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):
        raise TargetError(
            f"the callable target returned {int(bad.sum())} non-finite score(s) (nan or inf) for "
            f"{n} input(s); return finite scores (e.g. log_softmax instead of log(softmax), guard "
            "divisions)"
        )
    return scores
