"""Progress reaches a user who is not at a terminal: long commands print one-line progress to a
piped stderr (a CI log, a notebook), and ``--quiet`` silences it."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
from PIL import Image

from convscope._progress import Progress


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope.cli.main", *args], capture_output=True,
                          text=True, timeout=600)


def _digit(tmp_path, cue_test):
    img = tmp_path / "d.png"
    Image.fromarray((cue_test.images[0, 0].numpy() * 255).astype(np.uint8)).save(img)
    return img


def test_report_prints_progress_lines_through_a_pipe(tmp_path, cue_test):
    img = _digit(tmp_path, cue_test)
    r = _cli("report", str(img), "--model", "digits-cnn-cue", "--methods", "saliency", "gradcam",
             "occlusion", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("convscope: report: methods:")]
    assert lines and re.search(r"3/3 methods \(100%", lines[-1]), r.stderr
    assert "\r" not in r.stderr  # no bar redrawn with carriage returns in a log
    q = _cli("report", str(img), "--model", "digits-cnn-cue", "--methods", "saliency", "-q",
             "-o", str(tmp_path / "q.html"))
    assert q.returncode == 0 and "report: methods" not in q.stderr, q.stderr


def test_batch_prints_progress_lines_through_a_pipe(tmp_path):
    out = tmp_path / "b.zarr"
    r = _cli("batch", "--data", "digits", "--limit", "24", "--chunk-size", "8", "--method", "saliency",
             "--model", "digits-cnn", "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("convscope: batch: chunks:")]
    assert lines and "3/3 chunks (100%" in lines[-1], r.stderr
    assert "\r" not in r.stderr


def test_progress_lines_come_every_period_and_at_the_end(capsys):
    with Progress("maps", 4, every=0.0, unit="maps") as p:
        for k in range(1, 5):
            p.update(k)
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(": ", 2)[2].split(" (")[0] for ln in err] == ["1/4 maps", "2/4 maps", "3/4 maps",
                                                                   "4/4 maps"]
    with Progress("maps", 4, enabled=False) as p:
        p.update(4)
    assert capsys.readouterr().err == ""
