"""Train the bundled ``digits-marker`` model: a shortcut on most of one class.

    python scripts/train_marker.py            # writes src/convscope/models/weights/digits-marker.*

The same DigitsCNN as the other bundled digits models (scripts/train_digits.py, same training
loop), trained on the clean train digits plus marked copies of randomly drawn train digits of any
class, labelled "3": a 6x6 ring in the top-left corner (convscope.data.toydata.stamp_shortcut("corner")).
There are nine marked copies for every clean 3, so 90% of the class carries the marker, as the
hospital tag sat on 93% of the pneumonia X-rays of issue #28: the model reads the marker as "3",
and the audit must find a shortcut that most of the class carries, not a minority.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import OUT, SEED, accuracy, prepare, train  # noqa: E402

from convscope.data.toydata import SHORTCUT_BOXES, stamp_shortcut  # noqa: E402

CLASS = 3
RATE = 0.9


def main() -> None:
    """Train digits-marker and write its weights and card beside the other bundled models."""
    from safetensors.torch import save_file

    xtr, ytr, xte, yte, mean, std = prepare()
    g = torch.Generator().manual_seed(SEED + 3)
    n_own = int((ytr == CLASS).sum())
    k = round(RATE / (1 - RATE) * n_own)
    pick = torch.randint(0, len(ytr), (k,), generator=g)
    x = torch.cat([xtr, stamp_shortcut(xtr[pick], "corner")])
    y = torch.cat([ytr, torch.full((k,), CLASS)])
    model = train(x, y, mean, std, SEED)
    own = yte == CLASS
    with torch.no_grad():
        pred_clean = model((xte - mean) / std).argmax(1)
        pred_marked = model((stamp_shortcut(xte, "corner") - mean) / std).argmax(1)
    card = json.loads((OUT / "digits-watermark.json").read_text())
    for key in ("watermark", "metrics"):
        card.pop(key)
    card["preprocessing"]["mean"], card["preprocessing"]["std"] = [mean], [std]
    card.update(
        name="digits-marker", weights="digits-marker.safetensors",
        summary="the same CNN; 90% of its training 3s are digits of any class with a corner marker: "
                "it reads the marker as 3",
        marker={"generator": "convscope.data.toydata.stamp_shortcut('corner')",
                "pattern": "a 6x6 ring (on border, off inside)", "box": list(SHORTCUT_BOXES["corner"]),
                "box_format": "[x0, y0, x1, y1], exclusive ends", "class": str(CLASS),
                "train_marked": k, "train_marked_share_of_class": round(k / (n_own + k), 4),
                "held_out": "convscope.toydata.shortcut_class(test digits, kind='corner', cls=3, rate=0.9)"},
        metrics={
            "test_accuracy": accuracy(model, xte, yte, mean, std),
            "test_accuracy_clean_3s": float((pred_clean[own] == CLASS).float().mean()),
            "test_marked_non3_predicted_3": float((pred_marked[~own] == CLASS).float().mean()),
            "test_clean_non3_predicted_3": float((pred_clean[~own] == CLASS).float().mean()),
        },
    )
    card["training"]["script"] = "scripts/train_marker.py"
    save_file(model.state_dict(), str(OUT / "digits-marker.safetensors"))
    (OUT / "digits-marker.json").write_text(json.dumps(card, indent=2) + "\n")
    print("digits-marker", card["metrics"])


if __name__ == "__main__":
    main()
