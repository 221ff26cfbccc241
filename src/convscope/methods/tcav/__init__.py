"""Concept methods: what a model's layers encode, named by examples of a concept.

* :func:`concept_test`: TCAV (Kim et al. 2018) with the random-set significance test: does the
  model use a concept (a folder of examples, tensors, or image regions) to predict a class?
  Returns a :class:`ConceptTest`.
* :func:`regions`: pair images with masks to make a concept of image regions.
"""

from convscope.methods.tcav._cav import CAV_KINDS, NULLS, STATISTICS, LayerTest
from convscope.methods.tcav._sets import regions
from convscope.methods.tcav.result import ConceptTest
from convscope.methods.tcav.tcav import CONCEPT_RANGES, concept_test

__all__ = ["CAV_KINDS", "CONCEPT_RANGES", "NULLS", "STATISTICS", "ConceptTest", "LayerTest", "concept_test",
           "regions"]
