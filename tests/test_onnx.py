"""A real ONNX Runtime session as a black box (extra ``onnx``): the bundled model exported to ONNX
gives the same perturbation maps as the torch model, and gradient methods refuse it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.core.errors import MethodError
from convscope.engines.perturb import as_predict


def test_session_predicts_like_the_module(session, cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:5])
    pred = as_predict(session)
    assert pred.kind == "onnx"
    with torch.no_grad():
        torch.testing.assert_close(pred(x), cue_model.model(x), atol=1e-4, rtol=1e-4)


# The black-box equivalence of every registered black-box method: tests/test_truth.py.


def test_gradient_methods_refuse_a_session(session, cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:1])
    with pytest.raises(MethodError, match="black-box"):
        cs.explain(session, x, method="saliency")
    assert np.isfinite(as_predict(session)(x).numpy()).all()
