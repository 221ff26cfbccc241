"""convscope: see what a trained image classifier has learned and why it decides as it does.

Every task's entry point is here, each taking ``(model, inputs, ...)`` and returning a result that
saves itself by extension, renders as HTML and shows inline in notebooks (``convscope.core.result``):

* explain: :func:`explain`; several classes or methods side by side: :func:`explain_classes`,
  :func:`explain_methods`; a whole HTML report: :func:`explain_report` (add any result to a
  :class:`Report` with ``Report.add``); text: :func:`explain_text` (LIME). Several methods on the
  same images inside ``with shared_work():`` compute their common passes once
  (:func:`shared_work`).
* feature visualisation: :func:`visualize`, :func:`visualize_class`, :func:`visualize_layer`,
  :func:`deepdream`, :func:`filters`, :func:`activation_maps` (objectives and parameterisations:
  :mod:`convscope.methods.featvis`).
* synthesis: :func:`attack`, :func:`fgsm`, :func:`pgd`, :func:`fooling_image`, :func:`invert`,
  :func:`inversion_strip`, :func:`texture`, :func:`style_transfer`, :func:`efros_leung`.
* data-set views: :func:`top_activations`, :func:`nearest_neighbors`, :func:`embed`, and the
  shortcut :func:`audit` (sources, receptive fields: :mod:`convscope.methods.dataset`).
* concept tests: :func:`concept_test` (TCAV with a p-value; :mod:`convscope.methods.tcav`); concept
  relevance: :func:`concepts` (CRP on LRP: the channels behind one decision, :mod:`convscope.methods.crp`),
  :func:`concept_atlas` (reference patches of every channel of a layer over a data set).
* evaluation of explanations: the one subpackage :mod:`convscope.methods.evaluation` (pointing game,
  deletion / insertion, sanity checks, sensitivity, sparsity, the planted-cue benchmark) and
  :func:`evaluate`, the method x metric table of the whole metric catalogue.
* bundled data sets (digits, planted cues, snow scenes, watermarks, a text corpus):
  :mod:`convscope.data.toydata` (old paths ``convscope.toydata`` and ``convscope.datasets`` work).

The package is laid out in layer folders, each importing only the ones below it (``docs/design.md``,
checked by ``lint-imports``): ``core`` (errors, io, validation, images, targets, hooks, the result
protocol), ``data`` (toy data and data-set sources), ``models``, ``engines`` (perturbation and
optimisation), ``methods`` (the registry, attribution, feature visualisation, synthesis, evaluation,
data-set views and the audit, concept tests) and ``frontends`` (report, web app, CLI, demo). Module
paths of the earlier flat layout (``convscope.api``, ``convscope.attribution.cam``, ...) keep
working (:mod:`convscope.core.aliases`).

Extending convscope (``register`` a method, ``count_hooks``) is done from the owning modules,
:mod:`convscope.methods.registry` and :mod:`convscope.core.hooks`.
"""

from convscope.core.aliases import install as _install_aliases
from convscope.core.aliases import old_attribute as __getattr__  # noqa: F401  (cs.errors, cs.hooks, ...: old paths)
from convscope.core.errors import ConvscopeError
from convscope.core.hooks import capture, resolve_layers
from convscope.core.image import load_image
from convscope.core.results import Explanation
from convscope.core.targets import contrast, resolve_target
from convscope.core.version import __version__
from convscope.data import toydata
from convscope.frontends.report import Report, explain_report
from convscope.methods import evaluation
from convscope.methods.attribution._shared import shared_work
from convscope.methods.attribution.lime_text import TextExplanation, explain_text
from convscope.methods.crp import (
    ConceptAtlas,
    ConceptRelevance,
    cluster_concepts,
    concept_atlas,
    concepts,
    load_atlas,
)
from convscope.methods.dataset import (
    Audit,
    Embedding,
    Neighbors,
    TopActivations,
    audit,
    embed,
    nearest_neighbors,
    top_activations,
)
from convscope.methods.evaluation.grid import MetricTable, evaluate
from convscope.methods.explain import explain
from convscope.methods.featvis import (
    Visualization,
    activation_maps,
    deepdream,
    filters,
    visualize,
    visualize_class,
    visualize_layer,
)
from convscope.methods.grids import Grid, explain_classes, explain_methods
from convscope.methods.registry import MethodInfo, get_method, list_methods, method_names
from convscope.methods.synthesis import (
    AdversarialResult,
    SynthesisResult,
    attack,
    efros_leung,
    fgsm,
    fooling_image,
    inversion_strip,
    invert,
    pgd,
    style_transfer,
    texture,
)
from convscope.methods.tcav import ConceptTest, concept_test
from convscope.models import LoadedModel, Preprocessing, load_model, model_factory

datasets = toydata  # the old name of convscope.toydata
_install_aliases()  # old module paths (convscope.api, convscope.attribution.cam, ...) keep working

__all__ = [
    "AdversarialResult",
    "Audit",
    "ConceptAtlas",
    "ConceptRelevance",
    "ConceptTest",
    "ConvscopeError",
    "Embedding",
    "Explanation",
    "Grid",
    "LoadedModel",
    "MethodInfo",
    "MetricTable",
    "Neighbors",
    "Preprocessing",
    "Report",
    "SynthesisResult",
    "TextExplanation",
    "TopActivations",
    "Visualization",
    "__version__",
    "activation_maps",
    "attack",
    "audit",
    "capture",
    "concept_test",
    "cluster_concepts",
    "concept_atlas",
    "concepts",
    "load_atlas",
    "contrast",
    "datasets",
    "deepdream",
    "efros_leung",
    "embed",
    "evaluate",
    "evaluation",
    "explain",
    "explain_classes",
    "explain_methods",
    "explain_report",
    "explain_text",
    "fgsm",
    "filters",
    "fooling_image",
    "get_method",
    "inversion_strip",
    "invert",
    "list_methods",
    "load_image",
    "load_model",
    "method_names",
    "model_factory",
    "nearest_neighbors",
    "pgd",
    "resolve_layers",
    "resolve_target",
    "shared_work",
    "style_transfer",
    "texture",
    "top_activations",
    "toydata",
    "visualize",
    "visualize_class",
    "visualize_layer",
]
