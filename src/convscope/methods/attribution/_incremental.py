"""Graph surgery with ``torch.fx`` for the perturbation methods.

* :func:`layer_tail`: the part of a network after one layer, as a module that takes the layer's
  output (and whatever earlier values later nodes still read, e.g. a skip connection crossing
  the layer). Ablation-CAM runs only this tail for its ablated activations.
  (When a model cannot be traced, Ablation-CAM swaps the layer's output through
  :func:`convscope.core.hooks.capture`'s ``replace``: no hook is registered here.)
* :class:`IncrementalOcclusion`: occlusion by incremental inference (Krypton, Nakandala et al.,
  SIGMOD 2019), see its docstring.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from convscope.core.errors import InputError, MethodError
from convscope.methods.attribution._tail import _trace

__all__ = ["IncrementalOcclusion"]


def _pair(v: Any) -> tuple[int, int]:
    """``v`` as a (height, width) pair (an int is used for both)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise InputError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass
class _Patch:
    """A batch of n tensors equal to ``clean`` (1, C, H, W) except inside one box each.

    ``vals`` (n, C, bh, bw) holds the values inside the boxes whose top-left corners are
    ``r`` (n,) and ``c`` (n,); the box size is the same for all n. ``full`` is set instead when
    the whole tensor had to be materialised.
    """

    clean: torch.Tensor
    vals: torch.Tensor | None
    r: torch.Tensor | None
    c: torch.Tensor | None
    full: torch.Tensor | None = None

    @property
    def n(self) -> int:
        t = self.full if self.full is not None else self.vals
        assert t is not None
        return t.shape[0]

    def materialize(self) -> torch.Tensor:
        if self.full is not None:
            return self.full
        h, w = self.clean.shape[-2:]
        n = self.n
        z = torch.zeros(n, dtype=torch.long, device=self.clean.device)
        return self.gather(z, z, h, w, (0, 0), 0.0).contiguous()

    def gather(self, r0: torch.Tensor, c0: torch.Tensor, gh: int, gw: int, pad: tuple[int, int],
               fill: float, cache: dict[int, Any] | None = None) -> torch.Tensor:  # noqa: E501
        """The region [r0, r0+gh) x [c0, c0+gw) of each patched tensor, in coordinates of the
        tensor padded by ``pad`` with ``fill``.

        One ``index_select`` over the rows of [clean padded pixels; patch pixels] (both
        channels-last), so the result is a channels-last (n, C, gh, gw) tensor, the layout in
        which CPU convolutions run fastest.

        Shape:
            returns (n, C, gh, gw).
        """
        ph, pw = pad
        n = self.n
        dev = self.clean.device
        C, H, W = self.clean.shape[1:]
        rows = r0[:, None] + torch.arange(gh, device=dev)[None]  # padded coords (n, gh)
        cols = c0[:, None] + torch.arange(gw, device=dev)[None]
        if self.full is not None:
            src = F.pad(self.full, (pw, pw, ph, ph), value=fill) if (ph or pw) else self.full
            idx = torch.arange(n, device=dev)[:, None, None]
            return src.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        assert self.vals is not None and self.r is not None and self.c is not None
        key = (ph, pw, fill)
        cache = {} if cache is None else cache
        cached: tuple[torch.Tensor, dict[Any, torch.Tensor]] | None = cache.get(id(self.clean))
        if cached is None or cached[0] is not self.clean:
            cached = (self.clean, {})
            cache[id(self.clean)] = cached
        rows_clean = cached[1].get(key)
        if rows_clean is None:
            padded = F.pad(self.clean, (pw, pw, ph, ph), value=fill) if (ph or pw) else self.clean
            rows_clean = padded[0].permute(1, 2, 0).reshape(-1, C)
            cached[1][key] = rows_clean
        wp = W + 2 * pw
        n_clean = rows_clean.shape[0]
        bh, bw = self.vals.shape[-2:]
        rr = rows - ph - self.r[:, None]  # row inside the patch box
        cc = cols - pw - self.c[:, None]
        inside = ((rr >= 0) & (rr < bh))[:, :, None] & ((cc >= 0) & (cc < bw))[:, None, :]
        cidx = rows[:, :, None] * wp + cols[:, None, :]
        pidx = (
            n_clean
            + (torch.arange(n, device=dev)[:, None, None] * bh + rr.clamp(0, bh - 1)[:, :, None]) * bw
            + cc.clamp(0, bw - 1)[:, None, :]
        )
        idx = torch.where(inside, pidx, cidx).flatten()
        # [clean rows; patch rows] in one buffer whose clean part is written once per layer
        bkey = ("buf", key, n, bh, bw)
        buf = cached[1].get(bkey)
        if buf is None or buf.dtype != self.vals.dtype:
            buf = torch.empty(n_clean + n * bh * bw, C, dtype=self.vals.dtype, device=dev)
            buf[:n_clean] = rows_clean
            cached[1][bkey] = buf
        buf[n_clean:].view(n, bh, bw, C).copy_(self.vals.permute(0, 2, 3, 1))
        return buf.index_select(0, idx).view(n, gh, gw, C).permute(0, 3, 1, 2)


def _out_range(lo: torch.Tensor, hi: torch.Tensor, k: int, s: int, p: int, d: int, size_out: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows [a, b) of a sliding op whose window touches input rows [lo, hi)."""
    span = d * (k - 1)
    a = torch.div(lo + p - span + s - 1, s, rounding_mode="floor").clamp(min=0)  # ceil
    b = (torch.div(hi - 1 + p, s, rounding_mode="floor") + 1).clamp(max=size_out)
    return a, b


class IncrementalOcclusion:
    """Occlusion scores by incremental inference on top of cached clean activations.

    An occluding patch changes only a window of each layer's activations: a k x k convolution
    with stride s grows the changed box by k - 1 and divides it by s. The network is traced with
    ``torch.fx``; every spatial node (convolution, pooling, batch norm, element-wise functions,
    additions) is recomputed for each patch only on its changed box, with the rest read from the
    clean activations; a node that is not spatial (flatten, linear, adaptive pooling) first
    materialises the full tensor. The result equals full inference up to float rounding.

    ``tau`` (approximate mode, Krypton's projective-field threshold) caps each changed box at
    ``tau`` times the layer's height and width, centred on the exact box: activations outside the
    cap are taken from the clean pass though the patch would have changed them a little.

    Args:
        model: the network (eval mode, traced once).
        x: (1, C, H, W) the clean input.
        tau: ``None`` for exact mode, else the cap in (0, 1].

    Raises:
        MethodError: the model cannot be traced by ``torch.fx``.
    """

    _ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.BatchNorm2d, nn.Dropout, nn.Identity,
                            nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.ELU)
    _ELEMENTWISE_FUNCS = (F.relu, torch.relu, F.relu6, torch.sigmoid, torch.tanh, F.silu, F.gelu,
                          F.dropout)

    def __init__(self, model: nn.Module, x: torch.Tensor, tau: float | None = None) -> None:
        gm = _trace(model)
        if gm is None:
            raise MethodError(
                f"incremental occlusion needs a model torch.fx can trace; {type(model).__name__} "
                "cannot be traced: use incremental=False"
            )
        if tau is not None and not 0 < tau <= 1:
            raise MethodError(f"tau must lie in (0, 1], got {tau}")
        self.gm = gm
        self.tau = tau
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        # the clean pass, keeping every node's value
        self.clean: dict[fx.Node, Any] = {}
        interp = fx.Interpreter(gm)
        env: dict[fx.Node, Any] = {}
        interp.env = env
        with torch.no_grad():
            for n in self.nodes:
                if n.op == "placeholder":
                    env[n] = x
                elif n.op == "output":
                    break
                else:
                    args, kwargs = interp.fetch_args_kwargs_from_env(n)  # type: ignore[attr-defined]
                    env[n] = getattr(interp, n.op)(n.target, args, kwargs)
        self.clean = env
        self._integral: dict[fx.Node, torch.Tensor] = {}
        self._pad_cache: dict[int, Any] = {}  # padded clean activations as channels-last rows
        # fold eval-mode batch norm into the convolution before it (fewer passes over the boxes)
        self._folded: dict[fx.Node, tuple[torch.Tensor, torch.Tensor, fx.Node]] = {}
        self._skip: set[fx.Node] = set()
        for n in self.nodes:
            bn = self.modules.get(n.target) if n.op == "call_module" else None  # type: ignore[arg-type]
            if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_mean is None:
                continue
            prev = n.args[0] if n.args else None
            is_mod = isinstance(prev, fx.Node) and prev.op == "call_module"
            conv = self.modules.get(prev.target) if is_mod else None  # type: ignore[union-attr,arg-type]
            if not isinstance(conv, nn.Conv2d) or len(prev.users) != 1:  # type: ignore[union-attr]
                continue
            inv = 1 / torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator,arg-type]
            scale = bn.weight * inv if bn.affine else inv
            shift = bn.bias - bn.running_mean * scale if bn.affine else -bn.running_mean * scale
            wgt = conv.weight * scale.view(-1, 1, 1, 1)
            bias = (conv.bias * scale + shift) if conv.bias is not None else shift
            self._folded[prev] = (wgt.detach(), bias.detach(), n)  # type: ignore[index]
            self._skip.add(n)

    # -- per node kinds ---------------------------------------------------------------------

    def _window_op(self, n: fx.Node, mod: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[int, int, int, int, int, int, int, int, float] | None:
        """(kh, kw, sh, sw, ph, pw, dh, dw, fill) for conv / pooling nodes, else None."""
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                return None
            kh, kw = _pair(mod.kernel_size)
            sh, sw = _pair(mod.stride)
            ph, pw = _pair(mod.padding)
            dh, dw = _pair(mod.dilation)
            return kh, kw, sh, sw, ph, pw, dh, dw, 0.0
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            if getattr(mod, "ceil_mode", False):
                return None
            if isinstance(mod, nn.AvgPool2d) and mod.padding not in (0, (0, 0)) and not mod.count_include_pad:
                return None
            kh, kw = _pair(mod.kernel_size)
            sh, sw = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
            ph, pw = _pair(mod.padding)
            dh, dw = _pair(getattr(mod, "dilation", 1))
            fill = float("-inf") if isinstance(mod, nn.MaxPool2d) else 0.0
            return kh, kw, sh, sw, ph, pw, dh, dw, fill
        return None

    def _box_op(self, n: fx.Node, p: _Patch, geom: tuple[int, int, int, int, int, int, int, int, float],
                fn: Callable[[torch.Tensor], torch.Tensor]) -> _Patch:
        kh, kw, sh, sw, ph, pw, dh, dw, fill = geom
        out_clean = self.clean[self._folded[n][2]] if n in self._folded else self.clean[n]
        ho, wo = out_clean.shape[-2:]
        if p.full is not None:
            full = fn(F.pad(p.full, (pw, pw, ph, ph), value=fill))
            return _Patch(out_clean, None, None, None, full=full)
        assert p.vals is not None and p.r is not None and p.c is not None
        bh, bw = p.vals.shape[-2:]
        a, b = _out_range(p.r, p.r + bh, kh, sh, ph, dh, ho)
        ac, bc = _out_range(p.c, p.c + bw, kw, sw, pw, dw, wo)
        oh = int((b - a).max())
        ow = int((bc - ac).max())
        if self.tau is not None:
            oh = min(oh, max(1, int(round(self.tau * ho))))
            ow = min(ow, max(1, int(round(self.tau * wo))))
            a = (torch.div(a + b - oh, 2, rounding_mode="floor"))
            ac = (torch.div(ac + bc - ow, 2, rounding_mode="floor"))
        a = a.clamp(0, ho - oh)
        ac = ac.clamp(0, wo - ow)
        gh = (oh - 1) * sh + dh * (kh - 1) + 1
        gw = (ow - 1) * sw + dw * (kw - 1) + 1
        region = p.gather(a * sh, ac * sw, gh, gw, (ph, pw), fill, self._pad_cache)
        vals = fn(region)
        return _Patch(out_clean, vals, a, ac)

    def _elementwise(self, n: fx.Node, ins: list[Any], fn: Callable[..., Any]) -> _Patch:
        patches = [v for v in ins if isinstance(v, _Patch)]
        out_clean = self.clean[n]
        if any(q.full is not None for q in patches) or len({q.vals.shape[-2:] for q in patches}) > 1 or any(  # type: ignore[union-attr]
            not (torch.equal(q.r, patches[0].r) and torch.equal(q.c, patches[0].c)) for q in patches  # type: ignore[arg-type]
        ):
            # align: gather every operand on the union box (of fixed size)
            if any(q.full is not None for q in patches):
                args = [v.materialize() if isinstance(v, _Patch) else v for v in ins]
                return _Patch(out_clean, None, None, None, full=fn(*args))
            r0 = torch.stack([q.r for q in patches]).amin(0)  # type: ignore[misc]
            c0 = torch.stack([q.c for q in patches]).amin(0)  # type: ignore[misc]
            r1 = torch.stack([q.r + q.vals.shape[-2] for q in patches]).amax(0)  # type: ignore[union-attr,operator,misc]
            c1 = torch.stack([q.c + q.vals.shape[-1] for q in patches]).amax(0)  # type: ignore[union-attr,operator,misc]
            h, w = out_clean.shape[-2:]
            gh, gw = int((r1 - r0).max()), int((c1 - c0).max())
            r0, c0 = r0.clamp(0, h - gh), c0.clamp(0, w - gw)
            args = [v.gather(r0, c0, gh, gw, (0, 0), 0.0, self._pad_cache) if isinstance(v, _Patch) else v
                    for v in ins]
            return _Patch(out_clean, fn(*args), r0, c0)
        q0 = patches[0]
        args = [v.vals if isinstance(v, _Patch) else v for v in ins]
        return _Patch(out_clean, fn(*args), q0.r, q0.c)

    def _is_spatial_clean(self, v: Any, like: torch.Tensor) -> bool:
        return isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-2:] == like.shape[-2:]

    def scores(self, vals: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """Model outputs for the input with each patch ``vals[i]`` written at ``corners[i]``.

        Shape:
            vals (n, C, wh, ww), corners (n, 2) -> (n, K) outputs.
        """
        env: dict[fx.Node, Any] = {}
        dirty: set[fx.Node] = set()
        result: Any = None
        with torch.no_grad():
            for n in self.nodes:
                if n.op == "placeholder":
                    env[n] = _Patch(self.clean[n], vals, corners[:, 0], corners[:, 1])
                    dirty.add(n)
                    continue
                if n.op == "output":
                    result = fx.node.map_arg(n.args[0], lambda a: env[a])
                    break
                if not any(a in dirty for a in n.all_input_nodes):
                    env[n] = self.clean[n]  # does not depend on the input patch
                    continue
                dirty.add(n)
                env[n] = self._run(n, env)
        if isinstance(result, _Patch):
            result = result.materialize()
        if isinstance(result, (tuple, list)):
            result = result[0]
        if isinstance(result, _Patch):
            result = result.materialize()
        return result

    def _run(self, n: fx.Node, env: dict[fx.Node, Any]) -> Any:
        def val(a: Any) -> Any:
            return env[a] if isinstance(a, fx.Node) else a

        args = fx.node.map_arg(n.args, val)
        kwargs = fx.node.map_arg(n.kwargs, val)
        mod = self.modules.get(n.target) if n.op == "call_module" else None  # type: ignore[arg-type]
        if n in self._skip:  # batch norm folded into the convolution before it
            return args[0]
        flat = [a for a in args if isinstance(a, _Patch)]
        if n.op == "call_module" and len(args) == 1 and not kwargs and isinstance(args[0], _Patch):
            geom = self._window_op(n, mod, args, kwargs)
            if geom is not None and self.clean[n].ndim == 4:
                assert mod is not None
                if isinstance(mod, nn.Conv2d):
                    wb = self._folded.get(n)
                    wgt, bias = (wb[0], wb[1]) if wb is not None else (mod.weight, mod.bias)

                    def fn(t: torch.Tensor, m: nn.Conv2d = mod, wgt: torch.Tensor = wgt,
                           bias: torch.Tensor | None = bias) -> torch.Tensor:
                        return F.conv2d(t, wgt, bias, m.stride, 0, m.dilation, m.groups)
                elif isinstance(mod, nn.MaxPool2d):
                    def fn(t: torch.Tensor, m: nn.MaxPool2d = mod) -> torch.Tensor:
                        return F.max_pool2d(t, m.kernel_size, m.stride, 0, m.dilation)
                else:
                    def fn(t: torch.Tensor, m: nn.Module = mod) -> torch.Tensor:
                        return F.avg_pool2d(t, m.kernel_size, m.stride, 0)  # type: ignore[arg-type]
                return self._box_op(n, args[0], geom, fn)
            if isinstance(mod, self._ELEMENTWISE_MODULES) and self.clean[n].ndim == 4:
                if isinstance(mod, nn.ReLU):
                    src = n.args[0]
                    own = isinstance(src, fx.Node) and len(src.users) == 1 and src.op != "placeholder"
                    return self._elementwise(n, [args[0]], torch.relu_ if own else torch.relu)
                return self._elementwise(n, [args[0]], mod)
            if isinstance(mod, nn.AdaptiveAvgPool2d) and _pair(mod.output_size) == (1, 1):
                return self._gap(n, args[0])
        if n.op == "call_function" and flat:
            clean = self.clean[n]
            tensor_args = [a for a in args if isinstance(a, (torch.Tensor, _Patch))]
            if (
                n.target in (operator.add, torch.add, operator.mul, torch.mul, *self._ELEMENTWISE_FUNCS)
                and isinstance(clean, torch.Tensor) and clean.ndim == 4
                and all(not isinstance(a, torch.Tensor) or a.numel() == 1 for a in args)
                and all(a.clean.shape == clean.shape for a in flat)  # type: ignore[union-attr]
                and len(tensor_args) >= 1
            ):
                target: Any = n.target
                kw: dict[str, Any] = {k: v for k, v in kwargs.items() if k != "inplace"}
                return self._elementwise(n, list(args), lambda *a: target(*a, **kw))
        # anything else: materialise and run the node on full tensors
        margs = fx.node.map_aggregate(args, lambda a: a.materialize() if isinstance(a, _Patch) else a)
        mkwargs = fx.node.map_aggregate(kwargs, lambda a: a.materialize() if isinstance(a, _Patch) else a)
        if n.op == "call_module":
            assert mod is not None
            return mod(*margs, **mkwargs)
        if n.op == "call_function":
            return n.target(*margs, **mkwargs)  # type: ignore[operator]
        if n.op == "call_method":
            obj, *rest = margs
            return getattr(obj, n.target)(*rest, **mkwargs)  # type: ignore[arg-type]
        raise MethodError(f"incremental occlusion cannot run node {n.op} {n.target}")

    def _gap(self, n: fx.Node, p: _Patch) -> torch.Tensor:
        """Global average pooling as the clean mean plus the box's change (the clean sum over
        each box from an integral image)."""
        if p.full is not None:
            return p.full.mean((2, 3), keepdim=True)
        assert p.vals is not None and p.r is not None and p.c is not None
        bh, bw = p.vals.shape[-2:]
        h, w = p.clean.shape[-2:]
        ii = self._integral.get(n)
        if ii is None:
            ii = F.pad(p.clean[0].double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (C, H+1, W+1)
            self._integral[n] = ii
        r, c = p.r, p.c
        old = ii[:, r + bh, c + bw] - ii[:, r, c + bw] - ii[:, r + bh, c] + ii[:, r, c]  # (C, n)
        delta = (p.vals.double().sum((2, 3)) - old.T) / (h * w)
        return self.clean[n] + delta.to(p.vals.dtype)[:, :, None, None]
