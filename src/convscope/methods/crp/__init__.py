"""Concept relevance (CRP): which channels of a layer carried a decision, where, and what they show.

:func:`concepts` (also ``convscope.methods.tcav``) returns a :class:`ConceptRelevance`: the ``k``
concepts of a layer with the most LRP relevance for one decision, each with its share, its
conditional heatmap (computed in batched backward passes) and optionally its reference patches
from a data set (relevance and activation maximisation). :func:`concept_atlas` computes the
reference patches of every channel of a layer over a whole data set as a resumable job
(:class:`ConceptAtlas`); ``concepts(..., atlas=)`` reuses one. Needs zennit (``pip install
'convscope[lrp]'``).
"""

from convscope.methods.crp._conditional import conditional_relevance, layer_relevance, relevance_passes
from convscope.methods.crp.api import concepts
from convscope.methods.crp.atlas import AtlasJob, concept_atlas, load_atlas
from convscope.methods.crp.atlas_result import ConceptAtlas
from convscope.methods.crp.audit import ClusterConcepts, SuspectConcepts, cluster_concepts
from convscope.methods.crp.result import Concept, ConceptRelevance

__all__ = ["AtlasJob", "ClusterConcepts", "Concept", "ConceptAtlas", "ConceptRelevance", "SuspectConcepts",
           "cluster_concepts", "concept_atlas", "concepts", "conditional_relevance", "layer_relevance",
           "load_atlas", "relevance_passes"]
