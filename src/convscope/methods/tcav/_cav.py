"""Concept activation vectors and the significance test of TCAV.

A concept activation vector (CAV) at a layer is a direction in the layer's flattened activation
space that points from a random set's activations towards the concept's (Kim et al., "Beyond
feature attribution: testing with concept activation vectors (TCAV)", ICML 2018):

* ``"mean_difference"`` (default; the "FastCAV" vector, Schmalwasser et al. 2025): ``v = mean(A_c) -
  mean(A_r)``, computed from running sums, so the activations are never held;
* ``"svm"``: the normal of a linear SVM (``sklearn.svm.LinearSVC``) separating concept (1) from
  random (0) activations;
* ``"logistic"``: the weights of a logistic regression (``sklearn.linear_model.LogisticRegression``).

Every vector is scaled to unit length (the sign count does not depend on the scale; the magnitude
then reads as a directional derivative along a unit direction).

**Two statistics.** For a class image ``x`` and a unit CAV ``v``, ``S(x) = grad logit . v``:

* ``statistic="sensitivity"`` (default): the mean of ``S(x)`` over the class along ``v`` made
  orthogonal to ``o``, the random images' mean activation (unit; :func:`orthogonal_means`). Post-ReLU
  activations are non-negative, so the difference of two sets' means leans along ``o`` by however
  much brighter or busier one set is than the other, and a class's gradient is consistently signed
  along ``o``: removing that component removes most of the spread between random directions
  (``digits-snow``, ``conv4``: sd 0.0069 to 0.0013) and keeps the concept's own direction.
* ``statistic="score"``: the TCAV score of the paper, the share of the class with ``S(x) > 0``
  along ``v`` itself (the number Captum gives). Where the class's gradient hardly changes from image
  to image the sign is the same for nearly every image along *any* direction: random directions
  score near 0 or 1 and a perfect score is no evidence (:func:`saturation`, warned in the result).

**Two nulls**, both two-sided, the p-value multiplied by the number of layers (Bonferroni), capped
at 1:

* ``null="exchangeable"`` (default): every random set plays the concept against the other ``n - 1``
  (all of them for mean-difference vectors, the next 3 for a classifier, to bound the fits), giving
  ``n`` values of random concepts made exactly like the concept's; the concept's value is compared
  with them by a prediction t-test, ``t = (S_c - mean(S_j)) / (sd(S_j) sqrt(1 + 1/n))`` with
  ``n - 1`` degrees of freedom. Valid when the concept is one more set like the random ones.
* ``null="counterpart"`` (the paper's test with ``statistic="score"``): a further random set plays
  the concept against the same ``n`` sets; ``scipy.stats.ttest_ind`` compares the two samples of
  ``n``. Its null holds one random set only, so the spread *between* random sets is not in it: a
  concept of random images is called significant far more often than ``alpha`` says (7 times in 20
  at 1% on ``digits-snow``).

Every result holds the four p-values (``p_values``); where the chosen test says significant and the
default one does not, the result warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.methods.tcav._passes import SetStats

__all__ = ["CAV_KINDS", "NULLS", "SATURATED", "STATISTICS", "LayerTest", "activation_scale", "fit_cav",
           "orthogonal_means", "prediction_test", "saturation", "separation", "significance"]

#: The ways of making a concept activation vector.
CAV_KINDS = ("mean_difference", "svm", "logistic")
#: The null distributions of the significance test (see the module docstring).
NULLS = ("exchangeable", "counterpart")
#: The statistics the test compares (see the module docstring); the first is the default.
STATISTICS = ("sensitivity", "score")
#: A layer's TCAV score is called saturated when at least this share of random directions score
#: <= 0.1 or >= 0.9 (:func:`saturation`).
SATURATED = 0.5


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = float(v.norm())
    if not math.isfinite(n) or n == 0.0:
        return torch.zeros_like(v)
    return v / n


def activation_scale(sets: list[SetStats]) -> float:
    """The mean norm of the sets' flattened activations (their rows), 1.0 without rows or for
    all-zero rows: what a classifier's activations are divided by (:func:`fit_cav`)."""
    rows = [s.rows for s in sets if s.rows is not None and len(s.rows)]
    if not rows:
        return 1.0
    m = float(torch.cat(rows).double().norm(dim=1).mean())
    return m if math.isfinite(m) and m > 0 else 1.0


def fit_cav(kind: str, concept: SetStats, random: SetStats, *, seed: int = 0,
            c: float = 0.01, scale: float = 1.0) -> torch.Tensor:
    """The unit CAV (D,) float32 of ``concept`` against ``random`` by ``kind``.

    A classifier is fitted on the activations divided by ``scale`` (the layer's
    :func:`activation_scale`), so ``c`` means the same at every layer of every model. Dividing by
    one number does not turn the space, only what the regularisation weighs: unscaled, ``c`` acts
    as ``c * scale**2`` (the margin term grows with the activations' norm); on ``digits-snow`` at
    ``conv4`` (rows of norm ~77 to ~470) ``c=0.01`` then gave a nearly hard-margin vector whose
    sensitivity had the opposite sign of the mean difference's (docs/concepts.md).

    Args:
        kind: one of :data:`CAV_KINDS`.
        concept, random: the two sets' statistics at one layer (``rows`` needed unless
            ``kind="mean_difference"``).
        seed: seeds the classifier's solver.
        c: the classifier's inverse regularisation strength, for activations of unit mean norm.
        scale: what the activations are divided by before the fit (the vector's direction in the
            layer's space is returned).
    """
    if kind == "mean_difference":
        return _unit((concept.mean - random.mean).float())
    if concept.rows is None or random.rows is None:
        raise InputError(f"a {kind} CAV needs the sets' activations")
    x = (torch.cat([concept.rows, random.rows]).double() / scale).numpy()
    y = np.r_[np.ones(len(concept.rows)), np.zeros(len(random.rows))]
    if kind == "svm":
        from sklearn.svm import LinearSVC

        clf = LinearSVC(C=c, random_state=seed, max_iter=5000)
    elif kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, random_state=seed, max_iter=2000)
    else:
        raise InputError(f"unknown cav {kind!r}; use one of {', '.join(CAV_KINDS)}")
    clf.fit(x, y)
    return _unit(torch.from_numpy(np.asarray(clf.coef_[0], dtype=np.float32)))


def separation(v: torch.Tensor, concept: SetStats, random: SetStats) -> float | None:
    """Share of the two sets' images on the right side of the midpoint between their mean
    projections on ``v`` (training accuracy of the CAV); ``None`` without the rows."""
    if concept.rows is None or random.rows is None:
        return None
    pc, pr = concept.rows @ v, random.rows @ v
    mid = 0.5 * (float(pc.mean()) + float(pr.mean()))
    right = int((pc > mid).sum()) + int((pr <= mid).sum())
    return right / (len(pc) + len(pr))


def orthogonal_means(d: torch.Tensor, cos: torch.Tensor, d_o: torch.Tensor) -> torch.Tensor:
    """The mean directional derivative along each vector made orthogonal to a unit direction ``o``.

    With ``S = g . v`` (``d``), ``S_o = g . o`` (``d_o``) and ``cos = v . o`` for unit ``v``, the unit
    vector ``(v - cos o) / sqrt(1 - cos^2)`` gives ``g . it = (S - cos S_o) / sqrt(1 - cos^2)``: no
    second pass. A vector along ``o`` itself (``1 - cos^2 < 1e-12``) gives 0.

    Shape:
        d: (N, K); cos: (K,); d_o: (N,). Returns (K,) float64.
    """
    d, cos, d_o = d.double(), cos.double(), d_o.double()
    rest = (1.0 - cos * cos).clamp_min(0.0)
    out = (d - cos[None] * d_o[:, None]).mean(0) / rest.clamp_min(1e-12).sqrt()
    return torch.where(rest < 1e-12, torch.zeros_like(out), out)


def saturation(scores: np.ndarray) -> float:
    """Share of random directions whose TCAV score is <= 0.1 or >= 0.9: how far the sign of the
    class's directional derivative is the same for (nearly) every image along *any* direction."""
    s = np.asarray(scores, dtype=float)
    return float(np.mean((s <= 0.1) | (s >= 0.9))) if s.size else 0.0


@dataclass(frozen=True)
class LayerTest:
    """The concept test at one layer.

    Attributes:
        layer: the layer's dotted name.
        score: mean TCAV score of the concept over its CAVs (one per random set): the share of the
            class's images whose directional derivative along the CAV is positive.
        scores: the score against each random set.
        random_scores: the scores of a random counterpart set taken as the concept (the paper's null).
        set_scores: the mean score of each random set taken as the concept against the others
            (the exchangeable null).
        magnitude: mean over the concept's CAVs of the mean directional derivative.
        magnitudes: that mean for each CAV.
        t: the t statistic of the chosen test.
        p_value: its two-sided p-value before correction.
        p_adjusted: ``min(1, p_value x number of layers)`` (Bonferroni).
        significant: ``p_adjusted < alpha``.
        null: the null that decided (``"exchangeable"`` or ``"counterpart"``).
        p_counterpart, p_exchangeable: the corrected p-values of the *score* under both nulls.
        direction: ``"above"`` (the concept raises the class score more than random directions do),
            ``"below"`` or ``"same"``, by the chosen statistic.
        separation: mean training accuracy of the concept's CAVs (``None`` for mean-difference
            vectors, whose activations are not kept).
        statistic: the statistic that decided (``"sensitivity"`` or ``"score"``).
        sensitivity: the concept's mean directional derivative along its CAVs made orthogonal to the
            random images' mean activation (:func:`orthogonal_means`), averaged over its CAVs.
        sensitivities: that value for each CAV.
        set_sensitivities, random_sensitivities: the same for each random set taken as the concept
            (exchangeable null) and for the counterpart set's CAVs (counterpart null).
        p_values: the corrected p-value of every test, keyed ``"statistic/null"``.
        saturation: share of random directions scoring <= 0.1 or >= 0.9 (:func:`saturation`).
    """

    layer: str
    score: float
    scores: tuple[float, ...]
    random_scores: tuple[float, ...]
    magnitude: float
    magnitudes: tuple[float, ...]
    t: float
    p_value: float
    p_adjusted: float
    significant: bool
    direction: str
    set_scores: tuple[float, ...] = ()
    null: str = "exchangeable"
    p_counterpart: float = 1.0
    p_exchangeable: float = 1.0
    separation: float | None = None
    statistic: str = "sensitivity"
    sensitivity: float = 0.0
    sensitivities: tuple[float, ...] = ()
    set_sensitivities: tuple[float, ...] = ()
    random_sensitivities: tuple[float, ...] = ()
    p_values: dict[str, float] = field(default_factory=dict)
    saturation: float = 0.0

    @property
    def saturated(self) -> bool:
        """Whether random directions mostly score near 0 or 1 (the score is then no evidence)."""
        return self.saturation >= SATURATED

    def null_values(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(concept's values, the null's values)`` of the chosen statistic and null."""
        if self.statistic == "score":
            return self.scores, (self.random_scores if self.null == "counterpart" else self.set_scores)
        return self.sensitivities, (self.random_sensitivities if self.null == "counterpart"
                                    else self.set_sensitivities)

    @property
    def verdict(self) -> str:
        """One line: the score, the sensitivity, the p-value of the chosen test and what it means."""
        p = f"p = {self.p_adjusted:.2g}" if self.p_adjusted >= 1e-4 else "p < 1e-4"
        if not self.significant:
            what = "not significant: no different from random directions"
        elif self.direction == "above":
            what = "significant: the concept drives the class"
        else:
            what = "significant: the concept works against the class"
        scores = self.random_scores if self.null == "counterpart" else self.set_scores
        sat = f", saturated: {self.saturation:.0%} of random directions score <=0.1 or >=0.9" \
            if self.saturated else ""
        sens = self.random_sensitivities if self.null == "counterpart" else self.set_sensitivities
        sd = float(np.std(sens, ddof=1)) if len(sens) > 1 else 0.0
        mid = float(np.mean(sens)) if sens else 0.0
        mid = 0.0 if abs(mid) <= 1e-6 * sd else mid  # the exchangeable sets' mean is 0 up to rounding
        return (f"{self.layer}: TCAV {self.score:.2f} (random {np.mean(scores):.2f}{sat}), sensitivity "
                f"{self.sensitivity:.2g} (random {mid:.2g} +- {sd:.2g}), "
                f"{self.statistic}/{self.null} {p}, {what}")


def significance(scores: np.ndarray, null: np.ndarray, n_layers: int) -> tuple[float, float, float]:
    """``(t, p, p_adjusted)``: two-sided t-test of ``scores`` against ``null``, Bonferroni over
    ``n_layers``. Two samples without spread: equal means give p = 1, different means p = 0."""
    from scipy import stats

    if np.ptp(scores) == 0 and np.ptp(null) == 0:
        same = float(scores[0]) == float(null[0])
        t, p = (0.0, 1.0) if same else (math.copysign(math.inf, float(scores[0] - null[0])), 0.0)
    else:
        import warnings

        with warnings.catch_warnings():  # one sample without spread: scipy's precision note, not ours
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind(scores, null)
        t, p = float(res.statistic), float(res.pvalue)
        if not math.isfinite(p):
            p = 1.0
    return t, p, min(1.0, p * n_layers)


def prediction_test(score: float, null: np.ndarray, n_layers: int) -> tuple[float, float, float]:
    """``(t, p, p_adjusted)``: is ``score`` one more draw of ``null``'s distribution? The two-sided
    prediction t-test ``t = (score - mean) / (sd sqrt(1 + 1/n))``, ``n - 1`` degrees of freedom;
    Bonferroni over ``n_layers``. A null without spread: p = 1 at its value, else 0."""
    from scipy import stats

    n = len(null)
    sd = float(np.std(null, ddof=1)) if n > 1 else 0.0
    gap = float(score - np.mean(null))
    if sd == 0.0:
        t, p = (0.0, 1.0) if gap == 0.0 else (math.copysign(math.inf, gap), 0.0)
    else:
        t = gap / (sd * math.sqrt(1 + 1 / n))
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return t, p, min(1.0, p * n_layers)


def layer_test(layer: str, d: torch.Tensor, cos: torch.Tensor, *, n_random: int, partners: int,
               statistic: str, null: str, n_layers: int, alpha: float,
               separation: float | None = None) -> LayerTest:
    """Every statistic and p-value of one layer from its directional derivatives.

    Args:
        layer: the layer's name.
        d: (N, K + 1) directional derivatives of the N class images along the K vectors (the
            concept's ``n_random``, the counterpart's ``n_random``, then ``partners`` per random set)
            and, last, along ``o``, the random images' mean activation (unit).
        cos: (K,) each vector's cosine with ``o``.
        n_random, partners: see ``d``.
        statistic, null: the test that decides (:data:`STATISTICS`, :data:`NULLS`).
        n_layers: layers tested (Bonferroni).
        alpha: significance level of the corrected p-value.
        separation: the concept's CAVs' mean training accuracy, if known.
    """
    d = d.double()
    n = n_random
    sc = (d[:, :-1] > 0).double().mean(0).numpy()
    mag = d[:, :-1].mean(0).numpy()
    sens = orthogonal_means(d[:, :-1], cos, d[:, -1]).numpy()
    values = {
        "score": (sc[:n], sc[n:2 * n], sc[2 * n:].reshape(n, partners).mean(1)),
        "sensitivity": (sens[:n], sens[n:2 * n], sens[2 * n:].reshape(n, partners).mean(1)),
    }
    tests: dict[str, tuple[float, float, float]] = {}
    for stat, (own, counter, sets) in values.items():
        tests[f"{stat}/counterpart"] = significance(own, counter, n_layers)
        tests[f"{stat}/exchangeable"] = prediction_test(float(own.mean()), sets, n_layers)
    own, counter, sets = values[statistic]
    t, p, p_adj = tests[f"{statistic}/{null}"]
    gap = float(own.mean() - (counter.mean() if null == "counterpart" else sets.mean()))
    s, r, ss = values["score"]
    return LayerTest(
        layer=layer, score=float(s.mean()), scores=tuple(map(float, s)), random_scores=tuple(map(float, r)),
        magnitude=float(mag[:n].mean()), magnitudes=tuple(map(float, mag[:n])),
        t=t, p_value=p, p_adjusted=p_adj, significant=p_adj < alpha,
        direction="above" if gap > 0 else "below" if gap < 0 else "same",
        set_scores=tuple(map(float, ss)), null=null, p_counterpart=tests["score/counterpart"][2],
        p_exchangeable=tests["score/exchangeable"][2], separation=separation, statistic=statistic,
        sensitivity=float(values["sensitivity"][0].mean()),
        sensitivities=tuple(map(float, values["sensitivity"][0])),
        random_sensitivities=tuple(map(float, values["sensitivity"][1])),
        set_sensitivities=tuple(map(float, values["sensitivity"][2])),
        p_values={k: v[2] for k, v in tests.items()}, saturation=saturation(sc[2 * n:]))
