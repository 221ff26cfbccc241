"""The audit's own settings (:class:`AuditSettings`): how each class's maps are clustered and
scored, with the ranges every option is checked against when the settings are made."""

from __future__ import annotations

from dataclasses import dataclass

from convscope.core.errors import InputError
from convscope.core.validate import Range, ints, reals
from convscope.methods.dataset._intervene import FILLS

__all__ = ["AUDIT_RANGES", "EMBEDDINGS", "MIN_IMAGES", "AuditSettings"]

#: Allowed values of the audit's numeric settings (the API and the CLI check the same ranges).
AUDIT_RANGES: dict[str, Range] = {
    "k": ints(1, 100),
    "max_k": ints(2, 50),
    "size": ints(4, 128),
    "n_neighbors": ints(2, 200),
    "mass": reals(0.0, 1.0, lo_open=True, hi_open=True),
    "threshold": reals(0.0, 1.0),
    "min_cluster": ints(1, 10**6),
    "prototypes": ints(0, 32),
    "confirm": reals(0.0, 1.0, lo_open=True),
}
#: A class needs this many images to be clustered.


#: A class needs this many images to be clustered.
MIN_IMAGES = 4


EMBEDDINGS = ("tsne", "pca", "umap", "none")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditSettings:
    """How :func:`audit` clusters and scores each class's maps: its keyword options other than the
    batch job's (:class:`~convscope.methods.jobs.batch.JobOptions`); see :func:`audit` for each. Checked
    against :data:`AUDIT_RANGES` and :data:`EMBEDDINGS` when made (an :class:`InputError`)."""

    k: int | None = None
    max_k: int = 8
    size: int = 32
    n_neighbors: int = 10
    mass: float = 0.8
    threshold: float = 0.5
    min_cluster: int = 3
    embedding: str = "tsne"
    prototypes: int = 4
    intervention: str = "others"
    confirm: float = 0.5

    def __post_init__(self) -> None:
        for name, rng in AUDIT_RANGES.items():
            value = getattr(self, name)
            if value is not None and not rng.contains(value):
                raise InputError(f"audit {name}={value!r}: must be {rng.describe()}")
        if self.embedding not in EMBEDDINGS:
            raise InputError(f"unknown embedding {self.embedding!r}; use one of {', '.join(EMBEDDINGS)}")
        if self.intervention not in FILLS:
            raise InputError(f"unknown intervention {self.intervention!r}; use one of {', '.join(FILLS)}")
