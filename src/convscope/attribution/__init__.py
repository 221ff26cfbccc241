"""Attribution methods. Each module registers its methods on import."""

from . import gradients  # noqa: F401
from ._base import MethodContext, MethodOutput

__all__ = ["MethodContext", "MethodOutput"]
