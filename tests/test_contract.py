"""Contract tests generated from the method registry: every registered method must pass them."""

import pytest
import torch

import convscope as cs
from convscope.core.hooks import count_hooks

METHODS = cs.method_names()


def _run(lm, x, name, **kw):
    info = cs.get_method(name)
    return cs.explain(lm, x, method=name, **{**info.fast_options, **kw})


@pytest.fixture(scope="module")
def batch(cue_test, cue_model):
    return cue_model.preprocessing.normalize(cue_test.images[:4])


@pytest.mark.parametrize("name", METHODS)
def test_shape_and_metadata(name, cue_model, batch):
    e = _run(cue_model, batch, name)
    assert e.map.shape == (4, 32, 32)
    assert e.map.dtype == torch.float32 and torch.isfinite(e.map).all()
    assert len(e.targets) == 4 and e.method == name
    assert e.probabilities is not None and e.probabilities.shape == (4, 10)
    if not cs.get_method(name).signed:
        assert (e.map >= -1e-6).all()


@pytest.mark.parametrize("name", METHODS)
def test_model_and_tensors_untouched(name, cue_model, batch):
    net = cue_model.model
    net.train()
    net.classifier.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = batch.clone().requires_grad_(True)
    marker = torch.full_like(x, 7.0)
    x.grad = marker
    x_before = x.detach().clone()
    try:
        _run(cue_model, x, name)
        assert count_hooks(net) == 0
        assert net.training and not net.classifier.training
        assert all(p.requires_grad for p in net.parameters())
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert torch.equal(x.detach(), x_before)
        assert x.grad is marker and x.requires_grad
    finally:
        net.eval()


@pytest.mark.parametrize("name", METHODS)
def test_cleanup_after_injected_failure(name, cue_model, batch):
    net = cue_model.model
    calls = {"n": 0}

    def boom(_m, _i, _o):
        calls["n"] += 1
        raise RuntimeError("injected failure")

    h = net.classifier.register_forward_hook(boom)
    x = batch.clone().requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            _run(cue_model, x, name)
    finally:
        h.remove()
    assert calls["n"] >= 1
    assert count_hooks(net) == 0
    assert all(p.requires_grad for p in net.parameters())
    assert x.grad is None and x.requires_grad
    # a failing callable target, raised from inside the method
    with pytest.raises(ZeroDivisionError):
        _run(cue_model, batch, name, target=lambda o: 1 / 0)
    assert count_hooks(net) == 0


# Float tolerance of a batch against its samples one by one. Ablation-CAM's weights are small
# differences of large scores, (S - S_k) / S with |S| up to ~40 and S - S_k often ~0.01, so the
# float32 differences between batched and single convolutions (~1e-7 relative) grow ~1000-fold.
# float32 sums in another order; IG's black-pixel baseline lies far from the digits' model-space
# inputs (about -0.6), so its path gradients and their rounding are larger than the rest's
TOLERANCE = {"ablationcam": {"atol": 2e-4, "rtol": 2e-3},
             "integrated_gradients": {"atol": 1e-4, "rtol": 1e-3}}


@pytest.mark.parametrize("name", METHODS)
def test_batch_size_and_batch_position_do_not_change_result(name, cue_model, batch):
    tol = TOLERANCE.get(name, {"atol": 1e-5, "rtol": 1e-4})
    full = _run(cue_model, batch, name, batch_size=4, target=[0, 1, 2, 3])
    small = _run(cue_model, batch, name, batch_size=1, target=[0, 1, 2, 3])
    torch.testing.assert_close(full.map, small.map, **tol)
    alone = _run(cue_model, batch[2:3], name, target=2)
    torch.testing.assert_close(full.map[2:3], alone.map, **tol)
    assert full.targets == (0, 1, 2, 3)


@pytest.mark.parametrize("name", METHODS)
def test_reproducible_under_seed(name, cue_model, batch):
    a = _run(cue_model, batch[:2], name, seed=3)
    b = _run(cue_model, batch[:2], name, seed=3)
    assert torch.equal(a.map, b.map)
