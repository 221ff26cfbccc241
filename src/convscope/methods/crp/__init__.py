"""Concept relevance (CRP): which channels of a layer carried a decision, where, and what they show.

:func:`concepts` (also ``convscope.methods.tcav``) returns a :class:`ConceptRelevance`: the ``k``
concepts of a layer with the most LRP relevance for one decision, each with its share, its
conditional heatmap (computed in batched backward passes) and optionally its reference patches
from a data set (relevance and activation maximisation). Needs zennit (``pip install
'convscope[lrp]'``).
"""

from convscope.methods.crp._conditional import conditional_relevance, layer_relevance, relevance_passes
from convscope.methods.crp.api import concepts
from convscope.methods.crp.result import Concept, ConceptRelevance

__all__ = ["Concept", "ConceptRelevance", "concepts", "conditional_relevance", "layer_relevance",
           "relevance_passes"]
