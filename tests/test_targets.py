import pytest
import torch

import convscope as cs
from convscope.core.errors import TargetError
from convscope.core.targets import resolve_target, select_scores

OUT = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 4.0]])
NAMES = ["cat", "dog", "owl"]


def test_predicted_index_name_topk():
    assert resolve_target(None, OUT).labels() == [1, 0]
    assert resolve_target(2, OUT).labels() == [2, 2]
    assert resolve_target("owl", OUT, NAMES).labels() == [2, 2]
    assert resolve_target("Dog", OUT, NAMES).labels() == [1, 1]
    assert resolve_target("top2", OUT).labels() == [2, 2]
    assert resolve_target(("top", 3), OUT).labels() == [0, 1]
    assert resolve_target([0, "owl"], OUT, NAMES).labels() == [0, 2]
    assert resolve_target(torch.tensor([1, 2]), OUT).labels() == [1, 2]


def test_callable_target():
    t = resolve_target(lambda o: o[:, 0] - o[:, 1], OUT)
    assert torch.allclose(select_scores(OUT, t), torch.tensor([-2.9, 4.0]))
    bad = resolve_target(lambda o: o, OUT)
    with pytest.raises(TargetError, match="one score per sample"):
        select_scores(OUT, bad)


def test_scores_gather():
    t = resolve_target([2, 1], OUT)
    assert select_scores(OUT, t).tolist() == [2.0, 1.0]


@pytest.mark.parametrize("bad,msg", [(7, "out of range"), ("cow", "unknown class"),
                                      ([1], "2 targets|1 targets"), ("top9", "out of range"),
                                      (True, "class index")])
def test_errors(bad, msg):
    with pytest.raises(TargetError, match=msg):
        resolve_target(bad, OUT, NAMES)


class _PlainNet(torch.nn.Module):
    """A plain module for the bad-callable-target test: [0, 1] pixels, functional ReLUs, GAP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.conv2(torch.nn.functional.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


_BAD_TARGETS = {
    "one scalar": (lambda o: o[:, 0].sum(), "one score per sample"),
    "nan": (lambda o: o[:, 0] * float("nan"), "non-finite"),
    "inf": (lambda o: o[:, 0] / 0.0 * 0 + float("inf"), "non-finite"),
    "(B, 1)": (lambda o: o[:, :1], "one score per sample"),
}


@pytest.mark.parametrize("bad", sorted(_BAD_TARGETS))
@pytest.mark.parametrize("name", cs.method_names())
def test_bad_callable_target_is_one_error_for_every_method(name, bad):
    """#27 item 8: a callable target returning nan/inf or one scalar used to give all-nan maps with
    occlusion and RISE; every registered method now refuses it with one TargetError."""
    torch.manual_seed(0)
    net = _PlainNet().eval()
    x = torch.rand(2, 3, 12, 12)
    info = cs.get_method(name)
    func, words = _BAD_TARGETS[bad]
    kw = {**info.fast_options}
    if info.needs_layer:
        kw["layer"] = "conv2"
    with pytest.raises(TargetError, match=words):
        cs.explain(net, x, method=name, target=func, class_names=["a", "b", "c"],
                   preprocessing="none", **kw)
