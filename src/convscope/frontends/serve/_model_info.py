"""What the web app shows of a model before any request: the bundled sample images and the layers
that a CAM can use (run once per model, at start-up)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.models import LoadedModel

__all__ = ["samples", "spatial_layers"]


def samples() -> list[tuple[str, Image.Image]]:
    """Bundled sample images: test digits, clean and with the planted cue (generated, not files)."""
    from convscope.data.toydata import digits, planted_cue
    from convscope.models.preprocessing import display_array

    x, y = digits().split("test")
    picks: list[int] = []
    for cls in range(10):  # one digit per class, the first of each in the test split
        picks.append(int((y == cls).nonzero()[0, 0]))
    cue = planted_cue(x[picks], y[picks])
    out = []
    for k, i in enumerate(picks):
        for label, img in ((f"digit {int(y[i])}", x[i]), (f"digit {int(y[i])} + cue", cue.images[k])):
            a = (display_array(img)[..., 0] * 255 + 0.5).astype(np.uint8)
            out.append((label, Image.fromarray(a, "L")))
    return out


def spatial_layers(lm: LoadedModel) -> list[dict[str, Any]]:
    """Layers that output a (B, C, H, W) map and run once per forward pass, with their shapes,
    and the model's default layer whatever its output (``"spatial"`` says which).

    Fills in the default layer of a generic model (a plain ``nn.Module``), which
    :func:`~convscope.explain` would otherwise find only at the first request, so the page can
    show the layer the API uses.
    """
    from convscope.core.hooks import capture, layer_names

    net = lm.model
    pre = lm.preprocessing
    x = torch.zeros(1, pre.channels, *pre.size)
    lm.fill_from_input(x)
    p = next(net.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    with capture(net, layer_names(net)) as cap, torch.no_grad():
        net(x)
        acts = cap.activations
        kinds = {n: type(m).__name__ for n, m in cap.modules.items()}
    out = []
    for name, a in acts.items():
        spatial = a.ndim == 4 and min(a.shape[2:]) >= 1
        if spatial or name == lm.default_layer:
            out.append({"name": name, "type": kinds.get(name, ""), "shape": list(a.shape[1:]),
                        "default": name == lm.default_layer, "spatial": spatial})
    return out
