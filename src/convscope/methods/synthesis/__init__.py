"""Images made by gradients: adversarial and fooling images, feature inversion, textures, style.

* :mod:`.adversarial`: FGSM, PGD / iterative FGSM (L-infinity, L2; untargeted, targeted) and
  fooling images, with budgets in pixel units.
* :mod:`.inversion`: feature inversion (Mahendran and Vedaldi) and strips from shallow to deep.
* :mod:`.texture`: Gram-matrix texture synthesis and style transfer (Gatys et al.).
* :mod:`.efros_leung`: classical non-parametric texture synthesis (Efros and Leung), vectorised.

Inversion, texture and style run on convscope's one input-optimisation loop,
:func:`convscope.engines.optimize.optimize`. Results render themselves (:mod:`.results`).
"""

from convscope.methods.synthesis.adversarial import attack, fgsm, fooling_image, pgd
from convscope.methods.synthesis.efros_leung import efros_leung
from convscope.methods.synthesis.inversion import inversion_strip, invert, ssim
from convscope.methods.synthesis.results import AdversarialResult, SynthesisResult, magnify
from convscope.methods.synthesis.texture import style_model, style_transfer, texture

__all__ = [
    "AdversarialResult",
    "SynthesisResult",
    "attack",
    "efros_leung",
    "fgsm",
    "fooling_image",
    "inversion_strip",
    "invert",
    "magnify",
    "pgd",
    "ssim",
    "style_model",
    "style_transfer",
    "texture",
]
