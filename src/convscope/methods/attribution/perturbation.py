"""The perturbation methods, gathered under one name (each lives in its own module).

All of them hide parts of the input (or of a layer's activations), run the model and watch the
target score ``S`` move, on one engine (:mod:`convscope.engines.perturb` for the chunked evaluation,
:mod:`._engine` for the per-run scaffold and the four engine options ``eval_batch_size``,
``progress``, ``channels_last``, ``compile``):

* :func:`occlusion` (:mod:`.occlusion`): sliding windows; incremental exact inference by default
  where the model traces.
* :func:`rise` (:mod:`.rise`): random smooth masks.
* :func:`lime`, :func:`lime_picture` (:mod:`.lime`) and :func:`kernel_shap` (:mod:`.kernel_shap`)
  on the superpixels of :func:`segment` (:mod:`.segments`), sharing one sample-fit-converge loop
  (:mod:`._surrogate`) with LIME for text.
* :func:`scorecam`, :func:`ablationcam` (:mod:`.scorecam`).

``score="raw"`` reads the model's output as it is (logits for a torch classifier, whatever a
black box returns); ``score="softmax"`` reads its softmax probability. A callable target always
receives the raw outputs. Random methods draw from a generator seeded with ``seed``, the same
draws for every image of a batch, so a result does not depend on where an image sits in its
batch or on ``eval_batch_size``.

What ran is in ``diagnostics["engine"]`` (``incremental``, ``channels_last``, ``batch_size``,
``compile``). RISE and Kernel SHAP stop sampling once the estimate is stable (``converge``,
default :data:`convscope.engines.perturb.DEFAULT_CONVERGE`; ``None`` or 0 uses every sample), LIME once
the predicted seed-to-seed rank correlation of its weights reaches ``1 - converge`` (default
:data:`.lime.LIME_CONVERGE`); ``diagnostics["stability"]`` holds the last correlation of two
successive estimates, ``diagnostics["reliability"]`` the split-half prediction of two runs'
correlation, ``diagnostics["n_samples"]`` the samples used.
"""

from convscope.methods.attribution.kernel_shap import kernel_shap
from convscope.methods.attribution.lime import lime, lime_picture
from convscope.methods.attribution.occlusion import occlusion
from convscope.methods.attribution.rise import rise
from convscope.methods.attribution.scorecam import ablationcam, scorecam
from convscope.methods.attribution.segments import segment

__all__ = [
    "ablationcam",
    "kernel_shap",
    "lime",
    "lime_picture",
    "occlusion",
    "rise",
    "scorecam",
    "segment",
]
