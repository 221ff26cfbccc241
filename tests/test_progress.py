"""Progress reaches a user who is not at a terminal: long commands print one-line progress to a
piped stderr (a CI log, a notebook), and ``--quiet`` silences it. One job shows one bar (or one
series of lines): inner loops (an explanation's chunks, a sanity check's layers) show in it."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from convscope.core.progress import Progress


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True,
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


# A perturbation run of 30 one-image chunks, as a method runs it (a stand-in model, so it is quick).
_RUN = """
import sys, torch
import convscope.core.progress as P
from convscope.core.progress import Progress
from convscope.engines.perturb import evaluate
net = torch.nn.Linear(4, 2)
x = torch.zeros(4)
def run(progress=None):
    evaluate(net, lambda a, b: x.expand(b - a, 4), 30, lambda o: o[:, 0], batch_size=1, progress=progress)
"""


def _python(code: str) -> str:
    """The stderr of ``code`` run in a fresh interpreter with stderr a pipe."""
    r = subprocess.run([sys.executable, "-c", _RUN + textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stderr


def _python_on_a_terminal(code: str) -> str:
    """The output of ``code`` run with stderr a pseudo-terminal (120 columns), so tqdm draws bars."""
    import fcntl
    import pty
    import struct
    import termios

    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", _RUN + textwrap.dedent(code)], stderr=sub,
                            stdout=subprocess.DEVNULL)
    os.close(sub)
    out = b""
    while True:  # read until the child closes the terminal (EIO on Linux)
        if not select.select([main], [], [], 600)[0]:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=600) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_a_nested_run_prints_one_jobs_lines_not_a_bar_per_chunk():
    err = _python("""
        P.EVERY = 0.0  # a line at every change, so each inner update is seen
        run(progress=True)  # alone, the run is a job: its own lines
        print("--", file=sys.stderr)
        with Progress("job", 3, unit="runs") as p:  # three runs inside one job (a report, a demo)
            for i in range(3):
                run()
                p.update(i + 1)
        print("--", file=sys.stderr)
        P.EVERY = 10.0  # the default period: a quick job prints its last line only
        with Progress("job", 3, unit="runs") as p:
            for i in range(3):
                run(progress=True)
                p.update(i + 1)
    """)
    alone, nested, quick = (part.strip().splitlines() for part in err.split("--\n"))
    assert len(alone) == 30 and all(ln.startswith("convscope: perturb: ") for ln in alone), alone
    assert nested and all(ln.startswith("convscope: job: ") for ln in nested), nested
    assert any(ln.endswith(" · perturb 17/30") for ln in nested), nested  # the chunks, as its sub-status
    assert nested[-1].startswith("convscope: job: 3/3 runs (100%")
    assert quick == [next(ln for ln in quick if ln.startswith("convscope: job: 3/3 runs (100%"))], quick


def test_a_nested_run_draws_one_bar_on_a_terminal():
    out = _python_on_a_terminal("""
        P._REDRAW = 0.0  # redraw at every change, so each inner update is seen
        with Progress("job", 3, unit="runs") as p:
            for i in range(3):
                run()
                p.update(i + 1)
        print("--", file=sys.stderr)
        run()  # alone: its own bar
    """)
    nested, alone = out.split("--")
    frames = [f.strip() for f in re.split(r"[\r\n]+", nested) if f.strip()]
    assert frames and all(f.startswith("job: ") for f in frames), frames  # one bar, never perturb's
    assert any("perturb 17/30" in f for f in frames), frames  # the chunks show in the job's bar
    assert re.search(r"^perturb: .*/30 ", alone.replace("\r", "\n"), re.M), alone


def test_an_explanation_is_one_bar_on_a_terminal():
    """LIME calls the perturbation engine once per round until stable: one bar for the call."""
    out = _python_on_a_terminal("""
        import convscope as cs, convscope.methods.explain
        P._REDRAW = 0.0
        convscope.methods.explain.BAR_DELAY = 0.0  # the bar at once, so even a quick call shows it
        lm = cs.load_model("digits-cnn")
        from convscope.data.toydata import digits
        x = lm.preprocessing.normalize(digits().split("test")[0][:1])
        # 49 cells: no two of its 300 samples coincide, so every round evaluates 100 of them
        cs.explain(lm, x, method="lime", segmentation="grid", cell=4, n_samples=300, converge=None)
    """)
    frames = [f.strip() for f in re.split(r"[\r\n]+", out) if f.strip()]
    assert frames and all(f.startswith("explain lime: ") for f in frames), frames
    assert any(re.search(r"lime \d+/\d+\]", f) for f in frames), frames  # the engine rounds: its sub-status


def test_off_terminal_lines_for_an_evaluation():
    err = _python("""
        import convscope as cs
        from convscope.methods.evaluation import model_randomization
        lm = cs.load_model("digits-cnn")
        model_randomization(lm, torch.zeros(2, 1, 28, 28), "saliency", progress=True)
    """)
    lines = err.splitlines()
    assert lines and all(ln.startswith("convscope: sanity saliency: ") for ln in lines), err
    assert re.search(r"(\d+)/\1 layers \(100%", lines[-1]), err


def test_the_benchmark_is_one_job_through_a_pipe(tmp_path):
    """Every map of every case counts in one progress, a refused method (cam on digits-snow) too;
    its curves and sanity checks print no lines of their own."""
    r = _cli("benchmark", "planted-cue", "-o", str(tmp_path / "bench"), "--n-images", "4", "--n-sanity",
             "2", "--steps", "2", "--methods", "cam,gradcam", "--models", "digits-snow")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(ln.startswith("convscope: benchmark: ") for ln in lines), r.stderr
    assert lines[-1].startswith("convscope: benchmark: 8/8 maps (100%"), r.stderr  # 2 cases x 4 maps


def test_progress_false_prints_nothing_even_on_a_terminal():
    out = _python_on_a_terminal("""
        import convscope as cs
        from convscope.methods.evaluation import model_randomization
        run(progress=False)
        with Progress("job", 1, enabled=False):  # a silent job silences what runs inside it
            run()
        img = torch.zeros(2, 1, 28, 28)
        model_randomization(cs.load_model("digits-cnn"), img, "saliency", progress=False)
        print("--", file=sys.stderr)
        run()  # the control: by default a long run shows a bar on a terminal
    """)
    silent, control = out.split("--")
    assert silent.strip() == "", silent
    assert "perturb: " in control
