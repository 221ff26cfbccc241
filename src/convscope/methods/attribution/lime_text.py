"""LIME for text: which words make a text classifier decide as it does.

Not an image method, so it is not in the method registry; call :func:`explain_text` (or the CLI's
``convscope lime-text``). Any ``predict(list[str]) -> probabilities`` works, e.g. a scikit-learn
pipeline's ``predict_proba``.

Ribeiro, Singh and Guestrin, "Why Should I Trust You?", KDD 2016. The features are the distinct
words of the text (hiding a word hides every occurrence, the lime package's ``bow=True``). Sample
``z`` in {0, 1}^d: the first keeps every word, each other one hides ``k`` words with ``k``
uniform in 1..d. A sample's text is the original with the hidden words removed. Weights
``pi(z) = sqrt(exp(-(100 D(z, 1))^2 / width^2))`` with ``D`` the cosine distance and ``width=25``
(the lime package's text defaults), and a weighted ridge fit ``p_t(z) ~ b + w . z`` of the
target class's probability. ``w`` are the word weights; the fit's weighted R^2 says how well a
linear model describes the classifier near this text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.core.result import Result, render_template
from convscope.engines.perturb import DEFAULT_CONVERGE
from convscope.methods.attribution._sampling import coalition_samples
from convscope.methods.attribution._surrogate import lime_weights, split_fit, until_stable, weighted_ridge

__all__ = ["TextExplanation", "explain_text", "tokenize"]

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """The words of ``text`` as (word, start, end) character spans."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]


@dataclass(frozen=True)
class TextExplanation(Result):
    """LIME's explanation of one text: ``save`` to ``.json`` or ``.html``, ``to_html()`` (the
    packaged template ``lime_text.html.j2``), shown inline in notebooks, ``Report.add``-able.

    Attributes:
        text: the explained text.
        words: the distinct words (features), in order of first appearance.
        weights: (d,) one weight per word, for the target class (positive: pushes towards it).
        target: the explained class index.
        class_names: one name per class.
        probabilities: (K,) the classifier's probabilities for the text.
        intercept: the local model's intercept.
        local_r2: weighted R^2 of the local fit.
        n_samples: perturbed texts used.
        stability: correlation of the last two estimates.
        reliability: the predicted correlation of two independent runs' weights (split-half).
        spans: (word index, start, end) for every occurrence, for highlighting.
    """

    text: str
    words: tuple[str, ...]
    weights: np.ndarray
    target: int
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    intercept: float
    local_r2: float
    n_samples: int
    stability: float
    reliability: float = float("nan")
    spans: tuple[tuple[int, int, int], ...] = field(default=())

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words with the largest absolute weight, as (word, weight)."""
        order = np.argsort(-np.abs(self.weights))[:k]
        return [(self.words[i], float(self.weights[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (JSON-ready)."""
        return {
            "text": self.text,
            "target": self.target,
            "target_name": self.class_names[self.target],
            "class_names": list(self.class_names),
            "probabilities": [float(p) for p in self.probabilities],
            "words": [{"word": w, "weight": float(v)}
                      for w, v in zip(self.words, self.weights, strict=True)],
            "intercept": self.intercept,
            "local_r2": self.local_r2,
            "n_samples": self.n_samples,
            "stability": None if np.isnan(self.stability) else self.stability,
            "reliability": None if np.isnan(self.reliability) else self.reliability,
        }

    def segments(self) -> list[dict[str, Any]]:
        """The text cut into pieces with their word weight (``None`` between words), for
        highlighting: [{"text", "weight", "alpha"}]."""
        scale = float(np.abs(self.weights).max()) if len(self.weights) else 0.0
        out: list[dict[str, Any]] = []
        pos = 0
        for wi, s, e in self.spans:
            if s > pos:
                out.append({"text": self.text[pos:s], "weight": None, "alpha": 0.0})
            w = float(self.weights[wi])
            out.append({"text": self.text[s:e], "weight": w,
                        "alpha": abs(w) / scale if scale > 0 else 0.0})
            pos = e
        if pos < len(self.text):
            out.append({"text": self.text[pos:], "weight": None, "alpha": 0.0})
        return out

    save_formats: ClassVar[tuple[str, ...]] = (".json", ".html")

    def report_title(self) -> str:
        return f"LIME for text: why {self.class_names[self.target]!r}"

    def add_to_report(self, report: Any, *, title: str | None = None, note: str = "") -> Any:
        """A section with the highlighted text (what ``report.add(result)`` calls)."""
        sec = report.section(title or self.report_title(), note)
        sec.html_blocks.append(self.to_html())
        return sec

    def to_html(self, k: int = 10) -> str:
        """A self-contained HTML fragment: probability bars, the top ``k`` words and the text
        with every word highlighted (green: towards the target class, red: against)."""
        probs = [
            {"name": n, "p": float(p), "width": f"{100 * float(p):.1f}",
             "colour": "#2b8cbe" if i == self.target else "#bbb"}
            for i, (n, p) in enumerate(zip(self.class_names, self.probabilities, strict=True))
        ]
        top_words = self.top(k)
        scale = max((abs(v) for _, v in top_words), default=0.0) or 1.0
        top = [{"word": w, "weight": v, "width": f"{100 * abs(v) / scale:.1f}",
                "colour": "#1a9850" if v > 0 else "#d73027"} for w, v in top_words]
        segs = self.segments()
        for sg in segs:
            if sg["weight"] is not None:
                rgb = "26,152,80" if sg["weight"] > 0 else "215,48,39"
                a = 0.1 + 0.8 * sg["alpha"] if sg["alpha"] > 0.02 else 0.0
                sg["bg"] = f"rgba({rgb},{a:.2f})"
        return render_template("lime_text.html.j2", e=self, probs=probs, top=top, segments=segs,
                               target_name=self.class_names[self.target])


def _remove(text: str, spans: Sequence[tuple[int, int, int]], keep: np.ndarray) -> str:
    parts, pos = [], 0
    for wi, s, e in spans:
        if not keep[wi]:
            parts.append(text[pos:s])
            pos = e
    parts.append(text[pos:])
    return "".join(parts)


def explain_text(
    predict: Callable[[list[str]], Any],
    text: str,
    *,
    target: int | str | None = None,
    class_names: Sequence[str] | None = None,
    n_samples: int = 1000,
    kernel_width: float = 25.0,
    alpha: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    converge: float | None = DEFAULT_CONVERGE,
    check_every: int = 250,
) -> TextExplanation:
    """Explain ``predict``'s decision on ``text`` with LIME.

    Args:
        predict: ``predict(list of n texts) -> (n, K) probabilities`` (array-like).
        text: the text.
        target: class index or name to explain (default: the predicted class).
        class_names: names of the K classes (default ``"class i"``).
        n_samples: perturbed texts (the maximum with ``converge``).
        kernel_width: width of the kernel on 100 x the cosine distance.
        alpha: ridge penalty.
        batch_size: texts per ``predict`` call.
        seed: seed of the sampling.
        converge: stop once the weights correlate with the previous check's at ``1 - converge``
            or more (default 0.01, the image methods' rule, :class:`~convscope.engines.perturb.Convergence`);
            ``None`` or 0: use all ``n_samples``.
        check_every: samples between convergence checks.

    Raises:
        InputError: empty text, bad target, or ``predict`` returned the wrong shape.
    """
    spans_raw = tokenize(text)
    if not spans_raw:
        raise InputError("the text has no words to explain")
    vocab: dict[str, int] = {}
    spans = []
    for w, s, e in spans_raw:
        spans.append((vocab.setdefault(w, len(vocab)), s, e))
    d = len(vocab)

    def run(texts: list[str]) -> np.ndarray:
        out = np.asarray(predict(texts), dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise InputError(
                f"predict must return (n_texts, n_classes) probabilities, got shape {out.shape}"
            )
        return out

    p0 = run([text])[0]
    k = len(p0)
    names = tuple(class_names) if class_names is not None else tuple(f"class {i}" for i in range(k))
    if len(names) != k:
        raise InputError(f"got {len(names)} class names for {k} classes")
    if target is None:
        t = int(np.argmax(p0))
    elif isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise InputError(f"unknown class {target!r}; classes: {', '.join(names)}")
        t = names.index(target)
    else:
        t = int(target)
        if not 0 <= t < k:
            raise InputError(f"class index {t} out of range for {k} classes")
    z = coalition_samples(n_samples, d, torch.Generator().manual_seed(seed))
    pi = lime_weights(z, kernel_width, scale=100.0)
    zn = z.numpy().astype(bool)
    ys: list[np.ndarray] = []

    def step(start: int, stop: int) -> tuple[Any, Any, Any]:
        for a in range(start, stop, batch_size):
            b = min(stop, a + batch_size)
            texts = [text if zn[i].all() else _remove(text, spans, zn[i]) for i in range(a, b)]
            ys.append(run(texts)[:, t])
        y = torch.from_numpy(np.concatenate(ys)).float()
        return split_fit(lambda z_, y_, w_: weighted_ridge(z_, y_, w_, alpha), z[:stop], y, pi[:stop])

    fits, done, conv = until_stable(n_samples, check_every, converge, step,
                                    estimate=lambda f: f[0][0], halves=lambda f: (f[1][0], f[2][0]), first=4)
    coef, icpt, r2 = fits[0]
    return TextExplanation(
        text=text, words=tuple(vocab), weights=coef.numpy().astype(np.float64), target=t,
        class_names=names, probabilities=p0, intercept=icpt, local_r2=r2, n_samples=done,
        stability=conv.stability, reliability=conv.reliability, spans=tuple(spans),
    )
