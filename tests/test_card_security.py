"""Issue #27: a model card is code, like a pickle, and convscope treats it so.

* a card's ``module:Name`` architecture must be an ``nn.Module`` subclass or a function marked
  ``@convscope.model_factory``, checked before anything is called (``subprocess:run``, ``os:system``,
  ``numpy:save``... never run: their marker file is never created);
* a card's ``file.py`` runs only if it lies inside the current folder, or with ``trust_card=True``
  (``--trust-card``), and the first run says so in one line;
* an ``hf:`` folder that ships its own code is refused without ``trust_remote_code=True``
  (``--trust-remote-code``), with a one-line error and never a prompt on the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.core.errors import CodeWarning, ModelLoadError

NET = ("import torch\nfrom torch import nn\n\n\n"
       "class Net(nn.Module):\n"
       "    def __init__(self, k=2):\n        super().__init__()\n        self.fc = nn.Linear(3, k)\n\n"
       "    def forward(self, x):\n        return self.fc(x.mean((2, 3)))\n")


def _env() -> dict:
    src = str(Path(cs.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "MPLBACKEND": "Agg"}


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", *args], cwd=cwd, env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def _card(folder: Path, arch: str, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "card.json"
    p.write_text(json.dumps({"architecture": arch, "input_size": 8, **kw}))
    return p


def _one_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- module:Name architectures: resolved and checked before any call ---------------------------
def _command_cards(marker: Path) -> list[tuple[str, dict]]:
    cmd = f"touch {marker}"
    return [
        ("subprocess:run", {"args": cmd, "shell": True}),
        ("subprocess:check_call", {"args": cmd, "shell": True}),
        ("os:system", {"command": cmd}),
        ("builtins:exec", {"source": f"open({str(marker)!r}, 'w')"}),
        ("pathlib:Path.touch", {}),
        ("numpy:save", {"file": str(marker), "arr": [1]}),  # a third-party function, not a model
        ("torch:save", {"obj": 1, "f": str(marker)}),
        ("numpy:ndarray", {"shape": [1]}),  # a class that is not an nn.Module
    ]


def test_json_card_never_runs_a_command_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    for arch, kwargs in _command_cards(marker):
        card = _card(tmp_path / arch.replace(":", "_"), arch, kwargs=kwargs)
        with pytest.raises(ModelLoadError) as exc:
            cs.load_model(str(card))
        msg = str(exc.value)
        assert "\n" not in msg and ("standard library" in msg or "not a torch nn.Module subclass" in msg
                                    or "has no" in msg), (arch, msg)
        assert not marker.exists(), f"{arch} ran"


def test_json_card_never_runs_a_command_cli(tmp_path):
    marker = tmp_path / "marker"
    for arch, kwargs in _command_cards(marker)[:1] + _command_cards(marker)[5:6]:
        card = _card(tmp_path / arch.replace(":", "_"), arch, kwargs=kwargs)
        r = _cli("layers", str(card), cwd=tmp_path)
        _one_error(r, arch.split(":")[0])
        assert not marker.exists(), f"{arch} ran"


def test_module_card_takes_a_model_class_or_a_marked_factory(tmp_path, monkeypatch):
    pkg = tmp_path / "lib" / "mypkg_cs27"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    marker = tmp_path / "marker"
    (pkg / "models.py").write_text(NET + (
        "\n\nimport convscope\n\n\n@convscope.model_factory\ndef small(k=2):\n    return Net(k)\n\n\n"
        f"def unmarked(k=2):\n    open({str(marker)!r}, 'w').close()\n    return Net(k)\n"))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.chdir(tmp_path)
    for name in ("Net", "small"):
        card = _card(tmp_path / name, f"mypkg_cs27.models:{name}", kwargs={"k": 3})
        with warnings.catch_warnings():
            warnings.simplefilter("error", CodeWarning)  # an installed module: no file is "run"
            lm = cs.load_model(str(card))
        assert isinstance(lm.model, nn.Module) and lm.model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    card = _card(tmp_path / "unmarked", "mypkg_cs27.models:unmarked")
    with pytest.raises(ModelLoadError, match="model_factory"):
        cs.load_model(str(card))
    assert not marker.exists()


def test_file_card_takes_its_own_functions_but_not_imported_callables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    (tmp_path / "net.py").write_text(NET + "\n\nfrom subprocess import run  # noqa\n\n\n"
                                     "def build(k=2):\n    return Net(k)\n")
    lm = cs.load_model(str(_card(tmp_path / "a", "../net.py:build", kwargs={"k": 4})))
    assert lm.model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
    card = _card(tmp_path / "b", "../net.py:run", kwargs={"args": f"touch {marker}", "shell": True})
    with pytest.raises(ModelLoadError, match="not a torch nn.Module subclass"):
        cs.load_model(str(card))
    assert not marker.exists()


# --- file.py cards: inside the current folder, or trusted ----------------------------------------
def _foreign_card(elsewhere: Path, marker: Path) -> Path:
    elsewhere.mkdir(parents=True, exist_ok=True)
    (elsewhere / "net.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + NET)
    return _card(elsewhere, "net.py:Net")


def test_card_from_outside_the_project_needs_trust_api(tmp_path, monkeypatch):
    project, marker = tmp_path / "project", tmp_path / "marker"
    project.mkdir()
    card = _foreign_card(tmp_path / "downloads", marker)
    monkeypatch.chdir(project)
    with pytest.raises(ModelLoadError, match=r"outside the current folder.*trust_card=True \(--trust-card\)"):
        cs.load_model(str(card))
    assert not marker.exists()
    # a card inside the project that points outside it is refused the same way
    inner = _card(project / "cards", str(tmp_path / "downloads" / "net.py") + ":Net")
    with pytest.raises(ModelLoadError, match="outside the current folder"):
        cs.load_model(str(inner))
    assert not marker.exists()
    with pytest.warns(CodeWarning, match="like a pickle"):
        lm = cs.load_model(str(card), trust_card=True)
    assert marker.exists() and lm.model(torch.zeros(1, 3, 8, 8)).shape == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodeWarning)  # said the first time only
        cs.load_model(str(card), trust_card=True)


def test_card_from_outside_the_project_needs_trust_cli(tmp_path):
    project, marker = tmp_path / "project", tmp_path / "marker"
    project.mkdir()
    card = _foreign_card(tmp_path / "downloads", marker)
    r = _cli("layers", str(card), cwd=project)
    _one_error(r, "outside the current folder", "--trust-card")
    assert not marker.exists()
    r = _cli("layers", str(card), "--trust-card", cwd=project)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("convscope: warning: running")]
    assert len(notes) == 1 and "net.py" in notes[0] and "like a pickle" in notes[0], r.stderr
    assert marker.exists() and "fc" in r.stdout
    # a card in the project runs without the flag, and says so once
    marker.unlink()
    local = _foreign_card(project / "mine", marker)
    r = _cli("layers", str(local), cwd=project)
    assert r.returncode == 0 and r.stderr.count("convscope: warning: running") == 1, r.stderr


def test_help_and_docs_say_a_card_is_code():
    root = Path(__file__).resolve().parents[1]
    from convscope.frontends.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for cmd in ("explain", "layers", "serve", "batch", "report", "visualize"):
        text = " ".join(sub.choices[cmd].format_help().split())
        assert "--trust-card" in text and "like a pickle" in text and "--trust-remote-code" in text, cmd
    for doc in ("README.md", "docs/your-model.md"):
        text = (root / doc).read_text()
        assert "--trust-card" in text and "like a pickle" in text and "trust_remote_code" in text, doc


# --- hf: folders that ship code --------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_custom(tmp_path_factory):
    """A random-initialised tiny ViT saved by save_pretrained, whose config names custom code
    (auto_map, an unknown model_type) that creates a marker file when imported."""
    T = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hfcode")
    folder, marker = d / "model", d / "marker"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=8, hidden_size=16,
                                                    num_hidden_layers=1, num_attention_heads=1,
                                                    intermediate_size=16, num_labels=2))
    m.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "customvit_cs27"
    cfg["auto_map"] = {"AutoConfig": "custom.CustomConfig",
                       "AutoModelForImageClassification": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import ViTConfig, ViTForImageClassification\n\n\n"
        "class CustomConfig(ViTConfig):\n    model_type = 'customvit_cs27'\n\n\n"
        "class CustomModel(ViTForImageClassification):\n    config_class = CustomConfig\n")
    return folder, marker, d / "modules"


def test_hf_custom_code_refused_without_a_prompt_api(hf_custom, monkeypatch):
    folder, marker, modules = hf_custom
    monkeypatch.setenv("HF_MODULES_CACHE", str(modules))

    def no_prompt(*a, **k):
        raise AssertionError("convscope asked on the terminal")

    monkeypatch.setattr("builtins.input", no_prompt)
    for weights in ("default", None):
        with pytest.raises(ModelLoadError, match=r"trust_remote_code=True \(CLI: --trust-remote-code\)") as e:
            cs.load_model(f"hf:{folder}", weights=weights)
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_hf_custom_code_cli_one_line_then_opt_in(hf_custom, tmp_path):
    folder, marker, modules = hf_custom
    env_modules = {"HF_MODULES_CACHE": str(modules)}
    os.environ.update(env_modules)  # _env() copies os.environ
    try:
        r = _cli("layers", f"hf:{folder}", "--weights", "default", cwd=tmp_path, timeout=60)
        _one_error(r, "--trust-remote-code")
        assert "Do you wish" not in r.stdout + r.stderr and not marker.exists()
        r = _cli("layers", f"hf:{folder}", "--trust-remote-code", cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        assert marker.exists() and "classifier" in r.stdout  # the opt-in runs the folder's code
    finally:
        for k in env_modules:
            os.environ.pop(k, None)


def test_card_naming_a_main_or_private_module_is_refused_unimported(tmp_path, monkeypatch, capsys):
    """``PIL.__main__`` prints PIL's report on import (other packages' ``__main__`` start a shell or
    their own CLI): a card naming a ``__main__`` or private module or name is refused before import."""
    monkeypatch.chdir(tmp_path)
    for arch in ("PIL.__main__:Net", "torch._C:Net", "convscope.models.digits:_Hidden"):
        mods = set(sys.modules)
        with pytest.raises(ModelLoadError, match="private or __main__"):
            cs.load_model(str(_card(tmp_path / arch.replace(":", "_"), arch)))
        assert "PIL.__main__" not in set(sys.modules) - mods
    assert "Pillow" not in capsys.readouterr().out


def test_home_folder_as_cwd_trusts_only_files_directly_in_it(tmp_path, monkeypatch):
    """A terminal starts in the home folder, with downloads below it: there, a card's file in a
    subfolder is outside the project and needs trust; in any other folder, subfolders are inside."""
    home, marker = tmp_path / "home", tmp_path / "marker"
    card = _foreign_card(home / "Downloads" / "x", marker)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    with pytest.raises(ModelLoadError, match="outside the current folder"):
        cs.load_model(str(card))
    assert not marker.exists()
    monkeypatch.chdir(home / "Downloads")  # a project folder below home: its subfolders count
    cs.load_model(str(card))
    assert marker.exists()
