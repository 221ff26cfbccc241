"""Running a model for what it says about itself: one probe pass, the default CAM layer, and
gradient-free outputs in chunks.

Every probe pass in convscope goes through :func:`probe` (hooks through
:func:`convscope.core.hooks.capture`), and every gradient-free forward pass over a batch in chunks
through :func:`chunked_outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from convscope.core.errors import ModelLoadError
from convscope.core.hooks import capture, layer_names, resolve_layers
from convscope.models.preprocessing import Preprocessing

__all__ = ["chunked_outputs", "find_default_layer", "layer_extractor", "probe"]


_PROBE_HINT = ("pass preprocessing= with the input size and channels it expects (or a model card; CLI: "
               "--preprocessing, --input-size, --input-channels)")


def probe(
    model: nn.Module, pre: Preprocessing, layers: str | Sequence[str] | None = None, *,
    hint: str = _PROBE_HINT, error: type[Exception] = ModelLoadError,
) -> tuple[Any, list[tuple[str, Any]]]:
    """Run ``model`` once on a zero input of the preprocessing's shape (eval mode, no grad).

    Args:
        model: the network; its modes and flags are restored on exit.
        pre: gives the input's channels and size.
        layers: layers whose outputs to record (names or globs; ``"*"`` for every module), or
            ``None`` for none.
        hint: what the error tells the user to do (default: state the model's preprocessing).
        error: the error class raised when the model fails (default :class:`ModelLoadError`).

    Returns:
        (output, calls): what the model returned, and ``(layer, output)`` of every recorded call
        in the order the modules ran.

    Raises:
        ModelLoadError: the model fails on that input (or ``error``); the message ends with ``hint``.
    """
    names = layer_names(model) if layers == "*" else layers  # every module, also for a leaf model
    x = torch.zeros(1, pre.channels, *pre.size)
    with capture(model, names, clone=False) as cap:
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:
            raise error(
                f"the model fails on a 1x{pre.channels}x{pre.size[0]}x{pre.size[1]} input "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
            ) from None
        return out, list(cap.calls)


def find_default_layer(model: nn.Module, pre: Preprocessing) -> str | None:
    """The last module, in execution order, whose output is a spatial (B, C, H, W) map.

    Outer modules finish after their children, so a block (``layer4``) wins over its last
    convolution. Returns ``None`` for models with no spatial map (e.g. a ViT).
    """
    return last_spatial(probe(model, pre, "*")[1])


def last_spatial(calls: Sequence[tuple[str, Any]]) -> str | None:
    """The rule of :func:`find_default_layer` on the calls of a probe pass over every module."""
    order = [n for n, out in calls
             if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) > 1]
    return order[-1] if order else None


def chunked_outputs(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int,
    each: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``model`` on ``x`` in chunks of ``batch_size`` rows, without gradients, concatenated.

    Args:
        model: any callable on a batch (a module, or e.g. ``lambda p: net(pre.normalize(p))``).
        x: (B, ...) inputs.
        batch_size: rows per forward pass (at least 1).
        each: applied to each chunk's output before concatenation (e.g. a softmax, or moving it
            to the CPU), so only the reduced outputs are kept.

    Returns:
        (B, ...) outputs.
    """
    step = max(1, int(batch_size))
    keep = each if each is not None else (lambda out: out)
    with torch.no_grad():
        return torch.cat([keep(model(x[i:i + step])) for i in range(0, x.shape[0], step)])


def layer_extractor(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> activation of layer`` that stops the forward pass once the layer has run.

    Call it inside ``torch.no_grad()`` and :func:`convscope.core.hooks.state_guard` (the modules are
    the model's own; each call hooks the layer for its pass only and leaves modes and flags to
    that guard).

    Raises:
        LayerNotFoundError: no such layer. MethodError (on a call): the layer did not run, or ran
            more than once in the pass.
    """
    (name,) = resolve_layers(model, layer)[:1]

    def run(x: torch.Tensor) -> torch.Tensor:
        with capture(model, name, clone=False, eval_mode=False, freeze=False) as cap:
            cap.run(x, stop_after=[name])
            return cap.activation(name)

    return run
