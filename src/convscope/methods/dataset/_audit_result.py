"""The result of :func:`convscope.methods.dataset.audit`: :class:`Audit`, with its classes and clusters.

How the numbers are computed is in :mod:`convscope.methods.dataset._audit`'s docstring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.core.result import Result, jsonable
from convscope.core.results import result_repr
from convscope.methods.dataset._compare import ClassComparison
from convscope.methods.dataset._intervene import Intervention
from convscope.methods.dataset._pixels import PixelCheck

__all__ = ["Audit", "AuditClass", "AuditCluster"]


def _r(v: float, nd: int = 6) -> float:
    return float(round(float(v), nd))


@dataclass
class AuditCluster:
    """One strategy of one class: a group of images whose maps look alike.

    ``members`` are data-set indices; ``paths`` their files (image folders only). Boxes are
    ``[x0, y0, x1, y1]`` in input pixels (exclusive ends). See the module docstring for the score.
    """

    id: int
    members: np.ndarray
    paths: list[str] | None
    class_size: int
    box: list[int]
    mass_share: float
    others_share: float
    box_area: float
    concentration: float
    consistency: float
    exclusivity: float
    suspicion: float
    suspect: bool
    reading: str
    mean_probability: float
    predicted_share: float
    prototypes: list[int]
    mean_map: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    prototype_pixels: list[np.ndarray] = field(repr=False, default_factory=list)
    prototype_maps: list[np.ndarray] = field(repr=False, default_factory=list)
    #: which comparisons flagged it: ``"cluster"`` (against the class's other clusters) and/or
    #: ``"class"`` (the class against the other classes, :mod:`convscope.methods.dataset._compare`) and/or
    #: ``"pixels"`` (the class's pixels, screened by pasting, :mod:`convscope.methods.dataset._pixels`)
    flagged_by: list[str] = field(default_factory=list)
    intervention: Intervention | None = None
    class_name: str = ""
    #: the members that carry the class comparison's region, when only that flagged the cluster
    carriers: np.ndarray | None = field(repr=False, default=None)

    @property
    def flagged(self) -> np.ndarray:
        """The images this suspect flags (data-set indices): its carriers (the members that carry
        the region: by their attribution for the class comparison, by their pixels for the pixel
        comparison and the cluster comparison), or its members; none when it is not suspect."""
        if not self.suspect:
            return self.members[:0]
        return self.members if self.carriers is None else self.carriers

    @property
    def size(self) -> int:
        return int(len(self.members))

    @property
    def confirmed(self) -> bool:
        """A suspect whose intervention confirmed it (pasting its region flips other classes)."""
        return bool(self.suspect and self.intervention is not None and self.intervention.confirmed)

    @property
    def evidence(self) -> str:
        """The intervention's sentence (empty for a cluster that was not tested)."""
        if self.intervention is None:
            return ""
        return self.intervention.sentence(self.class_name)

    def __repr__(self) -> str:
        state = ("confirmed suspect" if self.confirmed else "suspect" if self.suspect else "not suspect")
        return (f"AuditCluster(id={self.id}, size={self.size}, box={self.box}, "
                f"suspicion={self.suspicion:.2f}, {state})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "share_of_class": _r(self.size / max(1, self.class_size), 4),
            "members": [int(i) for i in self.members],
            "paths": self.paths,
            "box": self.box,
            "mass_share": _r(self.mass_share, 4),
            "others_share": None if np.isnan(self.others_share) else _r(self.others_share, 4),
            "box_area": _r(self.box_area, 4),
            "concentration": _r(self.concentration, 4),
            "consistency": _r(self.consistency, 4),
            "exclusivity": _r(self.exclusivity, 4),
            "suspicion": _r(self.suspicion, 4),
            "suspect": bool(self.suspect),
            "reading": self.reading,
            "mean_probability": _r(self.mean_probability, 4),
            "predicted_share": _r(self.predicted_share, 4),
            "prototypes": [int(i) for i in self.prototypes],
            "flagged_by": list(self.flagged_by),
            "flagged": [int(i) for i in self.flagged],
            "confirmed": self.confirmed,
            "intervention": None if self.intervention is None else self.intervention.to_dict(),
            "evidence": self.evidence,
        }


@dataclass
class AuditClass:
    """The audit of one class: its spectrum, ``k``, clusters and 2-D embedding (or a note why not)."""

    index: int
    name: str
    model_class: int
    n: int
    k: int
    k_source: str  # "eigengap" | "given" | "none"
    eigenvalues: np.ndarray
    gaps: np.ndarray
    clusters: list[AuditCluster]
    members: np.ndarray  # data-set indices in the order of ``coords`` and ``assignment``
    assignment: np.ndarray
    coords: np.ndarray | None
    note: str = ""
    comparison: ClassComparison | None = None
    pixel_check: PixelCheck | None = None

    def __repr__(self) -> str:
        n_sus = sum(k.suspect for k in self.clusters)
        return (f"AuditClass(name={self.name!r}, n={self.n}, k={self.k}, clusters={len(self.clusters)}, "
                f"suspects={n_sus}" + (f", note={self.note[:60]!r}" if self.note else "") + ")")

    def to_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in ("index", "name", "model_class", "n", "k", "k_source")},
            "eigenvalues": [_r(v) for v in self.eigenvalues],
            "gaps": [_r(v) for v in self.gaps],
            "note": self.note,
            "suspects": [c.id for c in self.clusters if c.suspect],
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "pixel_check": None if self.pixel_check is None else self.pixel_check.to_dict(),
            "clusters": [c.to_dict() for c in self.clusters],
            "embedding": None if self.coords is None else {
                "members": [int(i) for i in self.members],
                "cluster": [int(c) for c in self.assignment],
                "xy": [[_r(a, 4), _r(b, 4)] for a, b in self.coords],
            },
        }


def _names(pairs: list[tuple[AuditClass, AuditCluster]]) -> str:
    return ", ".join(dict.fromkeys(c.name for c, _ in pairs))


def _suspects_line(sus: list[tuple[AuditClass, AuditCluster]], tested: bool = True) -> str:
    """The headline's suspects part: the confirmed shortcuts first, the unconfirmed and untested
    suspects apart, so that a suspect the intervention did not confirm (often the object itself,
    e.g. what tells the two classes of a binary model apart) never reads as a found shortcut."""
    conf = [(c, k) for c, k in sus if k.confirmed]
    untested = [(c, k) for c, k in sus if k.intervention is None or not k.intervention.applied]
    unconf = [(c, k) for c, k in sus if not k.confirmed and all(k is not u for _, u in untested)]
    if conf:  # twin clusters of one shortcut are two suspects: count the classes
        n_cls = len({c.name for c, _ in conf})
        text = (f"Shortcut confirmed by intervention in {n_cls} class(es) ({_names(conf)}: {len(conf)} "
                f"suspect cluster{'s' if len(conf) != 1 else ''}; pasting the region makes images of other "
                "classes this class)")
    else:
        text = "No shortcut confirmed by intervention"
    text += (f"; {len(unconf)} unconfirmed suspect{'s' if len(unconf) != 1 else ''}"
             + (f" ({_names(unconf)}: the region does not carry the class by itself, likely part of the "
                "object; look at it)" if unconf else ""))
    if untested:
        why = ("the intervention could not be applied" if tested
               else "interventions are off (intervention='none'): nothing is proved")
        text += (f"; {len(untested)} suspect{'s' if len(untested) != 1 else ''} not tested "
                 f"({_names(untested)}: {why})")
    return text


@dataclass
class Audit(Result):
    """The result of :func:`audit`: per class, its clusters of attribution maps and the suspects.

    ``to_dict()`` is what ``audit.json`` holds; ``save("x.json" | "x.html")``; ``to_html()`` the
    self-contained report.
    """

    classes: list[AuditClass]
    method: str
    layer: str | None
    options: dict[str, Any]
    settings: dict[str, Any]
    model_info: dict[str, Any]
    data: dict[str, Any]
    image_size: tuple[int, int]
    signed: bool
    store: str | None
    notes: list[str] = field(default_factory=list)
    root: str | None = None
    store_rows: list[int] = field(default_factory=list)  # data-set index of each store row

    @property
    def suspects(self) -> list[tuple[AuditClass, AuditCluster]]:
        """(class, cluster) of every suspect cluster, most suspicious first (by its own suspicion, or
        its class's when the class comparison flagged it)."""
        out = [(c, k) for c in self.classes for k in c.clusters if k.suspect]

        def score(ck: tuple[AuditClass, AuditCluster]) -> float:
            c, k = ck
            by_class = c.comparison.suspicion if "class" in k.flagged_by and c.comparison else 0.0
            return -max(k.suspicion, by_class)

        return sorted(out, key=score)

    @property
    def headline(self) -> str:
        """One line: the suspects and what their interventions showed, or, when there is none,
        what was checked and what could not be."""
        sus = self.suspects
        checked = [c for c in self.classes if c.clusters]
        unchecked = [c for c in self.classes if not c.clusters]
        n_img = sum(c.n for c in checked)
        if sus:
            text = _suspects_line(sus, tested=self.settings.get("intervention") != "none")
        else:
            compared = sum(c.comparison is not None for c in checked)
            text = (f"No suspects in {len(checked)} class(es) ({n_img} images): each class's clusters "
                    f"compared with one another, {compared} class(es) compared with the other classes")
            screened = [c for c in checked if c.pixel_check is not None]
            if screened:
                text += (f", {len(screened)} class(es) whose images agree on a region pasted into other "
                         "classes' images without effect")
        if unchecked:
            shown = ", ".join(f"{c.name} ({c.note.split(':')[0]})" for c in unchecked[:5])
            more = f" and {len(unchecked) - 5} more" if len(unchecked) > 5 else ""
            text += f"; not checked: {shown}{more}"
        if len(checked) == 1 and checked[0].comparison is None:
            text += "; no class comparison (only one class audited)"
        return text

    def __repr__(self) -> str:
        return result_repr(self, [
            ("model", repr(self.model_info.get("model"))), ("method", repr(self.method)),
            ("classes", str(len(self.classes))),
            ("clusters", str(sum(len(c.clusters) for c in self.classes))),
            ("suspects", str(len(self.suspects))),
        ])

    save_formats = (".json", ".html")

    def json_dict(self, folder: Path) -> dict[str, Any]:
        """What ``save("x.json")`` writes: :meth:`to_dict` with data paths relative to ``folder``."""
        return self.to_dict(relative_to=folder)

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """Plain data, what ``audit.json`` holds (``save``: ``.json`` this or ``.html`` the report).

        No absolute path: the data folder (``root``, ``data["path"]``) and the maps' store are
        given relative to ``relative_to`` (default: the current folder; ``save`` gives the JSON
        file's folder); cluster members' ``paths`` are relative to the data folder.
        """
        base = Path(relative_to) if relative_to is not None else Path.cwd()

        def rel(p: str | None) -> str | None:
            return None if p is None else Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix()

        data = dict(self.data)
        if data.get("kind") == "folder" and data.get("path"):
            data["path"] = rel(data["path"])
        return {
            "format": "convscope-audit/1",
            "model": self.model_info,
            "method": self.method,
            "layer": self.layer,
            "options": jsonable(self.options),
            "target": "label",
            "settings": self.settings,
            "data": data,
            "root": rel(self.root),
            "image_size": list(self.image_size),
            "signed_method": self.signed,
            "store": rel(self.store),
            "store_rows": list(self.store_rows),
            "notes": list(self.notes),
            "headline": self.headline,
            "suspects": [{"class": c.name, "cluster": k.id, "suspicion": _r(k.suspicion, 4),
                          "flagged_by": list(k.flagged_by), "confirmed": k.confirmed,
                          "reading": k.reading, "evidence": k.evidence} for c, k in self.suspects],
            "classes": [c.to_dict() for c in self.classes],
        }

    def to_html(self) -> str:
        """The self-contained HTML report."""
        from convscope.methods.dataset._audit_report import audit_report

        return audit_report(self).render()

    def add_to_report(self, report: Any, *, title: str | None = None, note: str = "") -> Any:
        """Append a heading section, then the suspects table and one section per class, to ``report``."""
        from convscope.methods.dataset._audit_report import add_audit_sections

        sec = report.section(title or f"Audit of {self.model_info.get('model')} with {self.method}", note)
        add_audit_sections(report, self)
        return sec

    def _repr_html_(self) -> str:
        """The report in a sandboxed iframe (see :meth:`convscope.frontends.report.Report._repr_html_`)."""
        from convscope.methods.dataset._audit_report import audit_report

        return audit_report(self)._repr_html_()
