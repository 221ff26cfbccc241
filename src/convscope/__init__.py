"""convscope: see what a trained image classifier has learned and why it decides as it does."""

from . import datasets
from .api import explain
from .dataset import Audit, audit
from .errors import ConvscopeError
from .featvis import Visualization, visualize, visualize_class, visualize_layer
from .hooks import capture, count_hooks, resolve_layers
from .image import load_image
from .models import LoadedModel, Preprocessing, load_model
from .registry import MethodInfo, get_method, list_methods, method_names, register
from .results import Explanation
from .targets import contrast, resolve_target

__version__ = "0.1.0"

__all__ = [
    "Audit",
    "ConvscopeError",
    "Explanation",
    "LoadedModel",
    "MethodInfo",
    "Preprocessing",
    "Visualization",
    "__version__",
    "audit",
    "capture",
    "contrast",
    "count_hooks",
    "datasets",
    "explain",
    "get_method",
    "list_methods",
    "load_image",
    "load_model",
    "method_names",
    "register",
    "resolve_layers",
    "resolve_target",
    "visualize",
    "visualize_class",
    "visualize_layer",
]
