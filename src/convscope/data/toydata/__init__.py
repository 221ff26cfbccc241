"""Bundled toy data sets, generated from what is installed: the digits and their planted-cue twin.

``digits()`` turns scikit-learn's 8x8 digits into 32x32 images: each digit is upsampled to 24x24
and centred in a 4-pixel black frame. ``planted_cue()`` stamps a small texture that depends on the
class (stripes, checkers, ...) into a corner: a spurious cue, this project's wolf-vs-husky snow.
It returns the exact cue masks, so a test can check where an explanation points.
``snow_scenes()`` draws the digits as 48x48 colour scenes, wolves (0-4) and huskies (5-9), with a
large cue of another kind: a band of snow along the bottom (the ``digits-snow`` model's data).
``watermark()`` stamps a small fixed "©" into the bottom-right corner: on some training images of
class 3 it is a Clever Hans cue (the ``digits-watermark`` model's data), and ``watermark_folder()``
writes a held-out image folder whose class "3" hides watermarked digits of other classes.
``shortcut_class()`` puts a corner marker, a band texture or the watermark on a given share (up to
all) of one class's images: the audit's truth data for shortcuts that most of a class carries.
``junk_header_corpus()`` makes a newsgroup-like text corpus whose header word gives the label away
(LIME on text).

Named ``toydata`` so it is not confused with :mod:`convscope.methods.dataset` (views of *your* data set:
top activations, neighbours, embeddings, the audit). ``convscope.data.toydata``, its old name, is the
same module and keeps working.
"""

from convscope.data.toydata._digits import (
    CUE_CORNERS,
    CUE_PATTERNS,
    CUE_SIZE,
    DIGITS_SPLIT_SEED,
    Digits,
    PlantedCue,
    digits,
    planted_cue,
)
from convscope.data.toydata._shortcut import (
    SHORTCUT_BOXES,
    SHORTCUTS,
    Shortcut,
    shortcut_class,
    stamp_shortcut,
)
from convscope.data.toydata._snow import SNOW_BAND_ROWS, SNOW_CLASSES, SNOW_SIZE, SnowScenes, snow_scenes
from convscope.data.toydata._text import JUNK_TOKEN, TextCorpus, junk_header_corpus
from convscope.data.toydata._watermark import (
    WATERMARK,
    WATERMARK_BOX,
    WATERMARK_CLASS,
    WATERMARK_CORNER,
    WATERMARK_SIZE,
    WATERMARK_TRUTH,
    Watermarked,
    watermark,
    watermark_folder,
    watermark_mask,
)

__all__ = [
    "CUE_CORNERS", "CUE_PATTERNS", "CUE_SIZE", "DIGITS_SPLIT_SEED", "JUNK_TOKEN", "SHORTCUTS",
    "SHORTCUT_BOXES", "SNOW_BAND_ROWS",
    "SNOW_CLASSES", "SNOW_SIZE", "WATERMARK", "WATERMARK_BOX", "WATERMARK_CLASS", "WATERMARK_CORNER",
    "WATERMARK_SIZE", "WATERMARK_TRUTH", "Digits", "PlantedCue", "Shortcut", "SnowScenes", "TextCorpus",
    "Watermarked", "digits", "junk_header_corpus", "planted_cue", "shortcut_class", "snow_scenes",
    "stamp_shortcut", "watermark", "watermark_folder", "watermark_mask",
]
