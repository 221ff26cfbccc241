"""The README's snippets run as written: the library snippet, "Your own model" and the audit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import convscope as cs

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(cs.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    bindir = str(Path(sys.executable).parent)  # the `convscope` entry point of this interpreter
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd[:2]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_library_snippet_runs_as_written(tmp_path):
    (code,) = _blocks(_section("Use it as a library"), "python")
    (tmp_path / "snippet.py").write_text(code)
    _run([sys.executable, "snippet.py"], tmp_path)
    assert (tmp_path / "overlay.png").stat().st_size > 0 and (tmp_path / "map.npy").exists()
    assert json.loads((tmp_path / "meta.json").read_text())["model"] == "digits-cnn-cue"


def test_your_own_model_section_runs_as_written(tmp_path):
    sec = _section("Your own model")
    bash = _blocks(sec, "bash")
    (py,) = _blocks(sec, "python")
    _run(["bash", "-euo", "pipefail", "-c", bash[0]], tmp_path)  # writes wolfnet.py
    (tmp_path / "snippet.py").write_text(py)
    r = _run([sys.executable, "snippet.py"], tmp_path)
    assert "resize to 48x48" in r.stdout and "layer: conv2" in r.stdout
    assert (tmp_path / "wolf_gradcam.png").exists()
    _run(["bash", "-euo", "pipefail", "-c", bash[1]], tmp_path)  # the card and the CLI
    for name in ("wolf_occlusion.png", "wolf_report.html", "wolf_saliency.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    meta = json.loads((tmp_path / "wolf_saliency.json").read_text())
    assert meta["class_names"] == ["wolf", "husky"]
    assert meta["model_info"]["preprocessing"]["size"] == [48, 48]
    html = (tmp_path / "wolf_report.html").read_text()
    assert "48x48" in html and "wolfnet" in html


def test_audit_section_runs_as_written(tmp_path):
    sec = _section("Find your data set's shortcuts")
    (bash,) = _blocks(sec, "bash")
    (py,) = _blocks(sec, "python")
    _run(["bash", "-euo", "pipefail", "-c", bash], tmp_path)
    d = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [s["class"] for s in d["suspects"]] == ["3"]
    (tmp_path / "snippet.py").write_text(py)
    r = _run([sys.executable, "snippet.py"], tmp_path)
    assert "images of class 3" in r.stdout and "bottom-right" in r.stdout
    assert (tmp_path / "audit.html").stat().st_size > 0 and (tmp_path / "audit.json").is_file()
