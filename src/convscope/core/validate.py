"""Allowed values of options, declared once and checked at the edges before any work.

A :class:`Range` says which numbers an option takes (integer or finite real, bounds open or
closed). Method options declare theirs in :func:`convscope.register` (``ranges=``, ``choices=``);
the CLI's numeric flags use the ``type=`` factories of :mod:`convscope.frontends.cli._common`, which are
built on the same class. :class:`OptionSpec` (``MethodInfo.option_specs``) is the queryable
description of one method option (type, default, range, choices, doc) that forms are built from.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from convscope.core.errors import InputError

_G = TypeVar("_G")
_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["SEEDS", "OptionSpec", "Range", "check_options", "check_values", "ints", "group_parameters",
           "option_group", "option_specs", "reals", "shows_options", "split_names"]


def option_group(cls: type[_G], func: str, given: Mapping[str, Any], **defaults: Any) -> _G:
    """``cls(**defaults, **given)`` for an option group (a dataclass of keyword options that a
    function takes through ``**options``); an unknown name raises the ``TypeError`` Python gives
    for a keyword argument the function lacks, naming ``func``, not the dataclass."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{func}() got an unexpected keyword argument {unknown[0]!r}")
    return cls(**{**defaults, **given})


def group_parameters(group: type, kind: inspect._ParameterKind, hints: Mapping[str, Any] | None = None,
                     **defaults: Any) -> list[inspect.Parameter]:
    """The fields of the option group ``group`` (a dataclass) as signature parameters of ``kind``:
    each with ``defaults[name]`` where given, else the field's default, and ``hints[name]`` where
    given, else the field's type (resolved where it can be)."""
    try:
        types_ = typing.get_type_hints(group)
    except (NameError, TypeError):  # a forward reference only a type checker can resolve
        types_ = {}
    out = []
    for f in dataclasses.fields(group):  # type: ignore[arg-type]
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty
        annotation = (hints or {}).get(f.name, types_.get(f.name, f.type))
        out.append(inspect.Parameter(f.name, kind, default=default, annotation=annotation))
    return out


def shows_options(*groups: type, **defaults: Any) -> Callable[[_F], _F]:
    """Show the fields of the option groups a function takes through ``**options`` (see
    :func:`option_group`) in its signature, as keyword-only parameters with their defaults
    (``defaults``: the function's own, where they differ) and types, so ``help()``, notebooks and
    ``inspect.signature`` list them. The call itself is unchanged."""

    def deco(func: _F) -> _F:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params}
        for group in groups:
            for q in group_parameters(group, inspect.Parameter.KEYWORD_ONLY, **defaults):
                if q.name not in taken:
                    taken.add(q.name)
                    params.append(q)
        func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return func

    return deco


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts.

    Attributes:
        lo, hi: bounds (``None``: unbounded on that side).
        lo_open, hi_open: the bound itself is excluded.
        integer: only integers (``bool`` is never a number here).
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        """E.g. ``"an integer >= 1"``, ``"a finite number in (0, 1]"``."""
        kind = "an integer" if self.integer else "a finite number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return (f"{kind} in {'(' if self.lo_open else '['}{_num(lo)}, {_num(hi)}"
                    f"{')' if self.hi_open else ']'}")
        if lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {_num(hi)}"
        return kind

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a number of this range (NaN and infinities never are)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        try:
            v = int(value) if self.integer else float(value)
        except OverflowError:  # an integer too large for a float
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def outside(self) -> list[Any]:
        """Values this range refuses: NaN, infinities and numbers just past each bound (for tests)."""
        out: list[Any] = [math.nan, math.inf, -math.inf]
        step = 1 if self.integer else 1e-3
        if self.lo is not None:
            out.append(self.lo if self.lo_open else self.lo - step)
            out.append(-(10**9))
        if self.hi is not None:
            out.append(self.hi if self.hi_open else self.hi + step)
            out.append(10**12)
        if self.integer:
            out.append(2.5)
        return [v if not (self.integer and isinstance(v, float) and v.is_integer()) else int(v) for v in out]


def ints(lo: int | None = None, hi: int | None = None) -> Range:
    """Integers in ``[lo, hi]``."""
    return Range(lo, hi, integer=True)


#: The range of every ``seed`` option: what numpy's and scikit-learn's generators take.
SEEDS = ints(0, 2**32 - 1)


def reals(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
          hi_open: bool = False) -> Range:
    """Finite numbers between ``lo`` and ``hi`` (closed unless ``lo_open`` / ``hi_open``)."""
    return Range(lo, hi, lo_open, hi_open)


#: type names an :class:`OptionSpec` uses, from the annotation of the option.
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", type(None): "None",
               tuple: "tuple", list: "list", dict: "dict"}


def _type_names(annotation: Any) -> tuple[str, ...]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return ("any",)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        names: list[str] = []
        for a in typing.get_args(annotation):
            names.extend(n for n in _type_names(a) if n not in names)
        return tuple(names)
    if origin is not None:
        annotation = origin
    if annotation in _TYPE_NAMES:
        return (_TYPE_NAMES[annotation],)
    name = getattr(annotation, "__name__", str(annotation))
    return {"Tensor": ("tensor",), "ndarray": ("array",)}.get(name, (name.lower(),))


@dataclass(frozen=True)
class OptionSpec:
    """One keyword option of a registered method.

    Attributes:
        name: the keyword.
        types: accepted kinds from the signature: ``"int"``, ``"float"``, ``"bool"``, ``"str"``,
            ``"None"``, ``"tuple"``, ``"dict"``, ``"tensor"``, ``"array"``, ``"callable"`` or
            ``"any"``.
        default: the default value.
        range: the numbers it accepts (``None``: takes no numbers).
        choices: the strings it accepts (``None``: any string, checked by the method, or none
            when ``"str"`` is not in ``types``).
        doc: its line from the method's docstring.
    """

    name: str
    types: tuple[str, ...]
    default: Any
    range: Range | None = None
    choices: tuple[str, ...] | None = None
    doc: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for a web form): name, types, default, range bounds, choices, doc."""
        r = self.range
        default = self.default if isinstance(self.default, (str, int, float, bool, type(None))) else repr(
            self.default)
        return {
            "name": self.name,
            "types": list(self.types),
            "default": default,
            "integer": None if r is None else r.integer,
            "min": None if r is None else r.lo,
            "max": None if r is None else r.hi,
            "min_open": None if r is None else r.lo_open,
            "max_open": None if r is None else r.hi_open,
            "choices": None if self.choices is None else list(self.choices),
            "accepts": self.allowed(),
            "doc": self.doc,
        }

    @property
    def numeric(self) -> bool:
        """Whether the option takes numbers."""
        return bool({"int", "float", "any"} & set(self.types))

    def allowed(self) -> str:
        """What the option accepts, in words."""
        parts = []
        if self.range is not None:
            parts.append(self.range.describe())
        if self.choices:
            listed = ", ".join(repr(c) for c in self.choices)
            parts.append(listed if len(self.choices) == 1 else "one of " + listed)
        elif "str" in self.types:
            parts.append("a string")
        if "bool" in self.types:
            parts.append("true or false")
        if "tuple" in self.types and self.range is not None:
            parts.append("a pair of those")
        described = {"int", "float", "str", "bool", "None", "any"} | ({"tuple"} if self.range else set())
        parts.extend(f"{'an' if t[0] in 'aeiou' else 'a'} {t}" for t in self.types if t not in described)
        if "None" in self.types:
            parts.append("null")
        return " or ".join(parts) if parts else "anything"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or ``None`` if it is accepted (objects of other kinds pass)."""
        t = set(self.types)
        if value is None:
            return None if t & {"None", "any"} else "must not be null"
        if isinstance(value, bool):
            return None if t & {"bool", "any"} else f"must be {self.allowed()}"
        if isinstance(value, numbers.Real):
            if self.range is None:
                if t & {"int", "float", "any"}:
                    ok = isinstance(value, numbers.Integral) or math.isfinite(float(value))
                    return None if ok else "must be a finite number"
                return f"must be {self.allowed()}"
            return None if self.range.contains(value) else f"must be {self.allowed()}"
        if isinstance(value, str):
            if not t & {"str", "any"}:
                return f"must be {self.allowed()}"
            if self.choices is not None and value not in self.choices:
                return f"must be {self.allowed()}"
            return None
        if isinstance(value, (tuple, list)) and "tuple" in t and self.range is not None:
            bad = [v for v in value if not self.range.contains(v)]
            return f"must be {self.allowed()}" if bad or len(value) != 2 else None
        if hasattr(value, "dtype") and hasattr(value, "shape") and t & {"tensor", "array", "any"}:
            return None if _finite_array(value) else "holds NaN or infinite values"
        return None


def _finite_array(value: Any) -> bool:
    import numpy as np

    if hasattr(value, "detach"):
        import torch

        return not value.is_floating_point() or bool(torch.isfinite(value.detach()).all())
    a = np.asarray(value)
    return a.dtype.kind not in "fc" or bool(np.isfinite(a).all())


_ARG_LINE = re.compile(r"^\s{4,8}([A-Za-z_][\w, ]*):\s*(.*)$")


def _arg_docs(func: Callable[..., Any]) -> dict[str, str]:
    """``{name: first sentence}`` from a Google-style ``Args:`` section."""
    doc = inspect.getdoc(func) or ""
    out: dict[str, str] = {}
    in_args = False
    last: list[str] = []
    for line in doc.splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break
        if not in_args:
            continue
        m = _ARG_LINE.match("    " + line)
        if m and line.startswith("    ") and not line.startswith("     "):
            last = [n.strip() for n in m.group(1).split(",")]
            for n in last:
                out[n] = m.group(2).strip()
        elif line.strip() and last:
            for n in last:
                out[n] += " " + line.strip()
    return out


def option_specs(
    func: Callable[..., Any],
    ranges: Mapping[str, Range] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> list[OptionSpec]:
    """The :class:`OptionSpec` of each keyword option of a method function (``ctx`` excluded)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not evaluate: fall back to "any"
        hints = {}
    docs = _arg_docs(func)
    ranges = ranges or {}
    choices = choices or {}
    specs = []
    for p in list(inspect.signature(func).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        c = choices.get(p.name)
        kinds = _type_names(hints.get(p.name, p.annotation if not isinstance(p.annotation, str)
                                      else inspect.Parameter.empty))
        rng = ranges.get(p.name)
        if rng is None and {"int", "float", "any"} & set(kinds):  # undeclared: finite, integer if int
            rng = Range(integer="float" not in kinds and "any" not in kinds)
        specs.append(OptionSpec(
            name=p.name,
            types=kinds,
            default=None if p.default is inspect.Parameter.empty else p.default,
            range=rng,
            choices=None if c is None else tuple(c),
            doc=docs.get(p.name, ""),
        ))
    return specs


def check_options(what: str, specs: Sequence[OptionSpec], options: Mapping[str, Any]) -> None:
    """Raise :class:`~convscope.core.errors.InputError` on the first option value its spec refuses.

    Names without a spec are left to the caller (unknown options are reported elsewhere).
    """
    by_name = {s.name: s for s in specs}
    for name, value in options.items():
        spec = by_name.get(name)
        if spec is None:
            continue
        why = spec.problem(value)
        if why is not None:
            raise InputError(f"{what} option {name}={_show(value)}: {why}")


def _show(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} {tuple(value.shape)}>"
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def check_values(**values: tuple[Any, Range]) -> None:
    """Raise :class:`~convscope.core.errors.InputError` for the first ``name=(value, range)`` whose value
    the range refuses: ``"steps must be an integer >= 1, got 0"`` (for a function's own arguments)."""
    for name, (value, rng) in values.items():
        if not rng.contains(value):
            raise InputError(f"{name} must be {rng.describe()}, got {_show(value)}")


def split_names(value: str | Sequence[str] | None) -> list[str]:
    """Names from a comma list (``"a, b,,c"``) or a sequence of names, blanks dropped: the one
    parser of the CLI's and the web app's ``methods=``/``metrics=`` fields."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s and s.strip()]
