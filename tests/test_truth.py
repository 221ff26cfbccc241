"""Truth tests generated from the registry: every registered method must say what it is measured to
show on a known cause (its :class:`~convscope.methods.registry.CueClaim` entries), and each claim is checked.

The planted-cue model ``digits-cnn-cue`` learned a class-specific 8x8 texture patch; ``digits-cnn``
is the same network trained without it (the control). A new method without a claim fails
``test_every_registered_method_has_a_truth_entry``; a method that runs on a black box is also
checked against a real ONNX Runtime session, and a method with the engine speed options is
checked to give the same maps with each of them.
"""

from __future__ import annotations

import pytest
import torch

import convscope as cs
from convscope.methods.evaluation.pointing import pointing_hits
from convscope.methods.registry import list_methods

METHODS = list_methods()
CLAIMS = [(m.name, i) for m in METHODS for i in range(len(m.claims))]
BLACK_BOX = [m.name for m in METHODS if m.black_box]
ENGINE = [m.name for m in METHODS if {"channels_last", "eval_batch_size"} <= {s.name for s in m.option_specs}]

_MAPS: dict = {}


def _maps(lm, x, name: str, claim) -> torch.Tensor:
    key = (lm.name, name, claim.layer, tuple(sorted(claim.options.items())), x.shape[0])
    if key not in _MAPS:
        _MAPS[key] = cs.explain(lm, x, method=name, layer=claim.layer, **dict(claim.options)).map
    return _MAPS[key]


def test_every_registered_method_has_a_truth_entry():
    missing = [m.name for m in METHODS if not m.claims]
    assert not missing, f"registered methods without a CueClaim (registry `claims=`): {missing}"
    for m in METHODS:
        for c in m.claims:
            assert c.at_least is not None or c.at_most is not None, f"{m.name}: a claim with no bound"
            assert 0 < c.n <= 300, f"{m.name}: n={c.n}"


@pytest.mark.parametrize("name,index", CLAIMS, ids=[f"{n}-{i}" for n, i in CLAIMS])
def test_claim_on_the_planted_cue(name, index, cue_model, clean_model, cue_test):
    claim = cs.get_method(name).claims[index]
    x = cue_model.preprocessing.normalize(cue_test.images[:claim.n])
    masks = cue_test.masks[:claim.n]
    rate = pointing_hits(_maps(cue_model, x, name, claim), masks, claim.tolerance).float().mean().item()
    if claim.at_least is not None:
        assert rate >= claim.at_least, f"{name} points at the cue for only {rate:.3f} (claim {claim})"
    if claim.at_most is not None:
        assert rate <= claim.at_most, f"{name} points at the cue for {rate:.3f} (claim {claim})"
    if claim.clean_below is not None:  # the control: the model without the cue does not point there
        clean_maps = _maps(clean_model, x, name, claim)
        clean = pointing_hits(clean_maps, masks, claim.tolerance).float().mean().item()
        assert clean < claim.clean_below, f"{name} on the clean model: {clean:.3f}"


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_maps_equal_the_torch_maps(name, session, cue_model, cue_test):
    opts = {**cs.get_method(name).claims[0].options, "seed": 0}
    x = cue_model.preprocessing.normalize(cue_test.images[:3])
    target = cue_test.labels[:3].tolist()
    ref = cs.explain(cue_model, x, method=name, target=target, **opts)
    # a black box's pixel mapping is stated (baselines are pixels): the model's preprocessing
    got = cs.explain(session, x, method=name, target=target, class_names=cue_model.class_names,
                     preprocessing=cue_model.preprocessing, **opts)
    scale = float(ref.map.abs().max())
    torch.testing.assert_close(got.map, ref.map, atol=1e-3 * scale, rtol=1e-3)
    # and it points at the planted cue like the torch model does
    assert pointing_hits(got.map, cue_test.masks[:3], 1).float().mean() >= 2 / 3


@pytest.mark.parametrize("name", ENGINE)
def test_engine_options_give_the_same_map(name, cue_model, cue_test):
    opts = {**cs.get_method(name).fast_options, "seed": 0}
    x = cue_model.preprocessing.normalize(cue_test.images[:2])
    ref = cs.explain(cue_model, x, method=name, **opts).map
    scale = float(ref.abs().max())
    engines = ({"channels_last": True}, {"eval_batch_size": 3},
               {"channels_last": False, "eval_batch_size": 1})
    for engine in engines:
        got = cs.explain(cue_model, x, method=name, **opts, **engine).map
        torch.testing.assert_close(got, ref, atol=1e-4 * scale, rtol=1e-4,
                                   msg=lambda m, e=engine: f"{e}: {m}")
