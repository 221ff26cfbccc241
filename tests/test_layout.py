"""The layout rules of docs/design.md that a scan can check (issue #20): no module over 500 lines,
hooks registered in hooks.py only, no private name imported across packages."""

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "convscope"
MODULES = sorted(SRC.rglob("*.py"))


def test_the_scan_sees_the_package():
    assert len(MODULES) > 50 and (SRC / "hooks.py") in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 500, f"{path.relative_to(SRC)} has {n} lines: split it along a seam (docs/design.md)"


HOOK_CALL = re.compile(r"\.register_(forward_hook|forward_pre_hook|full_backward_hook|full_backward_pre_hook|"
                       r"backward_hook|hook|module_forward_hook)\(")


def test_hooks_are_registered_only_in_hooks_py():
    found = [f"{p.relative_to(SRC)}:{i}" for p in MODULES if p.name != "hooks.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if HOOK_CALL.search(line)]
    assert not found, f"hooks registered outside convscope/core/hooks.py: {found}"
    assert HOOK_CALL.search((SRC / "hooks.py").read_text())  # the pattern does find them where they are


PRIVATE_IMPORT = re.compile(r"^[ \t]*from \.\.[\w.]* import (\([^)]*\)|.*)$", re.M)


def _private(names: str) -> list[str]:
    names = re.sub(r"#.*", "", names).strip("()")
    return [n for n in (part.strip().split(" as ")[0] for part in names.split(","))
            if n.startswith("_") and not n.startswith("__")]


def test_no_private_name_is_imported_from_another_package():
    """``from ..pkg.mod import _name`` reaches into another package's internals: a helper used
    across packages is public in the one module that owns it."""
    found = [f"{p.relative_to(SRC)}: {name}" for p in MODULES
             for m in PRIVATE_IMPORT.finditer(p.read_text()) for name in _private(m.group(1))]
    assert not found, found
    assert _private("(a,\n    _b as c,  # why\n    __version__)") == ["_b"]  # the check sees them
