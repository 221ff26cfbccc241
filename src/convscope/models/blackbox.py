"""Black-box models: one ``predict(batch) -> scores`` face for a torch module, a NumPy function or an
ONNX Runtime session (:class:`Predictor`), and :class:`BlackBoxModel`, the ``nn.Module`` face the
facade gives a prediction function. A black-box model is a model: it lives here, below the
perturbation engine (:mod:`convscope.engines.perturb`) that runs it on masked inputs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError, MethodError

__all__ = ["BlackBoxModel", "Predictor", "as_predict", "is_black_box"]


def _is_onnx_session(obj: Any) -> bool:
    return hasattr(obj, "run") and hasattr(obj, "get_inputs") and not isinstance(obj, nn.Module)


def is_black_box(obj: Any) -> bool:
    """True for a prediction function that is not a torch module: a callable or an ONNX session."""
    from convscope.models.loaded import LoadedModel

    if isinstance(obj, (str, os.PathLike, nn.Module, LoadedModel)):
        return False
    return callable(obj) or _is_onnx_session(obj)


class Predictor:
    """``predict(batch) -> scores`` around a torch module, NumPy function or ONNX session.

    Args:
        fn: the model.
        kind: ``"auto"`` (module -> torch, ONNX session -> onnx, other callables: tried with a
            tensor first and, if that fails with a type error, with a NumPy array), ``"torch"``,
            ``"numpy"`` or ``"onnx"``.
        channels_last: torch modules only. Run in ``torch.channels_last`` memory format: every
            4-D parameter and buffer is converted while the predictor runs (one conversion per
            :func:`evaluate` call, or per direct call) and put back exactly as it was on exit,
            errors included (:func:`convscope.core.hooks.state_guard` with ``memory_format``); 4-D
            inputs are converted too. Same results up to float rounding.
        compile: torch modules only. ``True`` runs the module through ``torch.compile`` (a
            wrapper of its ``__call__``; the module object itself is not changed, where
            ``torch.compile(module)`` would set an attribute on it); a string or callable names the
            ``torch.compile`` backend (``"inductor"``, ``"eager"``, ...). The first passes pay the
            compilation (and one more for a new batch shape). If compiling or running the compiled
            wrapper fails (no C compiler, an unsupported model), the predictor warns once and
            runs the module eagerly from then on: a speed option never fails an explanation.

    Raises:
        InputError: ``channels_last`` or ``compile`` for a black box (a NumPy function, an ONNX
            session or a plain callable): they need a torch module.

    Shape:
        batch (n, C, H, W) float tensor -> (n, K) float tensor on the batch's device.
    """

    def __init__(self, fn: Any, kind: str = "auto", *, channels_last: bool = False,
                 compile: bool | str | Callable[..., Any] = False) -> None:
        if isinstance(fn, Predictor):
            channels_last = channels_last or fn.channels_last  # type: ignore[has-type]
            compile = compile or fn.compile  # type: ignore[has-type]
            fn, kind = fn.fn, fn.kind  # type: ignore[has-type]
        if kind == "auto":
            if isinstance(fn, nn.Module):
                kind = "torch"
            elif _is_onnx_session(fn):
                kind = "onnx"
            elif callable(fn):
                kind = "callable"  # decided on the first call
            else:
                raise InputError(
                    f"cannot use a {type(fn).__name__} as a model: pass an nn.Module, a function "
                    "predict(batch) -> scores or an onnxruntime.InferenceSession"
                )
        if kind not in ("torch", "numpy", "onnx", "callable"):
            raise InputError(f"unknown predictor kind {kind!r}; use auto, torch, numpy or onnx")
        if (channels_last or compile is not False) and not isinstance(fn, nn.Module):
            what = {"onnx": "an ONNX session", "numpy": "a NumPy function"}.get(kind, "a black-box function")
            opts = " and ".join(o for o, on in (("channels_last", channels_last),
                                                 ("compile", compile is not False)) if on)
            raise InputError(
                f"{opts} need(s) a torch nn.Module, but the model is {what}; drop the option(s) "
                "or pass the torch model"
            )
        if compile is not False and not (compile is True or isinstance(compile, str) or callable(compile)):
            raise InputError(f"compile must be True, False, a backend name or a backend callable, "
                             f"got {compile!r}")
        self.fn = fn
        self.kind = kind
        self.channels_last = bool(channels_last)
        self.compile = compile
        self._onnx_input: str | None = None
        self._compiled: Callable[..., Any] | None = None
        self._compile_failed = False
        self._prepared = False

    @property
    def module(self) -> nn.Module | None:
        """The torch module, if the predictor wraps one."""
        return self.fn if isinstance(self.fn, nn.Module) else None

    @contextmanager
    def prepared(self) -> Iterator[None]:
        """Hold the module in the engine's memory format for the block (no-op without
        ``channels_last``; re-entrant). Every parameter and buffer is restored on exit."""
        module = self.module
        if not self.channels_last or self._prepared or module is None:
            yield
            return
        from convscope.core.hooks import state_guard

        self._prepared = True
        try:
            with state_guard(module, eval_mode=False, freeze=False, memory_format=torch.channels_last):
                yield
        finally:
            self._prepared = False

    def _fallback(self, exc: BaseException) -> None:
        self._compiled = None
        self._compile_failed = True
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {first}); running the model eagerly",
            RuntimeWarning, stacklevel=3,
        )

    def _torch(self, batch: torch.Tensor, *extra: Any) -> Any:
        if self.channels_last:
            cl = [
                v.contiguous(memory_format=torch.channels_last)
                if isinstance(v, torch.Tensor) and v.ndim == 4 else v
                for v in (batch, *extra)
            ]
            batch, extra = cl[0], tuple(cl[1:])
        if self.compile is not False and not self._compile_failed:
            if self._compiled is None:
                # Compile the bound ``__call__`` (what torch.compile(module) wraps too): compiling
                # the module itself would set an attribute on the caller's module object.
                kw: dict[str, Any] = {} if self.compile is True else {"backend": self.compile}
                try:
                    self._compiled = torch.compile(self.fn.__call__, **kw)
                except Exception as exc:  # no compiler, unsupported Python, unknown backend
                    self._fallback(exc)
            if self._compiled is not None:
                try:
                    with torch.no_grad():
                        return self._compiled(batch, *extra)
                except Exception as exc:  # compilation happens on the first call: fall back
                    self._fallback(exc)
        with torch.no_grad():
            return self.fn(batch, *extra)

    def _numpy(self, batch: torch.Tensor) -> torch.Tensor:
        arr = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.kind == "onnx":
            if self._onnx_input is None:
                self._onnx_input = self.fn.get_inputs()[0].name
            out = self.fn.run(None, {self._onnx_input: arr})[0]
        else:
            out = self.fn(arr)
        return torch.as_tensor(np.asarray(out), dtype=torch.float32).to(batch.device)

    def __call__(self, batch: torch.Tensor, *extra: Any) -> torch.Tensor:
        """Outputs for ``batch``; ``extra`` arguments go to a torch module after it (e.g. the
        side inputs of a network tail), never to a black box."""
        if extra and self.kind != "torch":
            raise InputError("extra predictor arguments need a torch module")
        if self.kind in ("numpy", "onnx"):
            out = self._numpy(batch)
        elif self.kind == "torch":
            with self.prepared():
                out = self._torch(batch, *extra)
        else:  # a plain callable: tensor in if it takes one, else NumPy
            try:
                with torch.no_grad():
                    out = self.fn(batch)
            except Exception as exc:  # maybe a NumPy function: try an array before giving up
                try:
                    out = self._numpy(batch)
                except Exception:
                    raise exc from None
                self.kind = "numpy"
            else:
                self.kind = "torch"
        if isinstance(out, np.ndarray):
            out = torch.as_tensor(out, dtype=torch.float32).to(batch.device)
        if not isinstance(out, torch.Tensor):
            raise MethodError(
                f"predict returned {type(out).__name__}; expected an (n, classes) tensor or array"
            )
        if out.ndim == 1:
            out = out[:, None]
        return out


def as_predict(model: Any, kind: str = "auto", *, channels_last: bool = False,
               compile: bool | str | Callable[..., Any] = False) -> Predictor:
    """Wrap ``model`` as a :class:`Predictor` (see there for ``channels_last`` and ``compile``)."""
    return Predictor(model, kind, channels_last=channels_last, compile=compile)


class BlackBoxModel(nn.Module):
    """An ``nn.Module`` face for a black-box predictor, so the facade can treat it like a model.

    It has no parameters and no layers; methods that need gradients or layers are refused before
    it is ever built (see :func:`convscope.explain`).
    """

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.predictor = as_predict(fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)
