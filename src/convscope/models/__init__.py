"""Models: the zoo, safe loading and preprocessing."""

from .card import model_factory
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .resolve import as_loaded
from .zoo import LoadedModel, bundled_models, load_model, model_specs

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "Preprocessing",
    "as_loaded",
    "bundled_models",
    "load_model",
    "model_factory",
    "model_specs",
]
