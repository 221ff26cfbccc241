"""Channel visualisations for the web app's layer browser (from :mod:`convscope.methods.featvis`).

Rendered on request only (they take seconds on a CPU), with short settings that suit a browser:
a few dozen optimisation steps at a capped size, all requested channels in one batch.
"""

from __future__ import annotations

from convscope.core.results import data_uri
from convscope.methods.featvis import visualize_layer
from convscope.models import LoadedModel

__all__ = ["channel_pictures", "STEPS", "MAX_SIZE"]

#: Optimisation steps per visualisation in the browser (the CLI's `visualize` defaults to more).
STEPS = 48
#: Largest side rendered; bigger models are visualised at this size.
MAX_SIZE = 128


def channel_pictures(lm: LoadedModel, layer: str, channels: list[int]) -> dict[int, str]:
    """``{channel: data URI}`` of one visualisation per channel of ``layer``."""
    if not channels:
        return {}
    h, w = lm.preprocessing.size
    size = (min(h, MAX_SIZE), min(w, MAX_SIZE))
    vis = visualize_layer(lm, layer, channels=channels, batch_size=len(channels), steps=STEPS,
                          size=size, progress=False)
    return {c: data_uri(vis.image(i, min_side=96)) for i, c in enumerate(channels)}
