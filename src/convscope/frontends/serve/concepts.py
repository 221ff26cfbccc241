"""The web app's concept-test view: saved concept tests (``convscope concept-test -o T.json``).

:class:`ConceptView` reads the JSON files at start-up (``convscope serve --concepts T.json ...``)
and serves them, checked and in the order given, at ``/api/concepts`` for the page ``/concepts``:
per test the concept, the class, the setting, and per layer the concept's scores against each
random set, both nulls' scores, the sensitivity, every p-value, the saturation and the verdict;
the warnings and what was assumed.
Requests name no path: the files are the ones given at start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convscope.core.errors import InputError

__all__ = ["ConceptView", "NotInConcepts"]

#: Keys every layer of a saved concept test carries (what the page draws).
_LAYER_KEYS = ("layer", "score", "scores", "random_scores", "set_scores", "p_counterpart", "p_exchangeable",
               "p_adjusted", "significant", "direction", "verdict", "null")


class NotInConcepts(InputError):
    """No concept test is loaded (the app answers 404)."""


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the concept test {path} ({type(exc).__name__}); give the .json "
                         "that `convscope concept-test -o T.json` wrote") from None
    if not isinstance(d, dict) or d.get("kind") != "concept_test":
        raise InputError(f"{path} is not a saved concept test (no \"kind\": \"concept_test\"); give the "
                         ".json that `convscope concept-test -o T.json` wrote")
    layers = d.get("layers")
    if not isinstance(layers, list) or not layers or any(
            not isinstance(t, dict) or any(k not in t for k in _LAYER_KEYS) for t in layers):
        raise InputError(f"{path}: its layers lack scores; save the test again with this convscope")
    return d


class ConceptView:
    """Saved concept tests for the web app.

    Args:
        paths: the tests' ``.json`` files.

    Raises:
        InputError: a file is missing, unreadable or not a saved concept test.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        if not paths:
            raise InputError("give at least one saved concept test (.json)")
        self.paths = [Path(p) for p in paths]
        tests = [_read(p) | {"file": p.name} for p in self.paths]
        self.json = json.dumps({"tests": tests}).encode()
        self.count = len(tests)
