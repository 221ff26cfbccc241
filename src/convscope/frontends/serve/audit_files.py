"""Reading an audit's files for the web app: ``audit.json`` checked for its shape, the rows of the
batch store that hold its images and maps, and boxes in pixel rows and columns."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convscope.core.errors import InputError

#: The format of ``audit.json`` this view reads.
FORMAT = "convscope-audit/1"


def _load_json(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "audit.json"
    if not p.is_file():
        raise InputError(f"--audit {path}: no audit.json there; give the folder `convscope audit -o OUT` "
                         "wrote, or its audit.json")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--audit {p}: not a readable JSON file ({exc}); write it again with "
                         "`convscope audit`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"--audit {p}: not a convscope audit (format {got!r}, expected {FORMAT!r}); "
                         "write one with `convscope audit --data DIR --model SPEC -o OUT`")
    try:
        _check_shape(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--audit {p}: malformed audit ({type(exc).__name__}: {exc}); write it again "
                         "with `convscope audit`") from None
    return p, data


def _check_shape(a: dict[str, Any]) -> None:
    """Raise KeyError/TypeError/ValueError where ``a`` lacks what the view reads."""
    h, w = (int(v) for v in a["image_size"])
    if not (h > 0 and w > 0):
        raise ValueError("image_size must be positive")
    for c in a["classes"]:
        int(c["index"]), int(c["model_class"])
        for cl in c["clusters"]:
            int(cl["id"])
            members = [int(i) for i in cl["members"]]
            if cl.get("paths") is not None and len(cl["paths"]) != len(members):
                raise ValueError(f"class {c['name']} cluster {cl['id']}: {len(cl['paths'])} paths "
                                 f"for {len(members)} members")
            if len(cl["box"]) != 4:
                raise ValueError(f"class {c['name']} cluster {cl['id']}: box needs 4 numbers")
        emb = c.get("embedding")
        if emb is not None and not (len(emb["members"]) == len(emb["cluster"]) == len(emb["xy"])):
            raise ValueError(f"class {c['name']}: embedding lists differ in length")


def _box_rc(box: list[int], h: int, w: int) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1] -> (top, left, bottom, right), clipped to an (h, w) image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(0, min(y0, h)), max(0, min(x0, w)), max(0, min(y1, h)), max(0, min(x1, w))


def store_rows(audit: dict[str, Any], store: Any,
               data_labels: Callable[[], np.ndarray] | None = None) -> dict[int, int]:
    """Data-set index -> row of the audit's maps store, for every member listed in ``audit``.

    Args:
        audit: the content of ``audit.json``.
        store: the :class:`~convscope.methods.jobs.store.BatchStore` ``audit()`` wrote the maps to.
        data_labels: the data set's class of every image, when it can be read (used only when
            ``audit.json`` does not list every image the store holds and the store does not name
            its input files).

    Raises:
        InputError: the rows cannot be found, or the store's labels do not match the audit's
            classes (another run's store).
    """
    model_class: dict[int, int] = {}
    path_of: dict[int, str] = {}
    for c in audit["classes"]:
        for cl in c["clusters"]:
            paths = cl.get("paths")
            for j, i in enumerate(cl["members"]):
                model_class[int(i)] = int(c["model_class"])
                if paths is not None:
                    path_of[int(i)] = paths[j]
    listed = sorted(model_class)
    n = store.size
    if audit.get("store_rows") is not None:  # audit.json names the data-set index of every row
        at = {int(i): r for r, i in enumerate(audit["store_rows"])}
        if len(audit["store_rows"]) != n or any(i not in at for i in listed):
            raise InputError("the maps store does not match the audit's store_rows")
        row_of = {i: at[i] for i in listed}
    elif len(listed) == n:  # every computed image is a listed member
        row_of = {i: r for r, i in enumerate(listed)}
    else:
        by_name = _rows_by_file(store)
        if by_name is not None and len(path_of) == len(listed):
            missing = [i for i in listed if path_of[i] not in by_name]
            if missing:
                raise InputError(f"the maps store does not hold image {missing[0]} "
                                 f"({path_of[missing[0]]}) of the audit")
            row_of = {i: by_name[path_of[i]] for i in listed}
        elif data_labels is not None:
            audited = [int(c["index"]) for c in audit["classes"] if int(c["model_class"]) >= 0]
            rows = np.flatnonzero(np.isin(data_labels(), audited))
            if len(rows) != n or not set(listed) <= set(rows.tolist()):
                raise InputError(f"the data set no longer gives the audit's {n} images; the maps "
                                 "cannot be matched to them")
            row_of = {int(i): r for r, i in enumerate(rows)}
            row_of = {i: row_of[i] for i in listed}
        else:
            raise InputError(f"the maps store has {n} rows but audit.json lists {len(listed)} images, "
                             "and the rest cannot be found without the data set")
    if listed:
        labels = np.asarray(store.read("labels"))
        got = labels[[row_of[i] for i in listed]]
        want = np.asarray([model_class[i] for i in listed])
        if not np.array_equal(got, want):
            raise InputError("the maps store does not match audit.json (the classes of its rows differ); "
                             "it was written by another run")
    return row_of


def _rows_by_file(store: Any) -> dict[str, int] | None:
    """The store's ``inputs.json`` as {file (relative to the data folder): row}; None without one."""
    p = store.path / "inputs.json"
    if not p.is_file():
        return None
    return {str(f): r for r, f in enumerate(json.loads(p.read_text())["files"])}
