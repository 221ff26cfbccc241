"""``convscope.evaluate`` (#33): the method x metric table, its intervals, ranks and errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from helpers import assert_same_state, grad_x_input, metric_setup, model_state

import convscope as cs
from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.methods.evaluation import localisation as lo
from convscope.methods.evaluation.catalogue import FAMILIES, METRICS, coarse_step, select_metrics


@pytest.fixture(scope="module")
def setup():
    net, lm, x, _, _ = metric_setup()
    x = torch.cat([x, torch.rand(7, 1, 12, 12, generator=torch.Generator().manual_seed(1))])
    masks = torch.zeros(10, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 2:9] = True
    return net, lm, x, masks


def test_catalogue_is_one_table_of_every_family():
    assert {m.family for m in METRICS.values()} == set(FAMILIES)
    assert len(METRICS) >= 25
    assert [m.name for m in select_metrics(families="complexity")] == [
        "sparseness", "entropy_complexity", "effective_complexity"]
    assert coarse_step(1024) == 16 and coarse_step(144) == 3 and coarse_step(97) == 97  # a prime: one step
    for n in (1024, 12544, 144, 97):
        d = coarse_step(n)
        assert n % d == 0 and n // d <= 64


def test_table_scores_intervals_and_ranks(setup):
    net, lm, x, masks = setup
    jitter = torch.rand(10, 12, 12, generator=torch.Generator().manual_seed(2))
    methods = {"mask": masks.float() + 0.01 * jitter,
               "inverse": (~masks).float(), "gxi": lambda lm_, xx, t: grad_x_input(net, xx, t)}
    before = model_state(net)
    tab = cs.evaluate(lm, x, methods, metrics=["relevance_rank_accuracy", "localisation_auc", "sparseness",
                                               "max_sensitivity", "pixel_flipping"],
                      masks=masks, n_boot=200, seed=3, progress=False)
    assert_same_state(before, model_state(net))
    assert tab.methods == ["mask", "inverse", "gxi"] and tab.n_images == 10
    # cells are the metric functions' own per-image scores
    np.testing.assert_allclose(tab.scores["mask"]["localisation_auc"],
                               lo.localisation_auc(methods["mask"], masks).double().numpy(), atol=1e-7)
    # the intervals: the percentile bootstrap of the mean, with the documented resamples
    idx = np.random.default_rng(3).integers(0, 10, (200, 10))
    v = tab.scores["gxi"]["sparseness"]
    means = v[idx].mean(1)
    want = (np.percentile(means, 2.5), np.percentile(means, 97.5))
    assert tab.ci["gxi"]["sparseness"] == pytest.approx(want)
    assert tab.ci["gxi"]["sparseness"][0] <= tab.mean("gxi", "sparseness") <= tab.ci["gxi"]["sparseness"][1]
    # ranks follow each metric's direction: the mask localises best, its inverse worst
    r = tab.ranks()
    assert r["relevance_rank_accuracy"] == {"mask": 1.0, "inverse": 3.0, "gxi": 2.0}
    assert tab.family_ranks()["localisation"]["mask"] == 1.0
    # precomputed maps cannot be re-explained: an empty cell that says why, not a guess
    assert np.isnan(tab.scores["mask"]["max_sensitivity"]).all()
    assert "re-explained" in tab.errors["mask"]["max_sensitivity"]
    assert np.isfinite(tab.scores["gxi"]["max_sensitivity"]).all()
    # ... and it has no rank: a method is not marked down for a metric it was not scored on
    assert np.isnan(r["max_sensitivity"]["mask"]) and r["max_sensitivity"]["gxi"] == 1.0
    assert np.isnan(tab.family_ranks()["robustness"]["mask"]) and tab.best()["robustness"] == "gxi"
    assert tab.options["pixel_flipping"]["features_in_step"] == "auto"  # stated, then resolved per size
    assert set(tab.rows()[0]) >= {"method", "metric", "mean", "ci_low", "ci_high", "rank", "seconds"}


def test_saves_and_warns_on_few_images(setup, tmp_path):
    net, lm, x, masks = setup
    with pytest.warns(UnreliableResultWarning, match="confidence intervals"):
        tab = cs.evaluate(lm, x[:3], {"a": torch.rand(3, 12, 12), "b": torch.rand(3, 12, 12)},
                          families="complexity", n_boot=50, progress=False)
    data = json.loads(tab.save(tmp_path / "t.json").read_text())
    assert data["n_images"] == 3 and len(data["rows"]) == 6 and "assumed" in data["model"]
    assert tab.save(tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert "Which method" in tab.report_title()
    # the table carries its own note, for callers that cannot catch warnings (other threads)
    assert len(tab.notes) == 1 and "3 images give wide confidence intervals" in tab.notes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cs.evaluate(lm, x[:3], {"a": torch.rand(3, 12, 12)}, families="complexity", n_boot=50,
                           progress=False).notes == tab.notes
        assert cs.evaluate(lm, x, {"a": torch.rand(10, 12, 12)}, families="complexity", n_boot=50,
                           progress=False).notes == ()


def test_join_of_per_method_tables_equals_one_evaluate(setup):
    # the web app evaluates one method per job and joins the tables: the same table as one call
    net, lm, x, _ = setup
    kw = {"metrics": ["sparseness", "max_sensitivity"], "n_boot": 50, "progress": False}
    whole = cs.evaluate(lm, x, ["saliency", "gradient_x_input"], **kw)
    parts = [cs.evaluate(lm, x, [m], **kw) for m in whole.methods]
    joined = type(whole).join(parts)
    assert joined.methods == whole.methods and joined.metrics == whole.metrics
    for a, b in zip(joined.rows(), whole.rows(), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "seconds":
                np.testing.assert_equal(a[k], b[k])
    assert joined.best() == whole.best() and joined.options == whole.options
    with pytest.raises(InputError, match="same metrics"):
        type(whole).join([parts[0], cs.evaluate(lm, x, ["saliency"], metrics=["sparseness"], n_boot=50,
                                                progress=False)])


def test_bad_input_one_line(setup, tmp_path):
    net, lm, x, masks = setup
    good = {"a": torch.rand(10, 12, 12)}
    nan = torch.rand(10, 12, 12)
    nan[2, 2, 2] = float("nan")
    cases = [
        lambda: cs.evaluate(lm, x, ["no_such_method"], families="complexity"),
        lambda: cs.evaluate(lm, x, good, metrics=["no_such_metric"]),
        lambda: cs.evaluate(lm, x, good, families=["faithfullness"]),
        lambda: cs.evaluate(lm, x, good, metrics=["localisation_auc"]),  # needs masks
        lambda: cs.evaluate(lm, x, {"a": torch.rand(10, 6, 6)}, families="complexity"),
        lambda: cs.evaluate(lm, x, {"a": nan}, families="complexity"),
        lambda: cs.evaluate(lm, x, good, metrics=["sparseness"], n_boot=0),
        lambda: cs.evaluate(lm, x, good, metrics=["sparseness"], options={"nope": {}}),
        lambda: cs.evaluate(lm, x, good, metrics=["pixel_flipping"], options={"pixel_flipping": {"step": 4}}),
        lambda: cs.evaluate(lm, x, good, metrics=["selectivity"],
                            options={"selectivity": {"patch_size": float("nan")}}),
        lambda: cs.evaluate(lm, x, good, metrics=["effective_complexity"],
                            options={"effective_complexity": {"eps": float("inf")}}),
        lambda: cs.evaluate(lm, x, good, metrics=["road_morf"], options={"road_morf": {"noise": -1.0}}),
        lambda: cs.evaluate(lm, x, [], metrics=["sparseness"]),
        lambda: cs.evaluate(lm, x, good, metrics=["sparseness"], families="complexity"),
    ]
    for i, case in enumerate(cases):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(InputError) as err:
                case()
        assert "\n" not in str(err.value), (i, str(err.value))
    tab = cs.evaluate(lm, x, good, metrics=["sparseness"], progress=False)
    with pytest.raises(InputError):
        tab.save(tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, cue_test):
    from PIL import Image

    d = tmp_path_factory.mktemp("digits")
    imgs, masks = [], []
    for i in range(8):
        Image.fromarray((cue_test.images[i, 0].numpy() * 255).round().astype(np.uint8)).save(d / f"d{i}.png")
        Image.fromarray(cue_test.masks[i].numpy().astype(np.uint8) * 255).save(d / f"m{i}.png")
        imgs.append(str(d / f"d{i}.png"))
        masks.append(str(d / f"m{i}.png"))
    return d, imgs, masks


def test_cli_catalogue_table(digit_files, capsys):
    from convscope.frontends.cli.main import main

    d, imgs, masks = digit_files
    out = d / "table.json"
    code = main(["evaluate", *imgs, "--model", "digits-cnn-cue", "--catalogue", "--methods",
                 "gradcam,saliency", "--families", "localisation,complexity", "--masks", *masks,
                 "--n-boot", "100", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "localisation: best gradcam" in text, text
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 9 and {r["family"] for r in rows} == {"localisation", "complexity"}
    png = d / "table.png"
    assert main(["evaluate", *imgs, "--model", "digits-cnn-cue", "--catalogue", "--methods", "gradcam",
                 "--metrics", "sparseness", "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--catalogue", "--metrics", "nonsense"], "unknown metric"),
    (["--catalogue", "--families", "localisation"], "need --masks or --boxes"),
    (["--catalogue", "--families", "faithfullness"], "unknown families"),
    (["--families", "complexity"], "--families needs --catalogue"),
    (["--catalogue", "--methods", "salency"], "did you mean saliency"),
    (["--catalogue", "--n-boot", "0"], "n-boot"),
])
def test_cli_catalogue_errors_are_one_line(digit_files, capsys, argv, message):
    from convscope.frontends.cli.main import main

    d, imgs, _ = digit_files
    out = d / "bad.json"
    code = main(["evaluate", imgs[0], "--model", "digits-cnn-cue", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_report_section_which_method_to_trust(setup, tmp_path):
    _, lm, x, masks = setup
    tab = cs.evaluate(lm, x, {"a": masks.float(), "b": torch.rand(10, 12, 12)}, families="localisation",
                      masks=masks, n_boot=50, progress=False)
    rep = cs.Report("metrics")
    rep.add(tab)
    html = rep.write(tmp_path / "r.html").read_text()
    assert "Which method to trust" in html and "Best per family: localisation: a" in html
    assert "data:image/png;base64" in html
    plain = cs.evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3)), x,
                        {"a": masks.float()}, metrics=["sparseness"], progress=False)
    assert plain.model_info["assumed"] and "convscope assumed" in plain.html_caption()
