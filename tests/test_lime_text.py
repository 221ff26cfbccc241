"""LIME for text: an oracle classifier, the planted junk header word, the HTML."""

import numpy as np
import pytest

from convscope.core.errors import InputError
from convscope.data.toydata import JUNK_TOKEN, junk_header_corpus
from convscope.methods.attribution.lime_text import explain_text


def _keyword_model(word):
    def predict(texts):
        p = np.array([0.9 if word in t.split() else 0.1 for t in texts])
        return np.stack([1 - p, p], 1)

    return predict


def test_lime_text_finds_the_only_word_a_classifier_reads():
    text = "the quick brown fox jumps over the lazy dog again"
    e = explain_text(_keyword_model("fox"), text, n_samples=300, class_names=["no", "yes"])
    assert e.target == 1 and e.top(1)[0][0] == "fox"
    weights = dict(zip(e.words, e.weights, strict=True))
    assert weights["fox"] == pytest.approx(0.8, abs=0.1)
    assert max(abs(v) for w, v in weights.items() if w != "fox") < 0.05
    assert e.local_r2 > 0.95
    data = e.to_dict()
    assert data["target_name"] == "yes" and len(data["words"]) == len(set(text.split()))


def test_lime_text_is_seeded_and_converges_early():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    pred = _keyword_model("gamma")
    a = explain_text(pred, text, n_samples=200, seed=1)
    b = explain_text(pred, text, n_samples=200, seed=1)
    np.testing.assert_array_equal(a.weights, b.weights)
    c = explain_text(pred, text, n_samples=5000, converge=0.01, check_every=100)
    assert c.n_samples < 5000 and c.stability >= 0.99


@pytest.fixture(scope="module")
def junk_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = junk_header_corpus(400, seed=0)
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=1000))
    pipe.fit(train.texts, train.labels)
    return pipe, train.class_names


def test_lime_text_finds_the_planted_junk_header_word(junk_pipeline):
    pipe, names = junk_pipeline
    test = junk_header_corpus(40, seed=1)
    docs = [t for t, y in zip(test.texts, test.labels, strict=True) if y == 1][:10]
    hits = 0
    for doc in docs:
        e = explain_text(pipe.predict_proba, doc, n_samples=300, class_names=names)
        hits += e.top(1)[0][0] == JUNK_TOKEN and e.target == 1
    assert hits >= 9, f"the junk word tops the explanation for only {hits}/10 documents"


def test_lime_text_html_escapes_and_highlights():
    text = "<script>alert(1)</script> fox here"
    e = explain_text(_keyword_model("fox"), text, n_samples=100, class_names=["no", "yes"])
    html = e.to_html()
    assert "<script>" not in html and "&lt;" in html
    assert ">fox</span>" in html and "yes" in html and "0.900" in html


def test_lime_text_errors():
    with pytest.raises(InputError):
        explain_text(_keyword_model("x"), "   ")
    with pytest.raises(InputError):
        explain_text(lambda texts: np.zeros(len(texts)), "some words")
    with pytest.raises(InputError):
        explain_text(_keyword_model("x"), "some words", target="nope", class_names=["a", "b"])


def test_cli_lime_text_demo_writes_json_and_html(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "e.json"
    cmd = [sys.executable, "-m", "convscope", "lime-text", "--samples", "300", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    top = max(data["words"], key=lambda w: abs(w["weight"]))
    assert top["word"] == JUNK_TOKEN and data["target_name"] == "sci.space"
    bad = subprocess.run(cmd[:-2] + ["-o", str(tmp_path / "e.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_the_text_explanation_follows_the_result_protocol(tmp_path):
    import json

    import convscope as cs

    e = explain_text(_keyword_model("fox"), "the quick brown fox jumps", n_samples=100,
                     class_names=["no", "yes"])
    assert json.loads(e.save(tmp_path / "e.json").read_text())["words"][3]["word"] == "fox"
    html = e.save(tmp_path / "e.html").read_text()
    assert "fox</span>" in html and html == e._repr_html_()
    with pytest.raises(cs.ConvscopeError, match=r"\.json or \.html"):
        e.save(tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()
    rep = cs.Report("t")
    rep.add(e)
    rep.write(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "LIME for text: why &#39;yes&#39;" in page and "fox</span>" in page
    # the text is escaped, never markup
    evil = explain_text(_keyword_model("fox"), "fox <script>alert(1)</script>", n_samples=50)
    html = evil.to_html()
    assert "<script" not in html and "&lt;/<span" in html and "script</span>&gt;" in html
