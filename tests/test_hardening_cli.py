"""Issue #27: bad devices and sizes end in one line, exit status 2, no traceback, no output."""

import os
import subprocess
import sys

import pytest
import torch

from convscope._validate import check_device
from convscope.errors import InputError

ENV = {**os.environ, "MPLBACKEND": "Agg"}


def run(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "convscope.cli.main", *args],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("convscope: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("device,words", [
    ("bogus", ("'bogus'", "cpu, cuda")),
    ("cuda", ("'cuda'", "no CUDA GPU")),
])
def test_batch_device_one_line(tmp_path, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: 'cuda' is a valid device here")
    out = tmp_path / "maps.zarr"
    r = run("batch", "--device", device, "--limit", "2", "-o", str(out))
    one_line_error(r, *words)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_check_device_values():
    assert check_device(None) is None and check_device("cpu") == "cpu"
    for bad in ("bogus", "", "cuda:99", "xla", "nan"):
        if bad.startswith("cuda") and torch.cuda.device_count() > 99:  # pragma: no cover
            continue
        with pytest.raises(InputError, match="device"):
            check_device(bad)
    with pytest.raises(InputError):
        check_device(-1)  # an int is a CUDA ordinal for torch; refused without a GPU, or if negative


def test_visualize_size_too_small(tmp_path):
    out = tmp_path / "v.png"
    r = run("visualize", "--class", "3", "--size", "1", "--steps", "1", "-o", str(out))
    one_line_error(r, "size 1x1", "--size")
    assert not out.exists()
