"""Issue #27: bad devices and sizes end in one line, exit status 2, no traceback, no output."""

import os
import subprocess
import sys

import pytest
import torch

from convscope.core.device import check_device
from convscope.core.errors import InputError

ENV = {**os.environ, "MPLBACKEND": "Agg"}


def run(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "convscope", *args],
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


def _small_files():
    """In the child: files may hold at most 2000 bytes; a longer write fails with EFBIG (no signal)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


@pytest.mark.parametrize("args,named", [
    (["explain", "{img}", "-o", "{out}/e.png"], "{out}/e.png"),
    (["batch", "--limit", "16", "-q", "-o", "{out}/b.zarr"], "{out}/b.zarr/maps"),
])
def test_write_error_names_the_file(tmp_path, args, named):
    """A write that fails (here a file-size limit; "No space left on device" alike) names the file."""
    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(img)
    out = tmp_path / "out"
    fill = {"img": str(img), "out": str(out)}
    r = subprocess.run([sys.executable, "-m", "convscope", *[a.format(**fill) for a in args]],
                       capture_output=True, text=True, env=ENV, timeout=120, preexec_fn=_small_files)
    one_line_error(r, named.format(**fill))
    assert not (out / "e.png").exists() and not list(out.glob(".*.part"))


def test_atomic_write_names_the_file_on_no_space(tmp_path):
    import errno

    from convscope.core.io import atomic_write

    def full(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "report.html"
    with pytest.raises(OSError) as exc:
        atomic_write(target, full)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary file
