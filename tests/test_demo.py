"""The demo's parts, checked quickly (the full demo is `make demo`)."""

from __future__ import annotations

import convscope as cs
from convscope.demo import ATTRIBUTION_FAMILIES, _lime_text_section, choose_settings, demo_methods
from convscope.report import Report


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
    from convscope.datasets import JUNK_TOKEN

    rep = Report("t")
    _lime_text_section(rep)
    (sec,) = rep.sections
    assert f"is the junk host name '{JUNK_TOKEN}'" in sec.note
    assert JUNK_TOKEN in sec.html_blocks[0]
