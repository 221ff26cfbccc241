"""Models: the zoo, safe loading and preprocessing."""

from convscope.models.card import model_factory
from convscope.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convscope.models.resolve import as_loaded
from convscope.models.zoo import LoadedModel, bundled_models, load_model, model_specs

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
