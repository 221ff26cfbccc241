"""The method registry: one table that drives the facade, the CLI, the report and the tests.

A method is a plain function registered with :func:`register`. Its metadata says which family it
belongs to, whether it needs a layer, gradients or can run on a black box, and whether its map is
signed. Nothing else in convscope keeps a second list of methods.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from convscope.core.errors import MethodError
from convscope.core.validate import OptionSpec, Range, check_options, option_specs

__all__ = [
    "CueClaim",
    "MethodInfo",
    "OptionSpec",
    "Range",
    "check_method_options",
    "get_method",
    "inapplicable",
    "list_methods",
    "method_names",
    "not_applicable_line",
    "register",
    "requirement",
    "unmet_requirement",
]


@dataclass(frozen=True)
class CueClaim:
    """What a method is measured to show on a known cause: the bundled planted-cue model.

    ``digits-cnn-cue`` was trained on digits that carry a class-specific 8x8 texture patch (the
    cue, :func:`convscope.data.toydata.planted_cue`); ``digits-cnn`` is the same network trained
    without it. A claim says: on the first ``n`` cue test digits, the share of maps whose maximum
    lies in the cue (pointing game, ``tolerance`` px) is at least ``at_least`` (or, for a
    documented failure, at most ``at_most``), and on the clean model below ``clean_below``.
    ``tests/test_truth.py`` checks every claim of every registered method, and fails for a method
    without one.

    Attributes:
        n: how many cue test digits are explained.
        at_least: lower bound on the hit rate on the cue model (``None``: no lower bound).
        at_most: upper bound on the hit rate on the cue model (a documented failure).
        clean_below: upper bound on the clean model's hit rate (the control); ``None``: not checked.
        options: the method options of the claim.
        layer: the layer (CAM methods; ``None``: the model's default layer).
        tolerance: pixels the cue mask is dilated by.
        measured: the rate measured when the claim was written (documentation, not checked).
        note: why the claim is what it is.
        model: the bundled planted-cue model the claim is measured on (``digits-vit-cue`` for the
            attention methods, which need a vision transformer).
        clean_model: the same network trained without the cue, for the control (``None``: none).
    """

    n: int
    at_least: float | None = None
    at_most: float | None = None
    clean_below: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    layer: str | None = None
    tolerance: int = 1
    measured: float | None = None
    note: str = ""
    model: str = "digits-cnn-cue"
    clean_model: str | None = "digits-cnn"


@dataclass(frozen=True)
class MethodInfo:
    """Metadata of one registered attribution method.

    Attributes:
        name: the registry key, e.g. ``"saliency"``.
        func: ``func(ctx, **options) -> MethodOutput``; see :mod:`convscope.methods.attribution`.
            It runs inside the caller's :func:`~convscope.core.state.state_guard` of the model (eval
            mode, frozen weights, restored after): :func:`convscope.explain` holds one; whoever calls
            ``func`` directly must too.
        family: ``"gradient"``, ``"cam"``, ``"perturbation"`` or ``"attention"``.
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
        ranges: the numbers each numeric option accepts (:func:`convscope.core.validate.ints`,
            :func:`~convscope.core.validate.reals`); an undeclared numeric option only has to be
            finite (and an integer if annotated ``int``).
        choices: the strings an option accepts, where the registry knows them.
        claims: what the method is measured to show on the planted-cue model
            (:class:`CueClaim`); the truth tests are generated from them.
        requires: what a model must have for the method to apply (a name declared with
            :func:`requirement`, e.g. ``"attention"``); ``None``: any model. :func:`inapplicable`
            evaluates it, and the facade, report, CLI and web app read it from there.
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
    ranges: dict[str, Range] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    claims: tuple[CueClaim, ...] = ()
    requires: str | None = None

    def __post_init__(self) -> None:
        # private copies in one form, whatever mapping or sequence the caller passed (or None)
        for name, value in (("options", dict(self.options or {})),
                            ("fast_options", dict(self.fast_options or {})),
                            ("ranges", dict(self.ranges or {})),
                            ("choices", {k: tuple(v) for k, v in (self.choices or {}).items()}),
                            ("claims", tuple(self.claims))):
            object.__setattr__(self, name, value)

    @cached_property
    def option_specs(self) -> list[OptionSpec]:
        """Type, default, range, choices and doc of each keyword option (for forms and checks)."""
        return option_specs(self.func, self.ranges, self.choices)

    @cached_property
    def takes_any_option(self) -> bool:
        """Whether the method function takes ``**kwargs`` (then unknown option names pass)."""
        import inspect

        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.func).parameters.values())


_REGISTRY: dict[str, MethodInfo] = {}
#: requirement name -> (does a model meet it, what a model lacks when it does not)
_REQUIREMENTS: dict[str, tuple[Callable[[Any], bool], str]] = {}


def requirement(name: str, check: Callable[[Any], bool], lacks: str) -> None:
    """Declare what ``requires=name`` means: ``check(model)`` says whether a torch model meets it;
    ``lacks`` ends the one line of a model that does not (e.g. "has no attention layers: ...")."""
    _REQUIREMENTS[name] = (check, lacks)


def unmet_requirement(info: MethodInfo, model: Any) -> str | None:
    """``None`` when method ``info`` applies to the torch ``model``, else what the model lacks (the
    requirement's own words, without the method's name: e.g. "has no attention layers ...").

    The one test of a method's :attr:`MethodInfo.requires`; a black box (no torch module) is not
    judged here (the facade refuses methods that need the network's layers on one).
    """
    if info.requires is None or not hasattr(model, "named_modules"):
        return None
    check, lacks = _REQUIREMENTS[info.requires]
    return None if check(model) else lacks


def not_applicable_line(method: str, model: Any, lacks: str) -> str:
    """The one-line error of a method that does not apply: ``"<method> does not apply to <Model>: it
    <lacks>"``."""
    return f"{method} does not apply to {type(model).__name__}: it {lacks}"


def inapplicable(info: MethodInfo, model: Any) -> str | None:
    """``None`` when method ``info`` applies to the torch ``model``, else one line saying why not
    (:func:`unmet_requirement` in :func:`not_applicable_line`)."""
    lacks = unmet_requirement(info, model)
    return None if lacks is None else not_applicable_line(info.name, model, lacks)


def register(name: str, *, family: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that adds a method function to the registry under ``name``.

    Args:
        name: the registry key.
        family: ``"gradient"``, ``"cam"``, ``"perturbation"`` or ``"attention"``.
        **meta: the other fields of :class:`MethodInfo` (``needs_layer``, ``needs_gradients``,
            ``black_box``, ``signed``, ``summary``, ``caveats``, ``reference``, ``options``,
            ``fast_options``, ``ranges``, ``choices``, ``claims``, ``requires``), with its defaults.

    ``ranges`` and ``choices`` declare, once, the values of the method's options (see
    :class:`MethodInfo`); :func:`check_method_options` enforces them before any work.
    """

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise MethodError(f"method {name!r} is registered twice")
        info = _REGISTRY[name] = MethodInfo(name=name, func=func, family=family, **meta)
        unknown = (set(info.ranges) | set(info.choices)) - {s.name for s in info.option_specs}
        if unknown:
            raise MethodError(f"method {name!r} declares ranges for unknown option(s) {sorted(unknown)}")
        if info.requires is not None and info.requires not in _REQUIREMENTS:
            raise MethodError(f"method {name!r} requires {info.requires!r}, which no requirement() declares")
        return func

    return deco


def get_method(name: str) -> MethodInfo:
    """Return the metadata of method ``name``, or raise with the closest names."""
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
    return [m for m in _REGISTRY.values() if family is None or m.family == family]


def method_names(family: str | None = None) -> list[str]:
    """Names of :func:`list_methods`."""
    return [m.name for m in list_methods(family)]


def check_method_options(info: MethodInfo, options: Mapping[str, Any]) -> None:
    """Refuse unknown options and values outside their declared type, range or choices.

    The facade calls this before any work; the CLI calls it before loading the model.

    Raises:
        MethodError: an option the method does not take (unless its function takes ``**kwargs``).
        InputError: one line naming the method, the option, the value and what it accepts.
    """
    if not info.takes_any_option:
        allowed = [s.name for s in info.option_specs]
        bad = [k for k in options if k not in allowed]
        if bad:
            raise MethodError(
                f"unknown option(s) {', '.join(bad)} for method {info.name!r}; its options are: "
                f"{', '.join(allowed) or 'none'}"
            )
    check_options(f"{info.name}:", info.option_specs, options)
