"""A text corpus with a planted junk header word, for LIME on text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convscope.core.errors import InputError

__all__ = [
    "JUNK_TOKEN", "TextCorpus", "junk_header_corpus",
]


#: The header word that gives the label away in :func:`junk_header_corpus`.
JUNK_TOKEN = "kestrel"

_TOPIC_WORDS = (
    ("god", "faith", "belief", "religion", "argument", "moral", "evidence", "church", "atheist",
     "bible", "reason", "truth"),
    ("orbit", "launch", "nasa", "shuttle", "moon", "rocket", "mission", "satellite", "space",
     "station", "solar", "earth"),
)
_COMMON_WORDS = (
    "the", "people", "think", "would", "about", "really", "question", "point", "years", "time",
    "write", "article", "post", "know", "good", "read", "right", "said", "well", "many", "also",
    "discussion", "example", "world", "different", "case", "problem", "believe", "system", "data",
)
_HOSTS = ("mailhub", "relay", "newsfeed", "gateway", "uunet", "netcom", "sparky", "mercury")


@dataclass(frozen=True)
class TextCorpus:
    """Documents with labels.

    Attributes:
        texts: the documents (a header block, a blank line, a body).
        labels: (N,) class indices.
        class_names: one name per class.
        junk_token: the planted header word (``None``-free: always set).
        planted: (N,) bool, whether a document carries the junk word.
    """

    texts: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]
    junk_token: str
    planted: np.ndarray


def junk_header_corpus(
    n: int = 400,
    *,
    seed: int = 0,
    topic_strength: float = 0.05,
    body_words: int = 40,
    junk_rate: float = 1.0,
) -> TextCorpus:
    """A synthetic two-newsgroup corpus (``alt.atheism`` vs ``sci.space``) whose class-1 documents
    name the posting host ``kestrel`` in their header: a junk word that predicts the label
    perfectly, like the header artefacts LIME exposed in the 20 newsgroups data (Ribeiro et al.
    2016). Class-0 documents name other hosts. The bodies mix common words with only a few topic
    words (``topic_strength``), so the topic is a weaker signal than the header.

    Args:
        n: number of documents (classes alternate).
        seed: seed of everything random.
        topic_strength: share of body words drawn from the class's topic vocabulary.
        body_words: words per body.
        junk_rate: probability that a class-1 document carries the junk word.
    """
    if n < 2 or not 0 <= topic_strength <= 1 or not 0 <= junk_rate <= 1:
        raise InputError("junk_header_corpus needs n >= 2 and rates in [0, 1]")
    rng = np.random.default_rng(seed)
    texts, labels, planted = [], [], []
    for i in range(n):
        y = i % 2
        plant = bool(y == 1 and rng.random() < junk_rate)
        host = JUNK_TOKEN if plant else str(rng.choice(_HOSTS))
        user = f"user{int(rng.integers(1000))}"
        topical = rng.random(body_words) < topic_strength
        words = [
            str(rng.choice(_TOPIC_WORDS[y])) if t else str(rng.choice(_COMMON_WORDS)) for t in topical
        ]
        header = f"From: {user}@{host}.example.org\nSubject: re: {' '.join(words[:3])}\n"
        texts.append(header + "\n" + " ".join(words) + "\n")
        labels.append(y)
        planted.append(plant)
    return TextCorpus(texts, np.asarray(labels), ("alt.atheism", "sci.space"), JUNK_TOKEN,
                      np.asarray(planted))
