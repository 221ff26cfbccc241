"""``convscope evaluate`` and ``convscope benchmark planted-cue`` as a person runs them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convscope.frontends.cli.main import main


def _cli(*args, cwd):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "convscope", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, cue_test):
    d = tmp_path_factory.mktemp("digits")
    imgs, masks = [], []
    for i in range(3):
        img = d / f"d{i}.png"
        Image.fromarray((cue_test.images[i, 0].numpy() * 255).round().astype(np.uint8)).save(img)
        m = d / f"m{i}.png"
        Image.fromarray(cue_test.masks[i].numpy().astype(np.uint8) * 255).save(m)
        imgs.append(img.name)
        masks.append(m.name)
    return d, imgs, masks


def test_evaluate_writes_a_table_and_a_plot(digit_files, cue_test):
    d, imgs, masks = digit_files
    r = _cli("evaluate", *imgs, "--model", "digits-cnn-cue", "--methods", "saliency,gradient_x_input",
             "--metrics", "pointing,energy_pointing,deletion,insertion,gini", "--masks", *masks,
             "--tolerance", "1", "--baseline", "black", "--steps", "8", "-o", "out.csv",
             "--plot", "curves.png", cwd=d)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(d / "out.csv")))
    assert len(rows) == 6 and {x["method"] for x in rows} == {"saliency", "gradient_x_input"}
    assert [int(x["target"]) for x in rows[:3]] == cue_test.labels[:3].tolist()
    for x in rows:
        for k in ("energy_pointing", "deletion", "insertion", "gini"):
            assert 0.0 <= float(x[k]) <= 1.0
        assert float(x["pointing"]) in (0.0, 1.0)
    assert Image.open(d / "curves.png").size[0] > 300


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "nonsense"], "unknown metric"),
    (["--metrics", "pointing"], "need --masks or --boxes"),
    (["--methods", "salency"], "did you mean saliency"),
    (["--metrics", "pointing", "--boxes", "1,2,3"], "x0,y0,x1,y1"),
    (["--metrics", "pointing", "--boxes", "0,0,4,4", "--boxes", "0,0,4,4"], "one per image"),
])
def test_evaluate_errors_are_one_line_and_write_nothing(digit_files, capsys, argv, message):
    d, imgs, _ = digit_files
    out = d / "bad.json"
    code = main(["evaluate", str(d / imgs[0]), "--model", "digits-cnn-cue", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_evaluate_refuses_an_unknown_output_type(digit_files, capsys):
    d, imgs, _ = digit_files
    assert main(["evaluate", str(d / imgs[0]), "-o", str(d / "x.txt")]) == 2
    assert ".csv or .json" in capsys.readouterr().err


def test_benchmark_planted_cue_shows_guided_backprop_failing(tmp_path):
    r = _cli("benchmark", "planted-cue", "-o", "bench", "--n-images", "12", "--n-sanity", "12",
             "--steps", "4", "--methods", "saliency,guided_backprop", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bench"
    for f in ("leaderboard.csv", "leaderboard.json", "sanity.csv", "curves.png", "sanity.png",
              "report.html"):
        assert (out / f).stat().st_size > 0, f
    board = json.loads((out / "leaderboard.json").read_text())
    by = {(x["model"], x["method"]): x for x in board}
    assert set(by) == {(m, k) for m in ("digits-cnn-cue", "digits-cnn", "digits-snow",
                                        "digits-snow (no snow)")
                       for k in ("saliency", "guided_backprop", "(cue mask)", "(random)")}
    assert by[("digits-cnn", "guided_backprop")]["sanity"] == "FAIL"  # 0.77 on the clean model
    assert by[("digits-cnn-cue", "saliency")]["sanity"] == "pass"
    assert by[("digits-cnn-cue", "(cue mask)")]["max_in_cue"] == 1.0
    # saliency points at the cue for the cue model, not for the clean one
    assert by[("digits-cnn-cue", "saliency")]["max_within_1px"] > by[("digits-cnn", "saliency")][
        "max_within_1px"] + 0.3
    # the snow model: guided backprop points at the snow band, and not at the empty band
    assert by[("digits-snow", "guided_backprop")]["max_in_cue"] >= 0.9  # 1.00 on 100 wolves
    assert by[("digits-snow (no snow)", "guided_backprop")]["max_in_cue"] < 0.5  # 0.15 there
    assert "digits-snow (12 test wolves on snow)" in r.stdout
    assert "fail the model-randomisation check: guided_backprop" in r.stdout
    html = (out / "report.html").read_text()
    assert "guided_backprop" in html and "FAIL" in html and "data:image/png;base64," in html
    assert "Leaderboard: digits-snow (no snow)" in html


def test_benchmark_records_a_method_that_refuses_a_model(tmp_path):
    """Plain CAM refuses digits-snow (its CAM layer comes before a functional ReLU): a row says
    why, and the run goes on."""
    r = _cli("benchmark", "planted-cue", "-o", "bench", "--n-images", "4", "--n-sanity", "0",
             "--steps", "2", "--methods", "cam,gradcam", "--models", "digits-snow", "--no-progress",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    board = json.loads((tmp_path / "bench" / "leaderboard.json").read_text())
    by = {(x["model"], x["method"]): x for x in board}
    assert {m for m, _ in by} == {"digits-snow", "digits-snow (no snow)"}
    assert "global-average-pooling + linear head" in by[("digits-snow", "cam")]["error"]
    assert by[("digits-snow", "cam")]["max_in_cue"] is None
    gc = by[("digits-snow", "gradcam")]
    assert gc["error"] == "" and gc["max_in_cue"] == 1.0
    assert "cam refused this model" in r.stdout
    assert "Refused this model: cam" in (tmp_path / "bench" / "report.html").read_text()
    bad = _cli("benchmark", "planted-cue", "--models", "digits-wolf", cwd=tmp_path)
    assert bad.returncode == 2 and "convscope: error: unknown benchmark model 'digits-wolf'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
