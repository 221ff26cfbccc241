"""#27 item 5: RISE's default baseline finds the cue on a model whose class grey regions trigger.

The model is built here, analytically: a plain module on [0, 1] pixels whose class 1 reads a
bright 4x4 patch in the top-left corner (the cue) and is also triggered by mid-grey regions (the
X-ray model of the issue); class 0 is a constant.
"""

import warnings

import torch
from torch import nn

import convscope as cs
from convscope.core.errors import UnreliableResultWarning
from convscope.methods.evaluation.pointing import pointing_hits


class GreyOrCue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cue = x[:, :, :4, :4].mean((1, 2, 3))
        grey = torch.exp(-(((x - 0.5) / 0.1) ** 2)).mean((1, 2, 3))
        c1 = 8.0 * cue + 200.0 * torch.relu(grey - 0.1)
        return torch.stack([torch.full_like(c1, 4.0), c1], 1)


def _images(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = 0.25 * torch.rand(n, 1, 16, 16, generator=g)  # dark texture: no mid-grey pixel
    x[:, :, :4, :4] = 1.0
    masks = torch.zeros(n, 16, 16, dtype=torch.bool)
    masks[:, :4, :4] = True
    return x, masks


def _rise(x, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = cs.explain(GreyOrCue(), x, method="rise", target=1, preprocessing={"channels": 1},
                       class_names=["normal", "pneumonia"], n_masks=500, cells=4, **kw)
    return e, [w for w in caught if issubclass(w.category, UnreliableResultWarning)]


def test_the_model_is_what_it_claims():
    x, _ = _images()
    net = GreyOrCue()
    p = torch.softmax(net(x), 1)[:, 1]
    hidden = x.clone()
    hidden[:, :, :4, :4] = 0.0
    half_grey = x.clone()
    half_grey[:, :, :, 8:] = 0.5
    assert (p > 0.9).all() and (torch.softmax(net(hidden), 1)[:, 1] < 0.1).all()
    assert (torch.softmax(net(half_grey), 1)[:, 1] > 0.999).all()


def test_grey_masks_miss_the_cue_and_say_so():
    x, masks = _images()
    e, caught = _rise(x, baseline="grey")
    assert pointing_hits(e.map, masks, 1).float().mean() < 0.5
    assert e.diagnostics["reliable"].count(False) >= 2 and len(caught) == 1


def test_the_default_baseline_finds_the_cue():
    x, masks = _images()
    e, caught = _rise(x)
    assert e.options == {"n_masks": 500, "cells": 4}  # the default baseline, nothing else
    assert pointing_hits(e.map, masks, 1).all()
    assert all(b != "grey" for b in e.diagnostics["baseline_chosen"])
    assert e.diagnostics["reliable"] == [True] * 3 and not caught
