"""The registry as plain data, to compare across a refactoring (issue #30): every method's metadata,
its function's signature and its option specs (all but the docs, which name module paths).

``python tests/registry_snapshot.py OUT.json`` writes the snapshot of the convscope on the path;
``tests/data/registry_before_layout.json`` was written by the flat layout (commit 0e3465d) before the
move into layer folders, and ``tests/test_layout.py`` compares today's registry with it.
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import convscope as cs


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if hasattr(v, "__dataclass_fields__"):
        return {f: _plain(getattr(v, f)) for f in v.__dataclass_fields__ if f != "doc"}
    return repr(v)


def snapshot() -> dict[str, Any]:
    """``{method name: {field: value}}`` for every registered method."""
    out: dict[str, Any] = {}
    for m in cs.list_methods():
        d: dict[str, Any] = {}
        for f in m.__dataclass_fields__:
            v = getattr(m, f)
            d[f] = (f"{v.__name__}{inspect.signature(v)}" if f == "func" else _plain(v))
        d["option_specs"] = [_plain(s) for s in m.option_specs]
        out[m.name] = d
    return out


if __name__ == "__main__":
    with open(sys.argv[1], "w") as fh:
        json.dump(snapshot(), fh, indent=1, sort_keys=True)
