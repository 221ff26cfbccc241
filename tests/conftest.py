from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.data.toydata import digits, planted_cue

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits_data():
    return digits()


@pytest.fixture(scope="session")
def cue_model():
    return cs.load_model("digits-cnn-cue")


@pytest.fixture(scope="session")
def clean_model():
    return cs.load_model("digits-cnn")


@pytest.fixture(scope="session")
def cue_test(digits_data):
    x, y = digits_data.split("test")
    return planted_cue(x, y)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for the engine tests (started here only if none is running)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


class TinyNet(nn.Module):
    """A tiny CNN with an in-place ReLU, for mechanics tests."""

    def __init__(self, c: int = 3, k: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, k)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(scope="module")
def session(cue_model, tmp_path_factory):
    """The bundled cue model exported to ONNX, as a real ONNX Runtime session (a black box)."""
    import onnxruntime as ort  # in the dev extra: the tests using it fail, not skip, without it

    path = tmp_path_factory.mktemp("onnx") / "digits-cnn-cue.onnx"
    with torch.no_grad():
        torch.onnx.export(cue_model.model, (torch.zeros(2, 1, 32, 32),), str(path), dynamo=False,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
