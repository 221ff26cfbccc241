"""Issue #27, item 1: a warning that is not convscope's (from the user's model file, from loading its
weights, from its forward pass during the method) is shown once and the command exits.

The CLI used to re-emit such warnings inside the block that recorded them, so each re-emitted warning
was appended to the list being read: an endless loop that ate all memory. This test runs EVERY CLI
subcommand that takes a model, enumerated from the parser (a subcommand added later without tiny
arguments here fails the test), as a subprocess under a 4 GB address-space limit and a timeout.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.frontends.cli.main import build_parser

IMPORT_W = "CS27-IMPORT-WARNING raised when the architecture file is imported"
FORWARD_W = "CS27-FORWARD-WARNING raised by the model's forward pass"
TORCH_W = "TypedStorage is deprecated"  # torch's own warning, raised while the weights load
MEMORY = 4 * 1024**3
TIMEOUT = 150

NET = f'''import warnings

import torch
import torch.nn.functional as F
from torch import nn

warnings.warn("{IMPORT_W}", UserWarning)


class Net(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, k)

    def load_state_dict(self, state, *args, **kwargs):
        torch.zeros(1).storage()  # torch warns: TypedStorage is deprecated
        return super().load_state_dict(state, *args, **kwargs)

    def forward(self, x):
        warnings.warn("{FORWARD_W}", UserWarning)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))
'''

# Commands that take no model: nothing of the user's is loaded, so no foreign warning can arise.
NO_MODEL = {
    "models": "lists specs; loads no model",
    "methods": "lists the registry; loads no model",
    "demo": "runs on the bundled models only",
    "benchmark": "the planted-cue benchmark runs on the bundled models only",
    "lime-text": "explains a text classifier given as a Python callable, not a model card",
}

# The smallest arguments that make each model-taking command load the card and run its method.
# {img}, {img2}, {data}, {out} are filled in per run.
ARGS = {
    "layers": ["{card}", "--weights", "default"],
    "explain": ["{img}", "--method", "saliency", "-o", "{out}/e.png"],
    "audit": ["--data", "{data}", "--method", "saliency", "--size", "8",
              "--embedding", "pca", "--min-cluster", "2", "--max-k", "2", "--neighbors", "2", "-q",
              "-o", "{out}/aud"],
    "batch": ["--data", "{data}", "--method", "saliency", "-q", "-o", "{out}/b.zarr"],
    "top-activations": ["--data", "{data}", "--layer", "conv2", "-k", "2", "-o", "{out}/t.png"],
    "neighbors": ["{img}", "--data", "{data}", "--layer", "conv2", "-k", "2", "-o", "{out}/n.png"],
    "embed": ["--data", "{data}", "--layer", "conv2", "-o", "{out}/m.png"],
    "evaluate": ["{img}", "--methods", "saliency", "--metrics", "deletion", "--steps", "2",
                 "-o", "{out}/ev.json"],
    "visualize": ["--class", "0", "--steps", "2", "--size", "16", "--no-progress", "-o", "{out}/v.png"],
    "filters": ["--layer", "conv1", "-o", "{out}/f.png"],
    "activations": ["{img}", "--layer", "conv2", "-o", "{out}/a.png"],
    "deepdream": ["{img}", "--layer", "conv2", "--octaves", "1", "--steps", "2", "--no-progress",
                  "-o", "{out}/d.png"],
    "report": ["{img}", "--methods", "saliency", "--topk", "2", "-q", "-o", "{out}/r.html"],
    "adversarial": ["{img}", "--method", "fgsm", "-o", "{out}/adv.png"],
    "invert": ["{img}", "--layer", "conv2", "--steps", "2", "-o", "{out}/inv.png"],
    "texture": ["{img}", "--layer", "conv1", "--size", "16", "--source-size", "16", "--steps", "2",
                "-o", "{out}/tex.png"],
    "style": ["{img}", "{img2}", "--content-layer", "conv2", "--style-layer", "conv1", "--size", "16",
              "--style-size", "16", "--steps", "2", "-o", "{out}/sty.png"],
    "concept-test": ["--concept", "{data}/a", "--random", "{data}/b", "--class", "a", "--images", "{data}/a",
                     "--layers", "conv2", "--n-random", "2", "--random-size", "2", "-o", "{out}/c.json"],
    "concepts": ["{img}", "--layer", "conv2", "--k", "2", "-o", "{out}/crp.png"],
    "atlas": ["--data", "{data}", "--layer", "conv2", "--n", "2", "--batch-size", "3", "-q",
              "-o", "{out}/atl.zarr", "--save", "{out}/atl.png"],
    "serve": None,  # a server: started, asked once, stopped (test_serve_with_foreign_warnings)
}


def _subcommands() -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def _takes_model(parser) -> bool:
    return any("--model" in a.option_strings or a.dest == "model" for a in parser._actions)


def test_every_subcommand_is_covered():
    cmds = _subcommands()
    for name, parser in cmds.items():
        if _takes_model(parser):
            assert name in ARGS, f"add tiny arguments for `convscope {name}` to ARGS"
        else:
            assert name in NO_MODEL, f"`convscope {name}` takes no model: say why in NO_MODEL"
    assert set(ARGS) | set(NO_MODEL) == set(cmds), "ARGS/NO_MODEL name a command that is gone"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The user's project folder: net.py (warns at import and in forward), its weights (whose
    loading makes torch warn), a card, two images and a labelled image folder."""
    d = tmp_path_factory.mktemp("warnproj")
    (d / "net.py").write_text(NET)
    ns: dict = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(NET, str(d / "net.py"), "exec"), ns)
        torch.manual_seed(0)
        from safetensors.torch import save_file

        save_file(ns["Net"]().state_dict(), str(d / "net.safetensors"))
    (d / "card.json").write_text(json.dumps({
        "architecture": "net.py:Net", "weights": "net.safetensors", "preprocessing": "none",
        "input_size": [16, 16], "class_names": ["a", "b"], "layer": "conv2"}))
    rng = np.random.default_rng(0)
    for name in ("img.png", "img2.png"):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(d / name)
    for c in ("a", "b"):
        (d / "data" / c).mkdir(parents=True)
        for i in range(3):
            arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(d / "data" / c / f"{i}.png")
    return d


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _env() -> dict:
    src = str(Path(cs.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def _check_once(stderr: str, name: str, *, forward: bool = True) -> None:
    for w in (IMPORT_W, TORCH_W) + ((FORWARD_W,) if forward else ()):
        w = f"UserWarning: {w}"  # the warning's line (Python shows the source line after it)
        n = stderr.count(w)
        assert n == 1, f"`convscope {name}`: {w!r} shown {n} times:\n{stderr[-3000:]}"


@pytest.mark.parametrize("name", sorted(n for n, a in ARGS.items() if a is not None))
def test_subcommand_with_foreign_warnings_exits_and_shows_each_once(project, tmp_path, name):
    fill = {"card": "card.json", "img": "img.png", "img2": "img2.png", "data": "data", "out": str(tmp_path)}
    args = [a.format(**fill) for a in ARGS[name]]
    if name != "layers":
        args += ["--model", "card.json"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "convscope", name, *args], cwd=project, env=_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                       preexec_fn=_limit)
    assert r.returncode == 0, f"`convscope {name}` exit {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    # filters and layers read the weights and the layers but run no forward pass with the method
    _check_once(r.stderr, name, forward=name not in ("filters",))
    assert time.monotonic() - t0 < TIMEOUT


def test_serve_with_foreign_warnings(project):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "serve", "--model", "card.json",
                             "--port", str(port)], cwd=project, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit)
    try:
        info = None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None and info is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert info is not None, "the server did not come up"
        # the page opens on the user's model: it is the first one the app lists
        assert info["models"][0]["name"] == "card", [m["name"] for m in info["models"]]
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    _check_once(err, "serve", forward=False)  # loading only; the app ran no method
    assert "Traceback" not in err
