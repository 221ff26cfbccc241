"""The demo's parts, checked quickly (the full demo is `make demo`)."""

from __future__ import annotations

import pytest

import convscope as cs
from convscope.frontends.demo import (
    ATTRIBUTION_FAMILIES,
    _lime_text_section,
    _snow_section,
    choose_settings,
    demo_methods,
)
from convscope.frontends.report import Report


def test_demo_methods_come_from_the_registry():
    assert demo_methods() == [m.name for m in cs.list_methods() if m.family in ATTRIBUTION_FAMILIES]
    assert "saliency" in demo_methods()


def test_fast_settings_only_when_the_defaults_are_too_slow(cue_model, cue_test):
    probe = cue_model.preprocessing.normalize(cue_test.images[:2])
    with_fast = next(m for m in cs.list_methods() if m.fast_options and m.family == "gradient")
    opts, why, per_image = choose_settings(with_fast, cue_model, probe, 100, budget_s=1e9)
    assert opts == {} and why == "defaults" and per_image > 0
    opts, why, _ = choose_settings(with_fast, cue_model, probe, 100, budget_s=0.0)
    assert opts == with_fast.fast_options and why.startswith("fast settings")
    plain = cs.get_method("saliency")
    if not plain.fast_options:  # nothing cheaper to switch to: defaults whatever the budget
        assert choose_settings(plain, cue_model, probe, 100, budget_s=0.0)[0] == {}


def test_lime_text_section_finds_the_junk_header_word():
    from convscope.data.toydata import JUNK_TOKEN

    rep = Report("t")
    _lime_text_section(rep)
    (sec,) = rep.sections
    assert f"is the junk host name '{JUNK_TOKEN}'" in sec.note
    assert JUNK_TOKEN in sec.html_blocks[0]


def test_snow_section_shows_the_methods_on_snowy_wolves_with_their_hit_rates():
    """digits-snow in the demo: every method gets a row (or says why it refused), and the hit
    rates are real: Grad-CAM finds the snow (1.00 on 100 snowy wolves), not the empty band."""
    import base64
    import io

    from PIL import Image

    rep = Report("t")
    fast = {m.name: (dict(m.fast_options), "fast", 1.0) for m in cs.list_methods()}
    _snow_section(rep, fast, n_images=3, n_eval=20, budget_s=0.01, progress=False)
    panels, table = rep.sections
    assert "digits-snow" in panels.title and "snow" in table.title
    by = {r[0].split(" ")[0]: r for r in table.table}
    assert set(by) == set(demo_methods())
    assert by["cam"][-1].startswith("refused: CAM needs a global-average-pooling")
    assert float(by["gradcam"][1]) >= 0.9 and float(by["gradcam"][2]) <= 0.2
    assert panels.row_labels[0] == "inputs" and panels.row_labels[-1] == "huskies on snow · gradcam"
    assert len(panels.rows) == 2 + len(demo_methods()) - 1  # inputs, one per method but cam, huskies
    assert all(len(r) == 3 for r in panels.rows)
    assert any(n.startswith("Maximum on the snow for ") for n in panels.row_notes)
    for fig in (panels.rows[0][0], panels.rows[1][0]):
        img = Image.open(io.BytesIO(base64.b64decode(fig.src.split(",", 1)[1])))
        assert img.width >= 48 and img.height >= 48
    assert all(f.caption == "predicts wolf" for f in panels.rows[-1])  # huskies on snow


def test_demo_end_to_end_writes_a_complete_offline_report(tmp_path):
    """The README's main command: every section present, every embedded image decodes."""
    import base64
    import io
    import os
    import re
    import subprocess
    import sys

    from PIL import Image

    r = subprocess.run([sys.executable, "-m", "convscope", "demo", "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "MPLBACKEND": "Agg"}, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    html = (tmp_path / "report.html").read_text()
    assert str(tmp_path / "report.html") in r.stdout
    for title in ("Where each model looks", "Swap the cue", "How often does each method point",
                  "Which method to trust",
                  "LIME on a classifier that reads the header", "Class visualisations",
                  "maximally activating test digits", "targeted PGD",
                  "digits-snow, the wolf-vs-husky snow detector", "point at the snow",
                  "What the snow detector saw: concepts of digits-snow", "The same scene without its snow",
                  "does digits-snow use the snow band", "the snow band on a model with and without",
                  "A shortcut on most of a class, proved by intervention", "before / after"):
        assert title in html, title
    srcs = re.findall(r'src="(data:image/png;base64,[^"]+)"', html)
    assert len(srcs) > 100
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert "http://" not in html and "https://" not in html
    assert "Success: 4/4" in html  # the PGD section reports a real attack result
    # progress reaches a piped stderr (#19): the demo's one series of lines, every stage counted
    from convscope.frontends.demo import STAGES

    n = len(STAGES)  # every stage counted, the last line at 100%
    assert re.search(rf"^convscope: demo: {n}/{n} stages \(100%", r.stderr, re.M), r.stderr[-2000:]


@pytest.mark.slow
def test_concept_section_tests_the_snow_band_on_both_models():
    from convscope.frontends.demo._concepts import concept_section

    rep = Report("t")
    concept_section(rep)
    result, table = rep.sections
    assert "snow band" in result.title and len(result.table) == 3
    assert [r[0] for r in table.table] == [f"digits-snow, wolf, conv{k}" for k in (2, 3, 4)] + [
        f"digits-cnn, digit {d}, features.8" for d in range(5)]
    assert all(r[1] == "1.00" for r in table.table[:3])  # the band drives every wolf, at every layer
    assert table.table[2][-1].startswith("significant: the concept drives")  # conv4, the default test
    for r in table.table[3:]:  # digits-cnn: a significant verdict agrees with the band's causal effect
        assert abs(float(r[-2])) > 1.0, r  # the band does move the logit (measured by the edit)
        if r[-1].startswith("significant"):
            assert r[-1].startswith("significant: the concept drives") == (float(r[-2]) > 0), r


def test_crp_section_shows_the_snow_concepts_of_a_wolf_and_their_loss_without_snow():
    """The demo's concept section: on a wolf scene of digits-snow, each top concept of conv4 puts most
    of its positive relevance on the snow rows (the band covers the bottom 12-16 of 48 rows, the
    scene's digit sits above it), the numbers in the note are the measured ones, and the same scene
    without snow is no longer called a wolf."""
    from convscope.data.toydata import snow_scenes
    from convscope.frontends.demo._crp import band_share, crp_section

    rep = Report("t")
    crp_section(rep)
    with_snow, without = rep.sections
    scenes = snow_scenes("test")
    wolves = scenes.images[scenes.labels == 0]
    got = cs.concepts("digits-snow", wolves[0], layer="conv4", k=3)
    assert got.target_name == "wolf"
    for c in got.concepts:
        share = band_share(c.heatmap, 32)
        assert share > 0.8, (c.name, share)
        assert f"{c.name}: {share:.2f}" in with_snow.note
    assert "the model now says 'husky'" in without.note
    assert with_snow.rows and without.rows  # the figures (heatmaps, patches) are there
    shown = with_snow.rows[0][0]
    assert shown.width is not None and shown.width > 400  # at its natural size, not a thumbnail
