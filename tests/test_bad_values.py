"""Bad values get a one-line error before any work: every numeric CLI flag and every option of
every registered method, generated from the parser and the registry (new ones are covered
automatically), plus the tester's reproductions.

The CLI cases run in-process (``main([...])``); two subprocess cases prove the end-to-end path
(exit 2, one line, no traceback).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convscope as cs
from convscope.core.errors import InputError
from convscope.frontends.cli._common import RangeType
from convscope.frontends.cli.main import build_parser, main
from convscope.methods.registry import check_method_options, get_method, list_methods

ENV = {**os.environ, "MPLBACKEND": "Agg"}
#: commands whose module belongs to another piece of work (cli/serve.py); its flags adopt the
#: shared types there, then this entry goes.
NOT_YET: set[str] = set()


def _subcommands(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield prefix + (name,), sp
                yield from _subcommands(sp, prefix + (name,))


def _numeric_flags():
    out = []
    for cmd, sp in _subcommands(build_parser()):
        for a in sp._actions:
            if a.option_strings and (isinstance(a.type, RangeType) or a.type in (int, float)):
                out.append((cmd, a))
    return out


NUMERIC = _numeric_flags()
PARSER = build_parser()


@pytest.fixture
def one_parser(monkeypatch):
    """main() with a parser built once (building it per call would cost most of these tests)."""
    monkeypatch.setattr("convscope.frontends.cli.main.build_parser", lambda: PARSER)


def _flag_arg(flag: str, value: object) -> list[str]:
    # "--x=-inf" and "-k-3": a separate "-inf" would read as an option to argparse
    if flag.startswith("--"):
        return [f"{flag}={value}"]
    return [f"{flag}{value}"] if str(value).startswith("-") else [flag, str(value)]


def test_every_numeric_flag_declares_its_range():
    plain = [f"{' '.join(c)} {a.option_strings[0]}" for c, a in NUMERIC
             if not isinstance(a.type, RangeType) and c[0] not in NOT_YET]
    assert plain == [], "use a type from convscope.frontends.cli._common (positive_int, finite_float, ...)"
    assert len(NUMERIC) > 50  # the walk found the subcommands' flags
    # every default is inside the declared range
    for cmd, a in NUMERIC:
        if isinstance(a.type, RangeType) and a.default is not None and a.default not in a.type.words:
            assert a.type.range.contains(a.default), (cmd, a.option_strings, a.default)


@pytest.mark.parametrize(
    "cmd,action",
    [(c, a) for c, a in NUMERIC if isinstance(a.type, RangeType)],
    ids=[f"{' '.join(c)} {a.option_strings[0]}" for c, a in NUMERIC if isinstance(a.type, RangeType)],
)
def test_cli_flag_refuses_values_outside_its_range(cmd, action, tmp_path, monkeypatch, capsys, one_parser):
    monkeypatch.chdir(tmp_path)
    flag = action.option_strings[0]
    values = [v for v in action.type.range.outside() if str(v).lower() not in action.type.words]
    for value in [*values, "abc", ""]:
        code = main([*cmd, *_flag_arg(flag, value), "-o", str(tmp_path / "out.png")])
        assert code == 2, (flag, value)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert flag in err and "must be" in err, err
        assert f"got {str(value)!r}" in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_flags_accept_the_edges_of_their_range():
    for _cmd, a in NUMERIC:
        t = a.type
        if not isinstance(t, RangeType):
            continue
        for edge, is_open in ((t.range.lo, t.range.lo_open), (t.range.hi, t.range.hi_open)):
            if edge is not None and not is_open:
                assert t(str(int(edge) if t.range.integer else edge)) == edge
        for w in t.words:
            assert t(w.upper()) == w


# --- method options --------------------------------------------------------------------------

METHODS = list_methods()


def test_every_numeric_method_option_declares_its_range():
    undeclared = [f"{m.name}.{s.name}" for m in METHODS for s in m.option_specs
                  if s.numeric and s.name not in m.ranges]
    assert undeclared == [], "declare ranges= in register() for these options"


def test_defaults_and_fast_options_pass_the_checks():
    for m in METHODS:
        check_method_options(m, {s.name: s.default for s in m.option_specs})
        check_method_options(m, m.fast_options)
        check_method_options(m, m.options)


class _MustNotRun(nn.Module):
    """A model whose forward fails the test: validation has to refuse before any model work."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the model ran before the options were checked")


def _bad_values(spec):
    vals = list(spec.range.outside()) if spec.range is not None else []
    if "str" not in spec.types and "any" not in spec.types:
        vals.append("nan")  # what --option NAME=nan gives (JSON cannot read it)
    if spec.choices:
        vals.append("no-such-choice")
    if "bool" not in spec.types and "any" not in spec.types and spec.range is not None:
        vals.append(True)
    return vals


@pytest.mark.parametrize("info", METHODS, ids=[m.name for m in METHODS])
def test_api_refuses_bad_method_options_before_any_work(info):
    x = torch.zeros(1, 1, 8, 8)
    model = _MustNotRun()
    cases = [(s, v) for s in info.option_specs for v in _bad_values(s)]
    for spec, value in cases:
        with pytest.raises(InputError) as exc:
            cs.explain(model, x, info.name, **{spec.name: value})
        msg = str(exc.value)
        assert "\n" not in msg and spec.name in msg and info.name in msg, msg
    with pytest.raises(InputError, match="unknown option"):
        cs.explain(model, x, info.name, no_such_option=1)


def test_option_specs_are_queryable():
    ig = {s.name: s for s in get_method("integrated_gradients").option_specs}
    steps = ig["steps"]
    assert steps.types == ("int",) and steps.default == 32 and steps.range.lo == 1
    assert "evaluations" in steps.doc and steps.allowed().startswith("an integer in [1, ")
    assert ig["rule"].choices and "gausslegendre" in ig["rule"].choices
    assert {s.name for s in get_method("saliency").option_specs} == set()
    import json

    d = json.loads(json.dumps(steps.to_dict()))
    assert d["min"] == 1 and d["integer"] and d["default"] == 32 and d["accepts"] == steps.allowed()
    assert json.dumps([s.to_dict() for m in METHODS for s in m.option_specs])  # every spec is JSON-able


def test_docs_list_every_declared_option():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    table = {line for line in doc.splitlines() if line.startswith("| ") and "` |" in line}
    want = {f"| {m.name} | `{s.name}` | {s.allowed()} | `{s.default!r}` |"
            for m in METHODS for s in m.option_specs if s.range is not None or s.choices}
    assert want - table == set(), "docs/methods.md 'Options and their ranges' is out of date"


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "good.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(p)
    return p


def _numeric_method_options():
    return [(m.name, s) for m in METHODS for s in m.option_specs if s.range is not None]


def test_cli_option_values_are_checked_before_the_model_loads(png, tmp_path, capsys, one_parser):
    out = tmp_path / "o.png"
    for method, spec in _numeric_method_options():
        finite = [v for v in spec.range.outside() if math.isfinite(v)][:1]
        for text in ("nan", "NaN", "1e999", *map(str, finite)):
            code = main(["explain", str(png), "--model", "no-such-model", "--method", method,
                         "--option", f"{spec.name}={text}", "-o", str(out)])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and f"option {spec.name}=" in err, (method, err)
            assert "no-such-model" not in err  # refused before the model was looked up
    assert not out.exists()


# --- the tester's reproductions ---------------------------------------------------------------


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_output_below_a_file_is_one_line(png, capsys):
    err = _one_line_error(capsys, main(["explain", str(png), "-o", f"{png}/x.png"]))
    assert f"{png}/x.png" in err and "is a file" in err


def test_unwritable_output_names_the_users_path(png, tmp_path, monkeypatch, capsys):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".o.png.x1y2.part"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    err = _one_line_error(capsys, main(["explain", str(png), "-o", str(tmp_path / "o.png")]))
    assert "Permission denied" in err and str(tmp_path / "o.png") in err and ".part" not in err


def test_closed_stdout_is_quiet():
    r, w = os.pipe()
    os.close(r)  # the reader has gone before the first line: every write hits a closed pipe
    try:
        p = subprocess.run([sys.executable, "-m", "convscope", "methods"], stdout=w,
                           stderr=subprocess.PIPE, env=ENV, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == b"", p.stderr.decode()


def test_report_with_unknown_layer_writes_nothing(png, tmp_path, capsys):
    out = tmp_path / "r.html"
    err = _one_line_error(capsys, main(["report", str(png), "--layer", "featurs.3", "-o", str(out)]))
    assert "featurs.3" in err and "features.3" in err  # the close names
    assert not out.exists()


def test_neighbors_query_index_out_of_range(tmp_path, capsys):
    for q in ("#-1", "#20"):
        err = _one_line_error(capsys, main(["neighbors", q, "-l", "features.3", "--limit", "20",
                                            "-o", str(tmp_path / "n.png")]))
        assert "0..19" in err and "not found" not in err
    out = str(tmp_path / "n.png")
    err = _one_line_error(capsys, main(["neighbors", "#x", "-l", "features.3", "-o", out]))
    assert "#N" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["visualize", "--class", "1", "--lr", "nan"],
    ["explain", "{png}", "--method", "integrated_gradients", "--option", "steps=nan"],
])
def test_end_to_end_no_traceback(args, png, tmp_path):
    out = tmp_path / "o.png"
    r = subprocess.run([sys.executable, "-m", "convscope",
                        *[a.format(png=png) for a in args], "-o", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("convscope: error:")
    assert not out.exists()
