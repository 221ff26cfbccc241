"""Errors raised by convscope.

Every error derives from :class:`ConvscopeError`. Messages say what was wrong, what was
expected and what to try, in one line, so the CLI can print them as they are.
"""

from __future__ import annotations

__all__ = [
    "AssumptionWarning",
    "CodeWarning",
    "ConvscopeError",
    "ConvscopeWarning",
    "ImageLoadError",
    "InputError",
    "LayerNotFoundError",
    "MethodError",
    "ModelLoadError",
    "TargetError",
    "UnreliableResultWarning",
    "UnsafeLoadError",
]


class ConvscopeError(Exception):
    """Base class of every error convscope raises on purpose."""


class InputError(ConvscopeError, ValueError):
    """An argument has the wrong type, shape or value."""


class ImageLoadError(InputError):
    """A file or object could not be read as an image."""


class LayerNotFoundError(InputError, KeyError):
    """A layer name or pattern matched no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MethodError(InputError):
    """A method was unknown, or cannot run on this model or input."""


class ModelLoadError(ConvscopeError):
    """A model spec or weights file could not be loaded."""


class UnsafeLoadError(ModelLoadError):
    """A weights file would need unpickling arbitrary objects, and the caller did not opt in."""


class TargetError(InputError):
    """A target could not be resolved to class indices or scores."""


class ConvscopeWarning(UserWarning):
    """Base class of the warnings convscope gives on purpose (the CLI prints each as one line)."""


class AssumptionWarning(ConvscopeWarning):
    """convscope had to assume something about a model (e.g. its preprocessing); the message says
    what, and how to state it instead."""


class CodeWarning(ConvscopeWarning):
    """convscope is about to run Python code named by a model card or ``arch=`` (a ``file.py:Class``
    architecture); said once per file and process, so a user sees that a card is code."""


class UnreliableResultWarning(ConvscopeWarning):
    """A result's own diagnostics say it is unreliable (e.g. RISE's predicted run-to-run
    correlation, LIME's surrogate fit, the integrated-gradients completeness gap, a constant map);
    the message says which image, which number, the threshold and what to try. The verdict is in
    ``diagnostics["reliable"]`` and ``diagnostics["unreliable_because"]``."""
