"""Dataset views: what a layer responds to across a whole data set.

* :func:`top_activations`: the most activating images per channel, with the exact receptive-field
  patch behind each activation (streamed, bounded memory).
* :func:`nearest_neighbors`: a query image's nearest images in a layer's pooled feature space.
* :func:`embed`: PCA / t-SNE / UMAP maps of a layer's features, as a class-coloured scatter or a
  map of thumbnails.
* :func:`audit`: a model's strategies per class (spectral clustering of attribution maps, SpRAy)
  and the clusters that look like shortcuts.
* :func:`receptive_field`: the exact receptive field of a conv/pool stack's units.
* Sources (:func:`as_source`): ``"digits"``, an image folder (class sub-folders give labels), a
  torch ``Dataset``, a tensor.
"""

from convscope.data import sources  # noqa: F401  (cs.dataset.sources: where the sources were)
from convscope.data.base import DataSource
from convscope.data.sources import DigitsSource, FolderSource, TensorSource, TorchSource, as_source
from convscope.methods.dataset._audit import Audit, AuditClass, AuditCluster, audit
from convscope.methods.dataset._settings import AuditSettings
from convscope.methods.dataset.embed import EMBED_METHODS, Embedding, embed, project
from convscope.methods.dataset.neighbors import (
    Features,
    Neighbors,
    layer_features,
    nearest_neighbors,
    pool_features,
)
from convscope.methods.dataset.receptive import ReceptiveField, layer_extractor, receptive_field
from convscope.methods.dataset.top import TopActivations, top_activations

__all__ = [
    "EMBED_METHODS",
    "Audit",
    "AuditClass",
    "AuditCluster",
    "AuditSettings",
    "DataSource",
    "DigitsSource",
    "Embedding",
    "Features",
    "FolderSource",
    "Neighbors",
    "ReceptiveField",
    "TensorSource",
    "TopActivations",
    "TorchSource",
    "as_source",
    "audit",
    "embed",
    "layer_extractor",
    "layer_features",
    "nearest_neighbors",
    "pool_features",
    "project",
    "receptive_field",
    "top_activations",
]
