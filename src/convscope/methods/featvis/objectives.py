"""Objectives: what feature visualisation maximises, as values that combine with ``+ - *``.

An :class:`Objective` maps the :class:`~convscope.engines.optimize.Activations` of one forward pass to
one score per sample, shape (B,), and is **maximised**, everywhere. Objectives add, subtract,
negate and scale by numbers: ``channel("layer4", 12) - 1e-3 * total_variation()`` or
``0.5 * channel("features.10", 3) + neuron("features.10", 3)``. The combined objective reads
the union of its terms' layers, and reads the model output only if a term does (so the engine
can stop the forward pass early otherwise).

Per-sample targets: ``channel(layer, [3, 7, 9])`` asks sample 0 for channel 3, sample 1 for
channel 7 and sample 2 for channel 9 (one optimisation renders many channels); the same holds
for ``neuron``, ``class_logit`` and ``class_prob``. A single index applies to every sample.

The string ``"layer:channel"`` (``"features.10:7"``) is a shortcut for ``channel(layer, 7)``;
see :func:`as_objective`.

Objectives (Lucid ``optvis.objectives``; Olah et al., "Feature Visualization", Distill 2017):

* ``class_logit(c)``: the pre-softmax score S_c(I). Simonyan et al. (2014, "Deep Inside
  Convolutional Networks") maximise S_c(I) - lambda ||I||^2 and argue for the unnormalised score:
  the softmax P_c = exp(S_c) / sum_k exp(S_k) can be raised by *lowering the other classes*,
  so its optimum need not look like class c.
* ``class_prob(c)``: the softmax probability P_c, for the contrast (it saturates at 1 and its
  gradient vanishes once the class wins; images tend to be less about c than about not-others).
* ``channel(layer, c)``: mean activation of channel c over all positions.
* ``neuron(layer, c, x, y)``: activation of channel c at one position (default: the centre).
* ``deepdream(layer)``: mean squared activation of the whole layer (Mordvintsev et al. 2015).
* ``direction(layer, vec)``: mean over positions of the dot product of the activation vector
  with ``vec`` (a direction in activation space, Lucid's ``direction``).
* ``diversity(layer)``: minus the mean cosine similarity between a sample's Gram matrix at
  ``layer`` and the other samples' (Lucid's diversity term), so a batch spreads out; it needs
  B >= 2 and is meant to be added to another objective with a weight.
* ``total_variation()``, ``l2()``: image measures, to be *subtracted* as regularisers.

Layouts: a 4-D output is (B, C, H, W), except where its spatial dimensions sit at positions 1
and 2 (Swin's (B, H, W, C)); a 3-D output is a token sequence (B, N, D) with channels last
(ViT); a 2-D output is (B, D). Pass ``layout="nchw" | "nhwc" | "nlc"`` to override.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from convscope.core.errors import InputError
from convscope.engines.optimize import Activations
from convscope.engines.optimize import total_variation as tv_of

__all__ = [
    "Objective",
    "as_objective",
    "channel",
    "class_logit",
    "class_prob",
    "deepdream",
    "direction",
    "diversity",
    "feature_map",
    "l2",
    "neuron",
    "total_variation",
]

Index = int | Sequence[int]


class Objective:
    """A maximised score of the activations, one value per sample.

    Args:
        func: ``func(acts) -> (B,)`` scores (a scalar is spread evenly over the batch).
        layers: the layers ``func`` reads.
        needs_output: whether ``func`` reads ``acts.output``.
        name: a readable description.
        batch: the batch size this objective asks for (per-sample targets), or ``None``.
    """

    def __init__(
        self,
        func: Callable[[Activations], torch.Tensor],
        *,
        layers: Sequence[str] = (),
        needs_output: bool = False,
        name: str = "objective",
        batch: int | None = None,
    ) -> None:
        self.func = func
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))
        self.needs_output = bool(needs_output)
        self.name = name
        self.batch = batch

    def __call__(self, acts: Activations) -> torch.Tensor:
        v = self.func(acts)
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v, dtype=acts.images.dtype, device=acts.images.device)
        if v.ndim == 0:
            v = v.expand(acts.batch_size) / acts.batch_size
        return v

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # --- algebra ------------------------------------------------------------------------------
    @staticmethod
    def _combine(a: Objective, b: Objective, op: Callable[[Any, Any], Any], sym: str) -> Objective:
        ba, bb = a.batch, b.batch
        if ba is not None and bb is not None and ba != bb:
            raise InputError(f"cannot combine objectives for batches of {ba} and {bb}")
        return Objective(
            lambda acts: op(a(acts), b(acts)),
            layers=a.layers + b.layers,
            needs_output=a.needs_output or b.needs_output,
            name=f"({a.name} {sym} {b.name})",
            batch=ba if ba is not None else bb,
        )

    def _scale(self, k: float, name: str) -> Objective:
        return Objective(lambda acts: k * self(acts), layers=self.layers,
                         needs_output=self.needs_output, name=name, batch=self.batch)

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real):
            k = float(other)
            return Objective(lambda acts: self(acts) + k, layers=self.layers,
                             needs_output=self.needs_output, name=f"({self.name} + {k:g})",
                             batch=self.batch)
        return Objective._combine(self, as_objective(other), lambda x, y: x + y, "+")

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real) and other == 0:  # sum([...]) starts at 0
            return self
        return self.__add__(other)

    def __neg__(self) -> Objective:
        return self._scale(-1.0, f"-{self.name}")

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real):
            return self + (-float(other))
        return Objective._combine(self, as_objective(other), lambda x, y: x - y, "-")

    def __rsub__(self, other: Any) -> Objective:
        return (-self) + other

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real):
            return self._scale(float(other), f"{float(other):g} * {self.name}")
        return Objective._combine(self, as_objective(other), lambda x, y: x * y, "*")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, numbers.Real):
            return self._scale(1.0 / float(other), f"{self.name} / {float(other):g}")
        return NotImplemented


def as_objective(spec: Objective | str | Callable[[Activations], torch.Tensor]) -> Objective:
    """An :class:`Objective` from an objective, a ``"layer:channel"`` string or a callable.

    A plain callable is assumed to read the model output and no layer.
    """
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        layer, sep, ch = spec.rpartition(":")
        if not sep or not layer or not ch.strip().lstrip("-").isdigit():
            raise InputError(
                f"cannot read {spec!r} as an objective; use 'layer:channel' such as 'features.10:7'"
            )
        return channel(layer.strip(), int(ch))
    if callable(spec):
        return Objective(spec, needs_output=True, name=getattr(spec, "__name__", "callable"))
    raise InputError(f"cannot use a {type(spec).__name__} as an objective")


# --- helpers ----------------------------------------------------------------------------------
def _index(c: Index, what: str) -> tuple[torch.Tensor | int, int | None]:
    if isinstance(c, bool):
        raise InputError(f"{what} must be an int or a sequence of ints, got {c!r}")
    if isinstance(c, numbers.Integral):
        return int(c), None
    if isinstance(c, torch.Tensor):
        c = c.tolist()
    try:
        items = [int(i) for i in c]  # type: ignore[union-attr]
    except TypeError:
        raise InputError(f"{what} must be an int or a sequence of ints, got {c!r}") from None
    if not items:
        raise InputError(f"{what}: empty sequence")
    return torch.tensor(items, dtype=torch.long), len(items)


def _name_index(c: Index) -> str:
    if isinstance(c, numbers.Integral):
        return str(int(c))
    return "[" + ",".join(str(int(i)) for i in c) + "]"  # type: ignore[union-attr]


def _layout_of(t: torch.Tensor, layout: str | None, in_hw: tuple[int, int]) -> str:
    if layout is not None:
        if layout not in ("nchw", "nhwc", "nlc", "nc"):
            raise InputError(f"unknown layout {layout!r}; use nchw, nhwc, nlc or nc")
        return layout
    if t.ndim == 2:
        return "nc"
    if t.ndim == 3:
        return "nlc"
    if t.ndim != 4:
        raise InputError(f"cannot read a {t.ndim}-D layer output as a feature map")
    h, w = in_hw

    def spatial(a: int, b: int) -> bool:  # (a, b) looks like a down-scaled (h, w) grid
        return a >= 1 and b >= 1 and abs(a * w - b * h) <= max(h, w) and a <= h and b <= w

    s1, s2, s3 = int(t.shape[1]), int(t.shape[2]), int(t.shape[3])
    if spatial(s1, s2) and not spatial(s2, s3):
        return "nhwc"
    return "nchw"


def feature_map(acts: Activations, layer: str, layout: str | None = None) -> torch.Tensor:
    """The output of ``layer`` as (B, C, N): channels first, positions flattened.

    Shape:
        returns (B, C, N); N = H * W for maps, the number of tokens for sequences, 1 for vectors.
    """
    t = acts[layer]
    lay = _layout_of(t, layout, (int(acts.inputs.shape[-2]), int(acts.inputs.shape[-1])))
    if lay == "nc":
        return t.reshape(t.shape[0], -1, 1)
    if lay == "nlc":
        return t.transpose(1, 2)
    if lay == "nhwc":
        return t.permute(0, 3, 1, 2).flatten(2)
    return t.flatten(2)


def _spatial(acts: Activations, layer: str, layout: str | None) -> torch.Tensor:
    """The output of ``layer`` as (B, C, H, W) (token sequences as a square grid if possible)."""
    t = acts[layer]
    lay = _layout_of(t, layout, (int(acts.inputs.shape[-2]), int(acts.inputs.shape[-1])))
    if lay == "nchw":
        return t
    if lay == "nhwc":
        return t.permute(0, 3, 1, 2)
    if lay == "nc":
        return t.reshape(t.shape[0], -1, 1, 1)
    n = t.shape[1]
    side = math.isqrt(n)
    if side * side == n:
        return t.transpose(1, 2).reshape(t.shape[0], -1, side, side)
    side = math.isqrt(n - 1)
    if side * side == n - 1:  # a class token first (ViT)
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, side, side)
    return t.transpose(1, 2).unsqueeze(-1)


def _pick(values: torch.Tensor, idx: torch.Tensor | int, what: str) -> torch.Tensor:
    """values (B, K) -> (B,) entry idx (per sample or shared)."""
    k = values.shape[1]
    if isinstance(idx, int):
        if not -k <= idx < k:
            raise InputError(f"{what} {idx} out of range for {k}")
        return values[:, idx]
    if idx.numel() != values.shape[0]:
        raise InputError(
            f"{what}: {idx.numel()} per-sample indices for a batch of {values.shape[0]}; pass one per "
            "sample"
        )
    if int(idx.max()) >= k or int(idx.min()) < -k:
        raise InputError(f"{what} {idx.tolist()} out of range for {k}")
    return values.gather(1, (idx % k).to(values.device).view(-1, 1)).squeeze(1)


# --- objectives -------------------------------------------------------------------------------
def class_logit(c: Index) -> Objective:
    """The pre-softmax score of class ``c`` (Simonyan et al. 2014); per-sample with a list."""
    idx, b = _index(c, "class")
    return Objective(lambda acts: _pick(acts.output.flatten(1), idx, "class"), needs_output=True,
                     name=f"class_logit({_name_index(c)})", batch=b)


def class_prob(c: Index) -> Objective:
    """The softmax probability of class ``c``; see the module docstring for why the logit is usually
    the better target."""
    idx, b = _index(c, "class")
    return Objective(lambda acts: _pick(torch.softmax(acts.output.flatten(1), 1), idx, "class"),
                     needs_output=True, name=f"class_prob({_name_index(c)})", batch=b)


def channel(layer: str, c: Index, *, layout: str | None = None) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` over all positions."""
    idx, b = _index(c, "channel")
    return Objective(lambda acts: _pick(feature_map(acts, layer, layout).mean(2), idx, "channel"),
                     layers=[layer], name=f"channel({layer}:{_name_index(c)})", batch=b)


def neuron(
    layer: str, c: Index, x: int | None = None, y: int | None = None, *, layout: str | None = None
) -> Objective:
    """Activation of channel ``c`` at column ``x``, row ``y`` of ``layer`` (default: the centre)."""
    idx, b = _index(c, "channel")

    def f(acts: Activations) -> torch.Tensor:
        t = _spatial(acts, layer, layout)
        h, w = t.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise InputError(f"neuron position (x={xx}, y={yy}) outside the {h}x{w} map of {layer}")
        return _pick(t[:, :, yy, xx], idx, "channel")

    pos = "centre" if x is None and y is None else f"x={x},y={y}"
    return Objective(f, layers=[layer], name=f"neuron({layer}:{_name_index(c)} @ {pos})", batch=b)


def deepdream(layer: str) -> Objective:
    """Mean squared activation of the whole ``layer`` (DeepDream's L2 objective)."""
    return Objective(lambda acts: acts[layer].flatten(1).pow(2).mean(1), layers=[layer],
                     name=f"deepdream({layer})")


def direction(layer: str, vec: torch.Tensor | Sequence[float], *, layout: str | None = None) -> Objective:
    """Mean over positions of ``<a(x, y), vec>``: how far the activations point along ``vec``.

    Shape:
        vec: (C,) for the layer's C channels, or (B, C) for one direction per sample.
    """
    v = torch.as_tensor(vec, dtype=torch.float32)
    if v.ndim not in (1, 2):
        raise InputError(f"direction vector must be (C,) or (B, C), got {tuple(v.shape)}")
    b = int(v.shape[0]) if v.ndim == 2 else None

    def f(acts: Activations) -> torch.Tensor:
        fm = feature_map(acts, layer, layout)
        vv = v.to(fm.device, fm.dtype)
        if vv.shape[-1] != fm.shape[1]:
            raise InputError(
                f"direction has {vv.shape[-1]} entries, layer {layer} has {fm.shape[1]} channels"
            )
        if vv.ndim == 1:
            vv = vv.expand(fm.shape[0], -1)
        return torch.einsum("bcn,bc->b", fm, vv) / fm.shape[2]

    return Objective(f, layers=[layer], name=f"direction({layer})", batch=b)


def diversity(layer: str, *, layout: str | None = None) -> Objective:
    """Minus each sample's mean cosine similarity of Gram matrices to the other samples.

    Sample i scores ``-mean_{j != i} cos(G_i, G_j)`` with ``G = F F^T / N`` for the (C, N) feature
    map ``F`` (Lucid's diversity term, spread per sample). Maximising it pushes the batch apart.
    """

    def f(acts: Activations) -> torch.Tensor:
        fm = feature_map(acts, layer, layout)
        bsz = fm.shape[0]
        if bsz < 2:
            raise InputError("diversity needs a batch of at least 2 images")
        g = torch.bmm(fm, fm.transpose(1, 2)).flatten(1) / fm.shape[2]
        g = torch.nn.functional.normalize(g, dim=1)
        sim = g @ g.t()
        off = sim.sum(1) - sim.diagonal()
        return -off / (bsz - 1)

    return Objective(f, layers=[layer], name=f"diversity({layer})")


def total_variation() -> Objective:
    """Mean absolute difference between neighbouring pixels of the image (subtract it to smooth):
    the anisotropic variant of :func:`convscope.engines.optimize.total_variation`."""
    return Objective(lambda acts: tv_of(acts.images, isotropic=False), name="total_variation")


def l2(center: float | Sequence[float] = 0.5) -> Objective:
    """Mean squared distance of the pixels from ``center`` (subtract it to keep the image plain).

    ``center`` is a value or one per channel; Simonyan et al. penalise the mean-subtracted image,
    i.e. ``center`` = the data set's mean pixel (:func:`~convscope.methods.featvis.visualize` does that).
    """
    c = torch.as_tensor(center, dtype=torch.float32).reshape(-1, 1, 1)

    def f(acts: Activations) -> torch.Tensor:
        x = acts.images
        cc = c.to(x.device, x.dtype)
        return (x - cc).pow(2).flatten(1).mean(1)

    return Objective(f, name="l2")
