"""The shared blocks that replaced per-module copies (issue #20): each has one definition and the
callers that used to carry their own copy give the same numbers through it."""

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.core.hooks import capture, count_hooks, layer_names
from convscope.models import as_loaded
from convscope.models.forward import chunked_outputs, find_default_layer, probe


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def test_capture_calls_are_in_execution_order_and_probe_leaves_no_hook():
    net = _net()
    with capture(net, layer_names(net), clone=False) as cap:
        net(torch.zeros(1, 3, 8, 8))
        order = [n for n, _ in cap.calls]
    # children finish before their parent: "2.0", "2.1" come before "2"
    assert order == ["0", "1", "2.0", "2.1", "2", "3", "4", "5"]
    pre = cs.Preprocessing(size=(8, 8))
    out, calls = probe(net, pre, "*")
    assert [n for n, _ in calls] == order and out.shape == (1, 3)
    assert count_hooks(net) == 0
    assert find_default_layer(net, pre) == "2"  # the block wins over its last module


def test_chunked_outputs_equal_one_pass_and_keep_no_graph():
    net = _net()
    x = torch.rand(7, 3, 8, 8, requires_grad=True)
    whole = net(x).detach()
    for bs in (1, 3, 7, 100):
        got = chunked_outputs(net, x, bs)
        assert not got.requires_grad
        torch.testing.assert_close(got, whole)
    soft = chunked_outputs(net, x, 2, lambda o: o.softmax(1))
    torch.testing.assert_close(soft, whole.softmax(1))


def test_as_loaded_keeps_a_loaded_model_and_copies_on_new_preprocessing():
    lm = cs.load_model("digits-cnn")
    assert as_loaded(lm) is lm
    other = as_loaded(lm, "none")
    assert other is not lm and other.preprocessing != lm.preprocessing
    bb = as_loaded(lambda batch: torch.zeros(batch.shape[0], 10), lm.preprocessing)
    from convscope.engines.perturb import BlackBoxModel

    assert isinstance(bb.model, BlackBoxModel)  # a predict function is wrapped, not refused
    assert bb.model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_one_blur_two_paddings():
    from convscope.methods.featvis.transforms import gaussian_blur as fv_blur
    from convscope.models.inputs import gaussian_blur

    x = torch.rand(2, 3, 12, 12)
    const = torch.full((1, 3, 12, 12), 0.3)
    for padding in ("replicate", "reflect"):
        torch.testing.assert_close(gaussian_blur(const, 1.5, padding=padding), const)
    torch.testing.assert_close(fv_blur(x, 1.0), gaussian_blur(x, 1.0, padding="reflect"))
    # the paddings differ at the border only
    a, b = gaussian_blur(x, 1.0), gaussian_blur(x, 1.0, padding="reflect")
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a[..., 4:-4, 4:-4], b[..., 4:-4, 4:-4])
    assert gaussian_blur(x, 0) is x


def test_total_variation_variants():
    from convscope.engines.optimize import total_variation

    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 4, 5)  # +1 per column, 0 per row
    assert float(total_variation(ramp, isotropic=False)) == pytest.approx(1.0)
    assert float(total_variation(ramp)) == pytest.approx(1.0)
    assert float(total_variation(2 * ramp)) == pytest.approx(4.0)  # squared differences
    assert float(total_variation(2 * ramp, isotropic=False)) == pytest.approx(2.0)


def test_check_values_names_the_argument():
    from convscope.core.validate import check_values, ints

    check_values(steps=(3, ints(1)))
    with pytest.raises(InputError, match="steps must be an integer >= 1, got 0"):
        check_values(steps=(0, ints(1)))


def test_top_classes_and_text_targets_are_one_definition_for_report_serve_and_cli():
    from convscope.core.targets import parse_target, top_classes
    from convscope.frontends.cli import _common
    from convscope.frontends.report.build import top_k
    from convscope.frontends.serve import engine

    probs = torch.tensor([0.1, 0.3, 0.3, 0.05, 0.25])
    # most probable first, ties in index order, an unnamed class gets a placeholder name
    assert top_classes(probs, ["a", "b", "c", "d"], 4) == [
        (1, "b", pytest.approx(0.3)), (2, "c", pytest.approx(0.3)), (4, "class 4", pytest.approx(0.25)),
        (0, "a", pytest.approx(0.1))]
    assert top_k(probs.tolist(), ["a", "b", "c", "d", "e"], 2) == [("b", pytest.approx(0.3)),
                                                                   ("c", pytest.approx(0.3))]
    assert [parse_target(v) for v in (None, " ", "3", "-1", "cat", "top2", "a-vs-b", "--1", "²")] == [
        None, None, 3, -1, "cat", "top2", "a-vs-b", "--1", "²"]  # not digits: a name, never a crash
    assert _common.parse_target is parse_target and engine.parse_target is parse_target


def test_option_groups_name_the_function_on_an_unknown_keyword():
    from convscope.methods.jobs.batch import JobOptions, run_batch

    with pytest.raises(TypeError, match=r"^run_batch\(\) got an unexpected keyword argument 'chunksize'$"):
        run_batch("digits-cnn", torch.zeros(2, 1, 28, 28), "/tmp/never-written", chunksize=2)
    with pytest.raises(TypeError, match=r"^top_activations\(\) got an unexpected keyword argument"):
        cs.top_activations("digits-cnn", torch.zeros(2, 1, 28, 28), "features.0", batchsize=2)
    from convscope.core.validate import option_group

    assert option_group(JobOptions, "f", {"seed": 3}, seed=1, limit=5).seed == 3  # given over defaults


def test_option_groups_show_in_the_signatures_of_the_functions_that_take_them():
    """help() and notebooks list the options a function takes through an option group, with the
    defaults the function really uses, and the names shown are exactly the names accepted."""
    import dataclasses
    import inspect

    from convscope.data.stream import Streaming
    from convscope.methods.dataset._settings import AuditSettings
    from convscope.methods.dataset.neighbors import Pooling, layer_features
    from convscope.methods.jobs.batch import JobOptions, run_batch
    from convscope.methods.synthesis._features import Settings

    cases = [(cs.invert, [Settings]), (cs.inversion_strip, [Settings]), (cs.texture, [Settings]),
             (cs.style_transfer, [Settings]), (cs.top_activations, [Streaming]),
             (layer_features, [Pooling]), (cs.nearest_neighbors, [Pooling]), (cs.embed, [Pooling]),
             (cs.audit, [AuditSettings, JobOptions]), (run_batch, [JobOptions])]
    for func, groups in cases:
        params = inspect.signature(func).parameters
        assert all(p.kind is not p.VAR_KEYWORD for p in params.values()), func.__name__
        kw = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert {f.name for g in groups for f in dataclasses.fields(g)} <= kw, func.__name__
    # the defaults shown are the task's own, as the call applies them
    assert inspect.signature(cs.invert).parameters["steps"].default == 200
    assert inspect.signature(cs.texture).parameters["steps"].default == 300
    assert inspect.signature(cs.style_transfer).parameters["lr"].default == 0.03
    assert Settings.of("style_transfer", {}, lr=0.03).lr == 0.03
