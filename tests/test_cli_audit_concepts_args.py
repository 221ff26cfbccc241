"""`convscope audit --concepts-layer/--atlas` are checked before the audit runs: nothing is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import convscope.methods.dataset  # noqa: F401  (the package the CLI imports audit from)
from convscope.frontends.cli.main import main


@pytest.fixture
def no_audit(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def fake_audit(*a: object, **k: object) -> None:
        calls.append(1)
        raise AssertionError("the audit ran before the arguments were checked")

    monkeypatch.setattr(sys.modules["convscope.methods.dataset"], "audit", fake_audit)
    return calls


BASE = ["audit", "--model", "digits-cnn-cue", "--data", "digits", "--limit", "30", "-q"]


@pytest.mark.parametrize(("extra", "says"), [
    (["--concepts-layer", "features.99"], "no layer named 'features.99'"),
    (["--concepts-layer", "featurs.9"], "close matches: features.9"),
    (["--concepts-layer", "features.*"], "--concepts-layer must name one layer"),
    (["--atlas", "ATLAS"], "pass --concepts-layer too"),
    (["--concepts-layer", "features.9", "--atlas", "MISSING"], "no concept atlas at"),
])
def test_bad_concepts_arguments_fail_in_one_line_before_the_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_audit: list[int], extra: list[str], says: str
) -> None:
    (tmp_path / "ATLAS").mkdir()  # an atlas folder that exists: refused without --concepts-layer
    out = tmp_path / "out"
    extra = [str(tmp_path / e) if e in ("ATLAS", "MISSING") else e for e in extra]
    rc = main([*BASE, *extra, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not no_audit
    assert not out.exists()  # no maps.zarr, nothing half-written
