"""The method registry: one table that drives the facade, the CLI, the report and the tests.

A method is a plain function registered with :func:`register`. Its metadata says which family it
belongs to, whether it needs a layer, gradients or can run on a black box, and whether its map is
signed. Nothing else in convscope keeps a second list of methods.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import MethodError

__all__ = ["MethodInfo", "get_method", "list_methods", "method_names", "register"]


@dataclass(frozen=True)
class MethodInfo:
    """Metadata of one registered attribution method.

    Attributes:
        name: the registry key, e.g. ``"saliency"``.
        func: ``func(ctx, **options) -> MethodOutput``; see :mod:`convscope.attribution`.
        family: ``"gradient"``, ``"cam"`` or ``"perturbation"``.
        needs_layer: the method works at an inner layer (CAMs); the facade supplies the model's
            default layer when the caller names none.
        needs_gradients: the method differentiates the model; black boxes are refused.
        black_box: the method only needs ``predict(batch) -> scores``.
        signed: the map can be negative (shown with a diverging colour map).
        summary: one line on what the map shows.
        caveats: one line on what the map does not show or where it misleads.
        reference: the paper.
        options: default keyword options, documented in the function's docstring.
        fast_options: options that make the method cheap enough for the contract tests and the
            demo (fewer samples or steps); never used for results a user sees by default.
    """

    name: str
    func: Callable[..., Any]
    family: str
    needs_layer: bool = False
    needs_gradients: bool = True
    black_box: bool = False
    signed: bool = False
    summary: str = ""
    caveats: str = ""
    reference: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    fast_options: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    family: str,
    needs_layer: bool = False,
    needs_gradients: bool = True,
    black_box: bool = False,
    signed: bool = False,
    summary: str = "",
    caveats: str = "",
    reference: str = "",
    options: dict[str, Any] | None = None,
    fast_options: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that adds a method function to the registry under ``name``."""

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise MethodError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(
            name=name,
            func=func,
            family=family,
            needs_layer=needs_layer,
            needs_gradients=needs_gradients,
            black_box=black_box,
            signed=signed,
            summary=summary,
            caveats=caveats,
            reference=reference,
            options=dict(options or {}),
            fast_options=dict(fast_options or {}),
        )
        return func

    return deco


def _ensure_loaded() -> None:
    # Method modules register themselves on import; import them lazily to avoid cycles.
    from . import attribution  # noqa: F401


def get_method(name: str) -> MethodInfo:
    """Return the metadata of method ``name``, or raise with the closest names."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise MethodError(
            f"unknown method {name!r}{hint} (run `convscope methods` for the list)"
        ) from None


def list_methods(family: str | None = None) -> list[MethodInfo]:
    """All registered methods, optionally of one family, in registration order."""
    _ensure_loaded()
    return [m for m in _REGISTRY.values() if family is None or m.family == family]


def method_names(family: str | None = None) -> list[str]:
    """Names of :func:`list_methods`."""
    return [m.name for m in list_methods(family)]
