"""Feature visualisation: images that show what a unit, a layer or a class responds to.

Lucid's ``optvis`` split in four parts, with one optimisation loop
(:func:`convscope.engines.optimize.optimize`) under all of them:

* :mod:`.objectives`: what to maximise, as values combining with ``+ - *``;
* :mod:`.param`: how the image is parameterised (pixels, FFT, decorrelated colour);
* :mod:`.transforms`: random jitter / scale / rotation and blur, and regularisers;
* :mod:`.render`: the facades :func:`visualize`, :func:`visualize_layer`,
  :func:`visualize_class`, :func:`deepdream`, :func:`filters` and :func:`activation_maps`,
  returning a :class:`Visualization`.
"""

from convscope.methods.featvis import objectives, param, transforms
from convscope.methods.featvis.deepdream import deepdream
from convscope.methods.featvis.objectives import (
    Objective,
    as_objective,
    channel,
    class_logit,
    class_prob,
    direction,
    diversity,
    l2,
    neuron,
    total_variation,
)
from convscope.methods.featvis.objectives import (
    deepdream as deepdream_objective,
)
from convscope.methods.featvis.param import ColorDecorrelation, FFTImage, PixelImage
from convscope.methods.featvis.render import (
    activation_maps,
    filters,
    visualize,
    visualize_class,
    visualize_layer,
)
from convscope.methods.featvis.result import Visualization

__all__ = [
    "ColorDecorrelation",
    "FFTImage",
    "Objective",
    "PixelImage",
    "Visualization",
    "activation_maps",
    "as_objective",
    "channel",
    "class_logit",
    "class_prob",
    "deepdream",
    "deepdream_objective",
    "direction",
    "diversity",
    "filters",
    "l2",
    "neuron",
    "objectives",
    "param",
    "total_variation",
    "transforms",
    "visualize",
    "visualize_class",
    "visualize_layer",
]
