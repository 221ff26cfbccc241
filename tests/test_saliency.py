import torch
from torch import nn

import convscope as cs


def test_saliency_of_linear_model_equals_its_weights():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 6, 4))
    x = torch.randn(3, 3, 5, 6)
    e = cs.explain(lin, x, method="saliency", target=[0, 2, 3])
    w = lin[1].weight.detach().view(4, 3, 5, 6)
    for i, t in enumerate([0, 2, 3]):
        torch.testing.assert_close(e.raw[i], w[t])
        torch.testing.assert_close(e.map[i], w[t].abs().amax(0))


def test_saliency_matches_independent_autograd(cue_model, cue_test):
    x = cue_model.preprocessing.normalize(cue_test.images[:5])
    e = cs.explain(cue_model, x, method="saliency")
    xr = x.clone().requires_grad_(True)
    out = cue_model.model(xr)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(e.raw, xr.grad)
    assert list(e.targets) == out.argmax(1).tolist()
