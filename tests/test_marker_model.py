"""The bundled ``digits-marker``: a corner marker on 90% of its training 3s (scripts/train_marker.py).

Its card's numbers are recomputed here, and the audit finds the marker on most of class 3 of
held-out digits, flagged by the class comparison and confirmed by intervention.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.data.toydata import SHORTCUT_BOXES, digits, shortcut_class, stamp_shortcut
from convscope.methods.dataset import TensorSource

WEIGHTS = Path(cs.__file__).parent / "models" / "weights"


@pytest.fixture(scope="module")
def marker():
    return cs.load_model("digits-marker")


def test_card_numbers_hold_and_the_weights_are_small(marker):
    card = json.loads((WEIGHTS / "digits-marker.json").read_text())
    assert (WEIGHTS / card["weights"]).stat().st_size < 1_000_000
    assert card["marker"]["box"] == list(SHORTCUT_BOXES["corner"]) and card["marker"]["class"] == "3"
    x, y = digits().split("test")
    pre = marker.preprocessing
    with torch.no_grad():
        clean = marker.model(pre.normalize(x)).argmax(1)
        marked = marker.model(pre.normalize(stamp_shortcut(x, "corner"))).argmax(1)
    m = card["metrics"]
    assert float((clean == y).float().mean()) == pytest.approx(m["test_accuracy"], abs=1e-6)
    follows = float((marked[y != 3] == 3).float().mean())
    assert follows == pytest.approx(m["test_marked_non3_predicted_3"], abs=1e-6)
    assert m["test_marked_non3_predicted_3"] > 0.95 and m["test_accuracy"] > 0.85


def test_audit_finds_the_marker_on_most_of_class_3_and_proves_it(marker):
    x, y = digits().split("test")
    s = shortcut_class(x, y, kind="corner", cls=3, rate=0.9, per_class=40, seed=0)
    a = cs.audit(marker, TensorSource(s.images, marker.preprocessing, s.labels, space="pixels"),
                 progress=False, embedding="none")
    flagged = np.zeros(len(s.labels), bool)
    for c, k in a.suspects:
        assert c.name == "3" and "class" in k.flagged_by and k.confirmed, k.evidence
        flagged[k.flagged] = True
    truth = s.marked.numpy()
    assert (flagged & truth).sum() / flagged.sum() >= 0.9 and (flagged & truth).sum() / truth.sum() >= 0.8
    removed = sum(k.intervention.removed_flips for _, k in a.suspects)
    assert removed >= 0.8 * truth.sum()  # without the marker, the marked digits are not 3s
