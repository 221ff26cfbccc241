"""SmoothGrad, SmoothGrad-squared and VarGrad: a higher-order function around any gradient method.

``smooth(method, n=25, sigma=0.15, kind="mean")`` returns a method that runs ``method`` on ``n``
noisy copies ``x + eps_k`` of each image, ``eps_k ~ N(0, (sigma * (max x - min x))^2)``, and
aggregates the base method's raw attribution ``R`` (its signed per-channel gradient; its map where
it has no raw output) over the copies:

* ``kind="mean"``, SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise",
  2017): ``R_bar = 1/n sum_k R(x + eps_k)``;
* ``kind="squared"``, SmoothGrad-squared (Hooker et al., "A Benchmark for Interpretability Methods
  in Deep Neural Networks", 2019): ``1/n sum_k R(x + eps_k)^2``;
* ``kind="var"``, VarGrad (Adebayo et al., "Local Explanation Methods for Deep Neural Networks
  Lack Sensitivity to Parameter Values", 2018): ``1/n sum_k (R(x + eps_k) - R_bar)^2``.

The map is ``max_c |.|`` of the aggregate over colour channels (for ``kind="mean"`` around a
signed base called from Python, the channel sum, kept signed); ``raw`` holds the per-channel
aggregate.

Noise: one seeded (n, C, H, W) standard-normal draw is shared by every image of the batch and
scaled by each image's range, so a result does not depend on the batch an image sits in or on any
batch size. Targets are resolved once on the clean images (``None`` means the clean prediction).
Copies are evaluated in chunks of ``batch_size`` (registered methods: ``sample_batch_size``)
copies through the base method; the running sums are float64, so memory is set by the chunk
size, not by ``n``.

Registered: ``smoothgrad``, ``smoothgrad_sq``, ``vargrad`` (base ``saliency``'s signed gradient
by default; ``base=`` any registered gradient method, ``base_options=`` its options).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from convscope.core.errors import MethodError
from convscope.core.validate import ints, reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._sampling import row_chunks, rows_target
from convscope.methods.attribution._shared import clean_outputs
from convscope.methods.registry import CueClaim, get_method, register

__all__ = ["KINDS", "noise_directions", "smooth", "smooth_aggregate"]

KINDS = ("mean", "squared", "var")


def noise_directions(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The (n, *shape) standard-normal draws used by :func:`smooth` for ``seed`` (CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g)


def _resolve_base(method: str | Callable[..., MethodOutput]) -> tuple[Callable[..., MethodOutput], bool, str]:
    if isinstance(method, str):
        info = get_method(method)
        if not info.needs_gradients or info.family not in ("gradient",):
            raise MethodError(
                f"smooth() wraps gradient methods; {method!r} is a {info.family} method"
            )
        return info.func, info.signed, method
    if not callable(method):
        raise MethodError(f"smooth() needs a method name or function, got {type(method).__name__}")
    return method, bool(getattr(method, "signed", False)), getattr(method, "__name__", "method")


def smooth_aggregate(
    ctx: MethodContext,
    base: str | Callable[..., MethodOutput],
    *,
    n: int,
    sigma: float,
    kind: str,
    batch_size: int | None,
    seed: int | None,
    signed_map: bool,
    base_options: dict[str, Any] | None,
) -> MethodOutput:
    """Run ``base`` on noisy copies of ``ctx.x`` and aggregate (see the module docstring): the one
    engine of :func:`smooth` and the registered methods, whose options (and defaults) it takes.

    Args:
        ctx: the method context.
        base: a registered gradient method name or a method function.
        n: number of noisy copies per image.
        sigma: noise standard deviation as a fraction of each image's value range.
        kind: ``"mean"`` (SmoothGrad), ``"squared"`` (SmoothGrad-squared) or ``"var"`` (VarGrad).
        batch_size: copies per call of the base method (default ``ctx.batch_size``).
        seed: noise seed (default ``ctx.seed``).
        signed_map: for ``kind="mean"``, sum the mean over channels and keep the sign instead of
            ``max_c |.|``.
        base_options: keyword options of the base method.

    Shape:
        map (B, H, W); raw (B, C, H, W) aggregate.
    """
    if kind not in KINDS:
        raise MethodError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if int(n) < 1 or int(n) != n:
        raise MethodError(f"n (number of noisy samples) must be a positive integer, got {n!r}")
    if not sigma >= 0:
        raise MethodError(f"sigma must be >= 0, got {sigma!r}")
    func, _, _ = _resolve_base(base)
    n = int(n)
    x = ctx.x
    b = x.shape[0]
    chunk = int(batch_size or ctx.batch_size)
    logits = clean_outputs(ctx.model, ctx.x, ctx.batch_size)  # type: ignore[arg-type]
    resolved = ctx.resolve(logits)
    labels: list[int | None] = resolved.labels() or [None] * b
    eps = noise_directions(n, tuple(x.shape[1:]), ctx.seed if seed is None else int(seed))
    eps = eps.to(device=x.device, dtype=x.dtype)
    scale = sigma * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    for img, k in row_chunks(b, n, chunk):
        img_d = img.to(x.device)
        xs = x[img_d] + scale[img_d].view(-1, *([1] * (x.ndim - 1))) * eps[k.to(x.device)]
        rt = rows_target(resolved, img)
        sub = MethodContext(
            model=ctx.model,
            x=xs,
            target=rt.func if rt.func is not None else rt,
            layer=ctx.layer,
            class_names=ctx.class_names,
            batch_size=xs.shape[0],
            seed=ctx.seed,
            predict=ctx.predict,
        )
        out = func(sub, **(base_options or {}))
        r = out.raw if out.raw is not None else out.map.unsqueeze(1)
        r = r.detach().double()
        if s1 is None:
            s1 = torch.zeros((b, *r.shape[1:]), dtype=torch.float64, device=r.device)
            s2 = torch.zeros_like(s1)
        s1.index_add_(0, img_d, r)
        if kind != "mean":
            assert s2 is not None
            s2.index_add_(0, img_d, r * r)
    assert s1 is not None and s2 is not None
    mean = s1 / n
    if kind == "mean":
        agg = mean
    elif kind == "squared":
        agg = s2 / n
    else:
        agg = (s2 / n - mean * mean).clamp(min=0)
    agg = agg.to(x.dtype)
    if kind == "mean" and signed_map:
        amap = agg.sum(1)
    else:
        amap = agg.abs().amax(1)
    return MethodOutput(
        map=amap,
        targets=labels,
        raw=agg,
        logits=logits,
        diagnostics={"n": n, "sigma": float(sigma), "kind": kind},
    )


def smooth(
    method: str | Callable[..., MethodOutput],
    n: int = 25,
    sigma: float = 0.15,
    kind: str = "mean",
    batch_size: int | None = None,
    seed: int | None = None,
) -> Callable[..., MethodOutput]:
    """Wrap a gradient method into SmoothGrad / SmoothGrad-squared / VarGrad.

    Args:
        method: a registered gradient method name (``"saliency"``, ``"guided_backprop"``, ...) or a
            method function ``f(ctx, **options) -> MethodOutput``.
        n: noisy copies per image.
        sigma: noise standard deviation as a fraction of each image's value range.
        kind: ``"mean"``, ``"squared"`` or ``"var"``.
        batch_size: copies evaluated per call of the base method (default: the context's).
        seed: noise seed (default: the context's seed, i.e. ``explain(seed=...)``).

    Returns:
        A method function ``f(ctx, **base_options) -> MethodOutput``; its attribute ``signed``
        tells whether its map is signed (``kind="mean"`` around a signed base).

    Example:
        >>> sg = smooth("guided_backprop", n=16, sigma=0.1)
        >>> out = sg(ctx)
    """
    if kind not in KINDS:
        raise MethodError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    _, base_signed, base_name = _resolve_base(method)
    signed = kind == "mean" and base_signed

    def smoothed(ctx: MethodContext, **base_options: Any) -> MethodOutput:
        return smooth_aggregate(ctx, method, n=n, sigma=sigma, kind=kind, batch_size=batch_size,
                                seed=seed, signed_map=signed, base_options=base_options)

    smoothed.signed = signed  # type: ignore[attr-defined]
    smoothed.__name__ = f"smooth_{kind}_{base_name}"
    smoothed.__doc__ = f"{kind} of {base_name} over {n} noisy copies (sigma={sigma})."
    return smoothed


def _registered(kind: str) -> Callable[..., MethodOutput]:
    def method(
        ctx: MethodContext,
        n: int = 25,
        sigma: float = 0.15,
        base: str = "saliency",
        sample_batch_size: int | None = None,
        base_options: dict[str, Any] | None = None,
    ) -> MethodOutput:
        if base in _SMOOTH_NAMES:
            raise MethodError(f"base must be a plain gradient method, not {base!r}")
        return smooth_aggregate(ctx, base, n=n, sigma=sigma, kind=kind, batch_size=sample_batch_size,
                                seed=None, signed_map=False, base_options=base_options)

    method.__doc__ = f"""{kind} of a gradient method over noisy copies (see :mod:`smooth`).

    Args:
        n: noisy copies per image.
        sigma: noise standard deviation as a fraction of each image's value range.
        base: registered gradient method whose raw gradient is aggregated.
        sample_batch_size: noisy copies per pass (default: ``batch_size``).
        base_options: options of the base method (e.g. ``{{"nonrelu": "gradient"}}``).

    Shape:
        map (B, H, W) = max over C of |aggregate|; raw (B, C, H, W) aggregate.
    """
    return method


_SMOOTH_NAMES = ("smoothgrad", "smoothgrad_sq", "vargrad")
_OPTS = {"n": 25, "sigma": 0.15, "base": "saliency", "sample_batch_size": None}
_FAST = {"n": 4}
_RANGES = {"n": ints(1, 1_000_000), "sigma": reals(0), "sample_batch_size": ints(1)}


def _register(name: str, kind: str, *, caveats: str, claim: dict[str, Any],
              **meta: Any) -> Callable[..., MethodOutput]:
    """Register ``name``: the ``kind`` aggregate over noisy copies, with the shared options, the
    shared caveat (its cost) before its own ``caveats``, and its planted-cue claim ``claim``
    (:class:`CueClaim` fields) on the first 60 cue digits."""
    return register(name, family="gradient", options=_OPTS, fast_options=_FAST, ranges=_RANGES,
                    caveats=f"costs n gradient passes; {caveats}", claims=(CueClaim(n=60, **claim),),
                    **meta)(_registered(kind))


smoothgrad = _register(
    "smoothgrad", "mean",
    summary="saliency averaged over noisy copies of the image: |mean gradient|, max over colour "
    "channels; less speckle than the plain gradient",
    caveats="the noise level sigma changes the picture; still a sensitivity map, not a contribution",
    reference="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
    claim={"at_least": 0.75, "measured": 0.88},
)
smoothgrad_sq = _register(
    "smoothgrad_sq", "squared",
    summary="mean squared gradient over noisy copies (SmoothGrad-squared), max over colour "
    "channels: sharper than SmoothGrad",
    caveats="squaring exaggerates the strongest pixels",
    reference="Hooker et al. 2019, A Benchmark for Interpretability Methods in Deep Neural "
    "Networks",
    claim={"at_least": 0.7, "measured": 0.82},
)
vargrad = _register(
    "vargrad", "var",
    summary="variance of the gradient over noisy copies, max over colour channels: where the "
    "gradient is unstable",
    caveats="variance is not importance (a linear model's VarGrad is 0)",
    reference="Adebayo et al. 2018, Local Explanation Methods for Deep Neural Networks Lack "
    "Sensitivity to Parameter Values",
    claim={"at_most": 0.25, "measured": 0.12,
           "note": "a documented failure: the gradient over the cue texture is stable under noise "
           "while the gradient elsewhere is not, so the variance peaks off the cue"},
)
