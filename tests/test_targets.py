import pytest
import torch

from convscope.errors import TargetError
from convscope.targets import resolve_target, select_scores

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
