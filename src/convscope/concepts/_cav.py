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

**Significance.** The concept's score is computed against each of ``n`` random sets. Two nulls,
both two-sided t-tests whose p-value is multiplied by the number of layers (Bonferroni), capped at 1:

* ``null="counterpart"`` (the paper's test, default): a further random set plays the concept against
  the same ``n`` sets, giving ``n`` scores of a concept that means nothing;
  ``scipy.stats.ttest_ind`` compares the two samples. Its null holds one random set only, so the
  spread *between* random sets is not in it: where a random set's own scores sit far from 0.5 (a
  small network whose gradients barely change from image to image), a concept of random images is
  called significant far more often than ``alpha`` says (7 times in 20 at 1% on ``digits-snow``).
* ``null="exchangeable"``: every random set plays the concept against the other ``n - 1``
  (all of them for mean-difference vectors, the next 3 for a classifier, to bound the fits), giving
  ``n`` mean scores of random concepts made exactly like the concept's; the concept's mean score is
  compared with them by a prediction t-test, ``t = (S_c - mean(S_j)) / (sd(S_j) sqrt(1 + 1/n))``
  with ``n - 1`` degrees of freedom. Valid when the concept is one more set like the random ones
  (its false-positive rate is ``alpha``), and weaker.

Both p-values are in every result; where the chosen one says significant and the other does not,
the result warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ._passes import SetStats

__all__ = ["CAV_KINDS", "NULLS", "LayerTest", "fit_cav", "prediction_test", "separation", "significance"]

#: The ways of making a concept activation vector.
CAV_KINDS = ("mean_difference", "svm", "logistic")
#: The null distributions of the significance test (see the module docstring).
NULLS = ("counterpart", "exchangeable")


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = float(v.norm())
    if not math.isfinite(n) or n == 0.0:
        return torch.zeros_like(v)
    return v / n


def fit_cav(kind: str, concept: SetStats, random: SetStats, *, seed: int = 0,
            c: float = 0.01) -> torch.Tensor:
    """The unit CAV (D,) float32 of ``concept`` against ``random`` by ``kind``.

    Args:
        kind: one of :data:`CAV_KINDS`.
        concept, random: the two sets' statistics at one layer (``rows`` needed unless
            ``kind="mean_difference"``).
        seed: seeds the classifier's solver.
        c: the classifier's inverse regularisation strength.
    """
    if kind == "mean_difference":
        return _unit((concept.mean - random.mean).float())
    if concept.rows is None or random.rows is None:
        raise InputError(f"a {kind} CAV needs the sets' activations")
    x = torch.cat([concept.rows, random.rows]).numpy()
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
        t: the t statistic of the chosen null's test.
        p_value: its two-sided p-value before correction.
        p_adjusted: ``min(1, p_value x number of layers)`` (Bonferroni).
        significant: ``p_adjusted < alpha``.
        null: the null that decided (``"counterpart"`` or ``"exchangeable"``).
        p_counterpart, p_exchangeable: the corrected p-values of both nulls.
        direction: ``"above"`` (the concept raises the class score more often than random
            directions do), ``"below"`` or ``"same"``.
        separation: mean training accuracy of the concept's CAVs (``None`` for mean-difference
            vectors, whose activations are not kept).
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
    null: str = "counterpart"
    p_counterpart: float = 1.0
    p_exchangeable: float = 1.0
    separation: float | None = None

    @property
    def verdict(self) -> str:
        """One line: the score, the p-value and what it means."""
        p = f"p = {self.p_adjusted:.2g}" if self.p_adjusted >= 1e-4 else "p < 1e-4"
        if not self.significant:
            what = "not significant: no different from random directions"
        elif self.direction == "above":
            what = "significant: the concept drives the class"
        else:
            what = "significant: the concept works against the class"
        null = self.random_scores if self.null == "counterpart" else self.set_scores
        return f"{self.layer}: TCAV {self.score:.2f} (random {np.mean(null):.2f}), {p}, {what}"


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
