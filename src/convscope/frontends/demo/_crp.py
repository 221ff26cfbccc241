"""The demo's concept-relevance section: *what* the snow detector saw (LRP and CRP on ``digits-snow``).

A heatmap says where a decision came from; the concepts of the last convolution say what carried
it: for a wolf scene, the channels with the most relevance, each with its conditional heatmap (where
the concept sits) and the patches of other wolf scenes where it carries the most relevance and
where it is most active (what it is). The same scene without its snow is shown beside it.
"""

from __future__ import annotations

import torch

from convscope.core.document import Report
from convscope.core.errors import MethodError

#: the layer, the number of concepts and of reference scenes the demo uses
LAYER, K, N_REFERENCES = "conv4", 3, 200


def band_share(heatmap: torch.Tensor, top: int) -> float:
    """The share of a (H, W) heatmap's positive relevance in rows ``top:`` (the snow band)."""
    from convscope.methods.evaluation.pointing import cue_mass

    band = torch.zeros_like(heatmap, dtype=torch.bool)
    band[top:] = True
    return float(cue_mass(heatmap[None], band[None])[0])


def crp_section(rep: Report) -> None:
    """Add the concepts of ``digits-snow`` for one wolf scene, with and without its snow, to ``rep``
    (a one-line section saying what to install where zennit is missing)."""
    from convscope.data.toydata import snow_scenes
    from convscope.methods.crp import concepts

    scenes = snow_scenes("test")
    wolves = scenes.images[scenes.labels == 0]
    bare = snow_scenes("test", cue="none").images[scenes.labels == 0]
    try:
        res = concepts("digits-snow", wolves[0], layer=LAYER, k=K, references=wolves[1:1 + N_REFERENCES])
    except MethodError as e:  # zennit missing: say so instead of a section of errors
        rep.section("What the snow detector saw: concepts (LRP, CRP)", f"Not shown: {e}")
        return
    top = wolves.shape[-2] * 2 // 3  # the band covers the bottom 12 to 16 of 48 rows
    shares = ", ".join(f"{c.name}: {band_share(c.heatmap, top):.2f}" for c in res.concepts)
    rep.add(res, title="What the snow detector saw: concepts of digits-snow (LRP, CRP)", note=(
        f"The {K} channels of {LAYER} (digits-snow's last convolution) with the most LRP relevance "
        f"for this scene's decision, each with its share of the relevance and its conditional heatmap "
        f"(where the concept sits); below, the patches of {N_REFERENCES} other wolf scenes where the "
        f"concept carries the most relevance and where it is most active (what it is). Share of each "
        f"concept's positive relevance on the bottom third of the scene, where the snow lies: {shares}. "
        "Relevance maximisation samples the single strongest unit, which for a concept spread over "
        "a large region (snow) sits at the band's edge; read the heatmaps and the activation "
        "patches (docs/lrp.md). `convscope concepts` and the web app's /crp page show this for any "
        "image."))
    without = concepts("digits-snow", bare[0], layer=LAYER, k=K)
    rep.add(without, title="The same scene without its snow", note=(
        f"Only the band differs from the scene above (snow_scenes(cue='none')): the model now says "
        f"{without.target_name!r}, and other concepts carry the decision."))

